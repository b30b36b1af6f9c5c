"""Running forward and adjoint graphs on ONNX Runtime, a batch at a time.

A model whose file fixes the batch size (often 1) serves any batch: the batch is cut into
chunks of that size (the last one zero-padded) and the results are put back together.
Fixed seeds run the forward and backward nodes in one session call; seeds computed from
the pass's own activations run a forward session that also returns the residuals, then a
backward session that takes them, as OrtValues, without a copy through NumPy. The backward
session holds only backward nodes, so the two together run the nodes of the one-call graph
once each: nothing of the forward pass is recomputed.

On a GPU provider (the session cache's ``device``, ``("cuda", id)``) the two sessions of the
split run through I/O binding: the image is copied to the device once, the forward session's
outputs stay there as OrtValues, the backward session reads them in place, and only the
tensors NumPy needs (the shown ones, the gradients) come back to the host. The same code
binds to ``("cpu", 0)`` in the tests, where it must equal the plain path.
"""
from __future__ import annotations

import numpy as np

from ._session import RuntimeFailure, _first_line
from ._shapes import FLOAT

__all__ = ["Runner"]


def _join(parts):
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _pad(array, missing):
    if not missing:
        return array
    return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])


class Runner:
    """Session calls with batch splitting, for one :class:`OnnxGraph` and its session cache."""

    def __init__(self, graph, sessions, ort):
        self.graph, self.sessions, self._ort = graph, sessions, ort
        self._image_info = next(v for v in graph.proto.graph.input if v.name == graph.image)
        self._quiet = ort.RunOptions()
        self._quiet.log_severity_level = 4  # failures are raised with their message, not logged

    def _chunks(self, n):
        """(start, stop, padding) of each session call for a batch of n."""
        b = self.graph.fixed_batch
        if not b or b == n:
            return [(0, n, 0)]
        return [(s, min(s + b, n), b - (min(s + b, n) - s)) for s in range(0, n, b)]

    def _call(self, session, outputs, feeds, shape, ort_values=False):
        try:
            if ort_values:
                return session.run_with_ort_values(outputs, feeds, self._quiet)
            return session.run(outputs, feeds, self._quiet)
        except Exception as err:
            raise RuntimeFailure(f"ONNX Runtime failed to run the model on a batch of shape {shape}: "
                                 f"{_first_line(err)}") from err

    def forward_session(self, tensors):
        """The session computing ``tensors`` from the image."""
        return self.sessions.session(("forward", tuple(tensors)), lambda: self.sessions.model(
            list(self.graph.nodes), {self.graph.image: self._image_info}, list(tensors)))

    def forward(self, x, tensors):
        """Arrays of ``tensors`` for the batch ``x``, one session call per chunk."""
        tensors = list(tensors)
        session = self.forward_session(tensors)
        parts = []
        for start, stop, pad in self._chunks(len(x)):
            outs = self._call(session, tensors, {self.graph.image: _pad(x[start:stop], pad)}, x.shape)
            parts.append([o[:stop - start] for o in outs])
        return parts[0] if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts)]

    def _like_image(self, name):
        """A graph input declared as the image is, under another name (DeepLift's baseline)."""
        info = type(self._image_info)()
        info.CopyFrom(self._image_info)
        info.name = name
        return info

    def combined(self, key, plan, x, seed_map, shown, extra=None):
        """One session call per chunk computes the shown tensors and every gradient; ``extra`` feeds
        the plan's other inputs ({name: array shaped like x})."""
        extra = extra or {}
        grads = list(plan.grad_outputs.values())
        outputs = list(dict.fromkeys([*grads, *shown]))
        inputs = {self.graph.image: self._image_info, **{plan.seed_inputs[t]: FLOAT for t in seed_map},
                  **{name: self._like_image(name) for name in extra}}
        session = self.sessions.session(("combined", key, tuple(shown)), lambda: self.sessions.model(
            plan.forward + plan.backward, inputs, outputs, plan.initializers, {o: FLOAT for o in outputs}))
        parts = []
        for start, stop, pad in self._chunks(len(x)):
            feeds = {self.graph.image: _pad(x[start:stop], pad)}
            feeds.update({name: _pad(a[start:stop], pad) for name, a in extra.items()})
            feeds.update({plan.seed_inputs[t]: _pad(s[start:stop], pad) for t, s in seed_map.items()})
            parts.append([o[:stop - start] for o in self._call(session, outputs, feeds, x.shape)])
        values = dict(zip(outputs, parts[0] if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts)]))
        return ({t: values[t] for t in shown},
                {t: values[name] for t, name in plan.grad_outputs.items()})

    def _bound(self, session, outputs, host, device, feeds, shape):
        """One call through I/O binding: OrtValues bound in place, arrays copied in from the
        host; ``outputs`` left on ``device`` ((type, id)) except those in ``host``."""
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, *(("cpu", 0) if name in host else device))
        try:
            session.run_with_iobinding(binding, self._quiet)
        except Exception as err:
            raise RuntimeFailure(f"ONNX Runtime failed to run the model on a batch of shape {shape}: "
                                 f"{_first_line(err)}") from err
        return binding.get_outputs()

    def _on_device(self, array, device):
        ort = self._ort
        return ort.OrtValue.ortvalue_from_numpy(array) if device is None else \
            ort.OrtValue.ortvalue_from_numpy(array, *device)

    def split(self, key, plan, x, shown_tensors, seeds, extra=None):
        """Forward session (shown tensors and residuals), seeds from NumPy, backward session."""
        ort, image = self._ort, self.graph.image
        device = self.sessions.device
        extra = extra or {}
        residuals = [r for r in plan.residuals if r != image and r not in extra]
        fwd_outputs = list(dict.fromkeys([*shown_tensors, *residuals]))
        fwd_inputs = {image: self._image_info, **{name: self._like_image(name) for name in extra}}
        forward = self.sessions.session(("split-forward", key, tuple(shown_tensors)), lambda: self.sessions.model(
            plan.forward, fwd_inputs, fwd_outputs, (), plan.dtypes))
        grads = list(plan.grad_outputs.values())
        bwd_inputs = {**{r: plan.dtypes.get(r, FLOAT) for r in plan.residuals},
                      **{name: FLOAT for name in plan.seed_inputs.values()}}
        backward = self.sessions.session(("split-backward", key), lambda: self.sessions.model(
            plan.backward, bwd_inputs, grads, plan.initializers, {g: FLOAT for g in grads}))
        chunks = self._chunks(len(x))
        ran = []
        for start, stop, pad in chunks:
            xv = self._on_device(_pad(x[start:stop], pad), device)
            given = {name: self._on_device(_pad(a[start:stop], pad), device) for name, a in extra.items()}
            if device is None:
                outs = self._call(forward, fwd_outputs, {image: xv, **given}, x.shape, ort_values=True)
            else:
                outs = self._bound(forward, fwd_outputs, (), device, {image: xv, **given}, x.shape)
            ran.append((xv, {**dict(zip(fwd_outputs, outs)), **given}))
        fed = set(residuals)

        def gathered(t):  # OrtValue.numpy() is a view on the CPU: what the backward reads is copied before the callable
            parts = [r[t].numpy()[:stop - start] for (start, stop, _), (_, r) in zip(chunks, ran)]
            view = device is None or device[0] == "cpu"
            return parts[0].copy() if len(parts) == 1 and t in fed and view else _join(parts)

        values = {t: gathered(t) for t in shown_tensors}
        values[image] = x
        seed_map = seeds(values)
        for t in plan.seed_inputs:  # an asked tensor the callable left unseeded gets a zero seed
            if t not in seed_map:
                seed_map[t] = np.zeros_like(values[t])
        parts = []
        for (start, stop, pad), (xv, res) in zip(chunks, ran):
            feeds = {r: (xv if r == image else res[r]) for r in plan.residuals}
            if device is None:
                feeds.update({name: ort.OrtValue.ortvalue_from_numpy(_pad(seed_map[t][start:stop], pad))
                              for t, name in plan.seed_inputs.items()})
                outs = self._call(backward, grads, feeds, x.shape, ort_values=True)
            else:
                feeds.update({name: np.ascontiguousarray(_pad(seed_map[t][start:stop], pad))
                              for t, name in plan.seed_inputs.items()})
                outs = self._bound(backward, grads, set(grads), device, feeds, x.shape)
            parts.append([o.numpy()[:stop - start] for o in outs])
        merged = [_join(p) for p in zip(*parts)]
        by_output = dict(zip(grads, merged))
        return values, {t: by_output[name] for t, name in plan.grad_outputs.items()}
