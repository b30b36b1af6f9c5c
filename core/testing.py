"""Conformance kit: ``check_backend(backend, x)`` checks a Backend against the protocol.

Every built-in backend passes it, and a third-party backend should too. It checks
shapes and dtypes, layer records, gradients against central finite differences along
random directions, the guided and deconvnet rules against the reference rule applied by
hand at each ReLU, batch invariance, determinism, that bad input is refused, and the optional
``with_weights`` (a layer's own weights reproduce the forward, zeros change it, the original
backend is unchanged, bad weights are refused).
"""
from __future__ import annotations

import inspect

import numpy as np

from .backend import INPUT, OUTPUT, RELU_RULES, Backend, Layer

__all__ = ["check_backend", "relu_rule"]


def relu_rule(rule: str, pre: np.ndarray, grad_out: np.ndarray, upper: float | None = None) -> np.ndarray:
    """The backward rule of one ReLU: the gradient at its input, given its input ``pre``
    and the gradient ``grad_out`` at its output.

    standard: g * [0 < pre < upper]; guided: max(g, 0) * [0 < pre < upper]; deconvnet: max(g, 0).
    """
    mask = pre > 0 if upper is None else (pre > 0) & (pre < upper)
    if rule == "standard":
        return grad_out * mask
    if rule == "guided":
        return np.maximum(grad_out, 0) * mask
    return np.maximum(grad_out, 0)


def _fail(message):
    raise AssertionError(f"check_backend: {message}")


def _close(name, got, want, rtol, atol=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        _fail(f"{name}: shape {got.shape}, expected {want.shape}")
    scale = max(np.abs(want).max(), 1e-12)
    err = np.abs(got - want).max() / scale
    if err > rtol and (atol is None or np.abs(got - want).max() > atol):
        _fail(f"{name}: relative error {err:.2e} > {rtol:.0e}")
    return err


def _rule_keyword(backend) -> str:
    """``rule``, or ``relu`` for a bare-Protocol backend written before the rename."""
    try:
        params = inspect.signature(backend.gradient).parameters
    except (TypeError, ValueError):
        return "rule"
    return "relu" if "rule" not in params and "relu" in params else "rule"


def _fd_direction(backend, x, fn, grad, rng, h):
    """Compare <grad, d> with the central difference (fn(x + h d) - fn(x - h d)) / 2h."""
    d = rng.standard_normal(x.shape).astype(np.float32)
    fd = (fn(x + h * d) - fn(x - h * d)) / (2 * h)
    an = float(np.sum(grad.astype(np.float64) * d))
    return an, fd


def check_backend(backend: Backend, x: np.ndarray, *, layers: list | None = None, rtol: float = 1e-4,
                  fd_rtol: float = 5e-2, seed: int = 0) -> dict:
    """Run the conformance checks; raise AssertionError naming the first failure.

    ``x`` is a small batch (two or more images) the model accepts. ``layers`` picks the
    layers for the layer-level checks (default: up to three spatial ones). Returns a dict
    of the measured errors.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or len(x) < 2:
        raise ValueError(f"The 'x' parameter of check_backend must be a batch of two or more images. Got shape {x.shape} instead.")
    report = {}
    if not isinstance(backend, Backend):
        _fail(f"{type(backend).__name__} does not implement the Backend protocol")
    rule_kw = _rule_keyword(backend)

    # --- layer records (after one forward, so a backend may size its probe from x)
    out = backend.forward(x)
    records = backend.layers()
    if not records or not all(isinstance(r, Layer) for r in records):
        _fail("layers() must return a non-empty list of Layer records")
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        _fail("layer names are not unique")
    by_name = {r.name: r for r in records}
    for r in records:
        if r.kind in ("conv", "pool") and r.shape is not None and len(r.shape) == 3 and r.kernel is None:
            _fail(f"{r.kind} layer {r.name!r} has no geometry (kernel, stride, padding)")
    if layers is None:
        spatial = [r.name for r in records if r.spatial and r.kind not in ("block", "other")]
        layers = [spatial[i] for i in sorted({0, len(spatial) // 2, len(spatial) - 1})] if spatial else []

    # --- forward and activations: dtypes and shapes
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 2 or len(out) != len(x):
        _fail(f"forward must return float32 (N, K); got {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
    acts = backend.activations(x, layers + [OUTPUT])
    _close("activations['output'] vs forward", acts[OUTPUT], out, rtol)
    for name in layers:
        a = acts[name]
        want = by_name[name].shape
        if a.dtype != np.float32 or a.shape[0] != len(x) or (want is not None and tuple(a.shape[1:]) != tuple(want)):
            _fail(f"activations[{name!r}]: {a.dtype} {a.shape}, layers() says {want}")

    # --- determinism and batch invariance
    _close("determinism of forward", backend.forward(x), out, 1e-6)
    single = np.concatenate([backend.forward(x[i:i + 1]) for i in range(len(x))])
    report["batch_invariance"] = _close("batch invariance of forward", single, out, rtol)

    # --- gradients against finite differences (seed at the output and at layers)
    r_out = rng.standard_normal(out.shape).astype(np.float32)
    g = backend.gradient(x, {OUTPUT: r_out}, wrt=[INPUT])
    if g[INPUT].shape != x.shape or g[INPUT].dtype != np.float32:
        _fail(f"gradient at the input: {g[INPUT].dtype} {g[INPUT].shape}, expected float32 {x.shape}")
    h = 2e-4 * float(np.abs(x).mean() or 1.0)  # below: kinks; above: float32 rounding (measured)
    fd_errors = []
    objectives = [(OUTPUT, r_out, lambda z: float(np.sum(backend.forward(z).astype(np.float64) * r_out)), g[INPUT])]
    for name in layers[:2]:
        r = rng.standard_normal(acts[name].shape).astype(np.float32)
        gl = backend.gradient(x, {name: r}, wrt=[INPUT])[INPUT]
        objectives.append((name, r, lambda z, n=name, r=r: float(np.sum(backend.activations(z, [n])[n].astype(np.float64) * r)), gl))
    for name, _, fn, grad in objectives:
        # <g, d> for d ~ N(0, I) has the scale ||g||: measure the error against it. A ReLU
        # network has kinks, and one may lie within h of x along d: judge the median of 3.
        trials = [_fd_direction(backend, x, fn, grad, rng, h) for _ in range(3)]
        errors = [abs(an - fd) / max(float(np.linalg.norm(grad)), 1e-6) for an, fd in trials]
        fd_errors.append(float(np.median(errors)))
        if np.median(errors) > fd_rtol:
            an, fd = trials[int(np.argsort(errors)[1])]
            _fail(f"input gradient of a seed at {name!r} disagrees with finite differences: "
                  f"analytic {an:.6g}, numeric {fd:.6g} (error {np.median(errors):.2e} of the gradient's norm)")
    report["finite_differences"] = max(fd_errors)

    # --- wrt layers, callable seeds, identity of a seed at its own layer
    if layers:
        name = layers[-1]
        seen = {}

        def seed_fn(activations):
            seen.update(activations)
            return {OUTPUT: r_out}

        gc = backend.gradient(x, seed_fn, at=[name, OUTPUT], wrt=[INPUT, name])
        _close(f"callable seeds receive activations[{name!r}]", seen[name], acts[name], rtol)
        _close("callable seeds give the same input gradient", gc[INPUT], g[INPUT], rtol)
        r = rng.standard_normal(acts[name].shape).astype(np.float32)
        _close(f"a seed at {name!r} differentiated at {name!r} is the seed", backend.gradient(x, {name: r}, wrt=[name])[name], r, rtol)

    # --- ReLU rules against the reference rule, at every ReLU fed by one known layer
    consumers = {}
    for r in records:
        for i in r.inputs:
            consumers.setdefault(i, []).append(r.name)
    pairs = [(r.inputs[0], r) for r in records if r.kind == "relu" and len(r.inputs) == 1
             and consumers.get(r.inputs[0]) == [r.name] and r.shape is not None][:3]
    if pairs:  # keep the pairs where the ReLU's output really is relu(its input layer's output)
        pre = backend.activations(x, [p for p, _ in pairs] + [r.name for _, r in pairs])
        pairs = [(p, r) for p, r in pairs
                 if np.allclose(pre[r.name], np.clip(pre[p], 0, 6.0 if "6" in r.op else None), atol=1e-6)]
    report["relu_rule_sites"] = len(pairs)
    for rule in RELU_RULES:
        for pre_name, relu in pairs:
            gr = backend.gradient(x, {OUTPUT: r_out}, wrt=[pre_name, relu.name], **{rule_kw: rule})
            upper = 6.0 if "6" in relu.op else None
            want = relu_rule(rule, gr.activations[pre_name], gr[relu.name], upper)
            _close(f"{rule} rule at {relu.name!r}", gr[pre_name], want, 1e-5, atol=1e-6)
    if pairs:
        gs = backend.gradient(x, {OUTPUT: r_out}, wrt=[INPUT], **{rule_kw: "guided"})[INPUT]
        if np.allclose(gs, g[INPUT]):
            _fail("guided gradient equals the standard gradient: the rule did not reach the ReLUs")
    gb = [backend.gradient(x[i:i + 1], {OUTPUT: r_out[i:i + 1]}, wrt=[INPUT])[INPUT] for i in range(len(x))]
    # Convolutions may sum in another order for another batch size; where two pooled values
    # nearly tie, max pooling then routes the gradient to the other one. Such switches are
    # local: judge the whole gradient by its relative L2 error, not element by element.
    gb = np.concatenate(gb).astype(np.float64)
    err = np.linalg.norm(gb - g[INPUT]) / max(np.linalg.norm(g[INPUT]), 1e-12)
    report["gradient_batch_invariance"] = float(err)
    if err > 1e-3:
        _fail(f"batch invariance of gradient: relative L2 error {err:.2e} > 1e-03")

    # --- bad input is refused with ValueError or TypeError
    bad = {
        "wrong rank": x[0],
        "integer dtype": x.astype(np.int32),
        "NaN": np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x).astype(np.float32),
    }
    for what, value in bad.items():
        try:
            backend.forward(value)
        except (ValueError, TypeError):
            continue
        _fail(f"forward accepted input with {what}")
    for what, call in {
        "an unknown layer": lambda: backend.activations(x, ["no_such_layer_xyz"]),
        "an unknown relu rule": lambda: backend.gradient(x, {OUTPUT: r_out}, **{rule_kw: "sideways"}),
        "a seed of the wrong shape": lambda: backend.gradient(x, {OUTPUT: r_out[:, :1]}),
        "an unknown name in wrt": lambda: backend.gradient(x, {OUTPUT: r_out}, wrt=["no_such_layer_xyz"]),
    }.items():
        try:
            call()
        except (ValueError, TypeError):
            continue
        _fail(f"{what} was accepted")
    report["with_weights"] = _check_with_weights(backend, x, records, out, rtol)
    return report


def _check_with_weights(backend, x, records, out, rtol) -> str:
    """The optional ``with_weights``: a layer's weights replaced by themselves reproduce the
    forward, by zeros change it; the original backend's forward is unchanged afterwards."""
    if not hasattr(backend, "with_weights"):
        return "absent"
    layer, own = None, {}
    for r in records:
        try:
            own = {k: v for k, v in backend.weights(r.name).items() if np.asarray(v).dtype.kind == "f"}
        except (ValueError, TypeError, KeyError, NotImplementedError):
            continue
        if own:
            layer = r.name
            break
    if layer is None:
        return "no layer with weights"
    try:
        same = backend.with_weights({layer: own})
    except NotImplementedError as err:  # the backend, or this model on it (a Keras model that cannot be cloned)
        return f"not available: {err}"
    _close(f"with_weights: {layer!r} replaced by its own weights", same.forward(x), out, rtol)
    zeros = backend.with_weights({layer: {k: np.zeros_like(v) for k, v in own.items()}}).forward(x)
    if any(np.any(v != 0) for v in own.values()) and np.allclose(zeros, out, rtol=1e-6, atol=1e-7):
        _fail(f"with_weights: zeroing {layer!r}'s weights did not change the forward")
    _close("the original backend's forward after with_weights", backend.forward(x), out, 1e-6)
    for what, bad in {"an unknown layer": {"no_such_layer_xyz": own},
                      "an unknown parameter": {layer: {"no_such_parameter_xyz": next(iter(own.values()))}},
                      "a weight of the wrong shape": {layer: {k: np.zeros((1,) * (np.ndim(v) + 1), np.float32)
                                                              for k, v in own.items()}},
                      "a NaN weight": {layer: {k: np.full(np.shape(v), np.nan, np.float32) for k, v in own.items()}}}.items():
        try:
            backend.with_weights(bad)
        except (ValueError, TypeError):
            continue
        _fail(f"with_weights accepted {what}")
    return layer
