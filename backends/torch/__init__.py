"""PyTorch backend: any ``torch.nn.Module``; layers are ``named_modules`` paths.

The module is put in eval mode for each call and left exactly as it was afterwards
(training flags, ``requires_grad``, grad mode, BatchNorm statistics, hooks), also when the
call raises. A module called more than once per pass is reachable as ``name#2``, ``name#3``.
"""
from __future__ import annotations

import sys
import threading
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np

from convscope._validate import check_finite, check_name
from convscope.backend import INPUT, OUTPUT, BackendBase, Gradients, Layer
from convscope.hookspecs import hookimpl

from ._pool import MIN_ELEMENTS, channels_last_pool_mode
from ._rules import relu_rule_mode

__all__ = ["TorchBackend"]


@hookimpl
def convscope_make_backend(model, options):
    if sys.modules.get("torch") is None:  # never imported (or blocked): no torch model can exist
        return None
    import torch

    if isinstance(model, torch.nn.Module):
        return TorchBackend(model, **options)
    return None


class _Stop(Exception):
    """Raised by a hook once every asked layer is captured, to skip the rest of the pass."""


def _kind(module, torch) -> str:
    nn = torch.nn
    table = [
        ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
        ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "deconv"),
        ((nn.ReLU, nn.ReLU6), "relu"),
        ((nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh), "activation"),
        ((nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool2d, nn.LPPool2d), "pool"),
        ((nn.Linear, nn.Bilinear), "linear"),
        ((nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.LocalResponseNorm), "norm"),
        ((nn.Dropout, nn.Dropout2d), "dropout"),
        ((nn.Flatten,), "flatten"),
        ((nn.Softmax, nn.LogSoftmax), "softmax"),
    ]
    for types, kind in table:
        if isinstance(module, types):
            return kind
    return "block" if any(True for _ in module.children()) else "other"


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _geometry(module, in_shape, torch) -> dict:
    nn = torch.nn
    if isinstance(module, nn.Conv2d):
        pad = module.padding
        if isinstance(pad, str):  # 'same' pads (k - 1) * d, the extra pixel at the end
            total = [(k - 1) * d if pad == "same" else 0 for k, d in zip(module.kernel_size, module.dilation)]
            pad = (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
        else:
            pad = (pad[0], pad[1], pad[0], pad[1])
        return dict(kernel=tuple(module.kernel_size), stride=tuple(module.stride), padding=pad,
                    dilation=tuple(module.dilation))
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        p = _pair(module.padding)
        return dict(kernel=_pair(module.kernel_size), stride=_pair(module.stride or module.kernel_size),
                    padding=(p[0], p[1], p[0], p[1]), dilation=_pair(getattr(module, "dilation", 1)))
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and in_shape and len(in_shape) == 3:
        out = _pair(module.output_size)
        if all(o in (1, None) for o in out):  # global pooling: one window over the whole map
            return dict(kernel=tuple(in_shape[1:]), stride=tuple(in_shape[1:]), padding=(0, 0, 0, 0), dilation=(1, 1))
    return {}


def _training_modules(root) -> list:
    """Every module under ``root`` (itself included) in training mode; a plain walk of the
    ``_modules`` dicts, several times faster than ``modules()``, so it can run every call and
    see modules added after loading."""
    found, stack = [], [root]
    while stack:
        m = stack.pop()
        if m is not None:
            if m.training:
                found.append(m)
            stack.extend(m._modules.values())
    return found


class TorchBackend(BackendBase):
    """Backend for a ``torch.nn.Module``; :class:`~convscope.backend.BackendBase` checks the arguments.

    ``input_shape`` (C, H, W) sets the probe used by :meth:`layers` (default: the module's
    own ``input_shape`` attribute when it has one, else the shape of the last batch seen,
    else the first conv's channels at 224 x 224). ``output``
    picks one output of a model that returns a tuple or dict.
    """

    name = "torch"
    #: torch modules take any input size (a size mismatch surfaces as the module's own error)
    fixed_size = None
    #: layer records per probe shape, and the lock of the module's hooks: shared by every
    #: backend ``convscope.load`` makes for one module (they hold no reference to it)
    _shared = ("_shapes_seen", "_layers", "_lock")

    def __init__(self, module, *, input_shape=None, output=None):
        import torch

        self._torch = torch
        self.module = module
        self.output = output
        self._named = {n: m for n, m in module.named_modules() if n}
        self._lock = threading.RLock()
        self._layers = {}  # probe shape -> (records, output shape)
        self._last_shape = None
        self._max_pools = None  # whether the model has MaxPool2d modules, found on first use
        hint = getattr(module, "input_shape", None)  # a model may state its input size (C, H, W)
        if input_shape is None and isinstance(hint, tuple) and len(hint) == 3:
            input_shape = hint
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        first_conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.channels = self._input_shape[0] if self._input_shape else (first_conv.in_channels if first_conv else None)
        param = next(module.parameters(), None)
        self._device = param.device if param is not None else torch.device("cpu")
        self._dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def _pool_mode(self, x):
        """Large CPU max pools through the channels-last kernel (:mod:`._pool`), for
        models with a MaxPool2d module and inputs of some size: the mode costs a few us per
        operation, which a small pass does not win back."""
        if self._max_pools is None:
            self._max_pools = any(isinstance(m, self._torch.nn.MaxPool2d) for m in self.module.modules())
        if self._max_pools and x.size >= MIN_ELEMENTS and self._device.type == "cpu":
            return channels_last_pool_mode(self._torch)
        return nullcontext()

    # ----------------------------------------------------------------- state and hooks
    @contextmanager
    def _eval_mode(self):
        """Eval mode for the call; every module's training flag restored afterwards."""
        switched = _training_modules(self.module)  # setattr on a Module is slow: only these
        try:
            for m in switched:
                m.training = False
            yield
        finally:
            for m in switched:
                m.training = True

    @contextmanager
    def _capture(self, names, store, replace, stop_when_done=False, leaves=()):
        """Forward hooks that record the outputs of ``names`` into ``store``.

        With ``replace`` the hook hands a clone downstream so that in-place operations
        after the layer cannot change (or break the gradient of) the recorded tensor.
        A layer in ``leaves`` whose output carries no graph (the pass started with
        gradients off) is recorded as a fresh leaf that requires grad, and gradient
        recording is switched on from there: the layers before it build no graph.
        """
        wanted = {}
        for n in names:
            base, _, call = n.partition("#")
            wanted.setdefault(base, {})[int(call or 1)] = n
        calls = dict.fromkeys(wanted, 0)
        handles = []
        handed = {}  # id(clone handed downstream) -> (that clone, the tensor recorded for it)

        def make_hook(base):
            def hook(module, inputs, out):
                calls[base] += 1
                name = wanted[base].get(calls[base])
                if name is None:
                    return None
                if not isinstance(out, self._torch.Tensor):
                    raise TypeError(f"Layer {name!r} returns a {type(out).__name__}, not a tensor; "
                                    "pick one of its children instead.")
                if replace and handed.get(id(out), (None,))[0] is out:
                    store[name] = handed[id(out)][1]  # a container returning its child's output: one tensor
                    return None
                if name in leaves and not out.requires_grad:
                    out = out.detach().requires_grad_(True)
                    self._torch.set_grad_enabled(True)  # restored by the caller's no_grad context
                store[name] = out if replace else out.detach().clone()
                if stop_when_done and len(store) == len(names):
                    raise _Stop
                if not replace:
                    return None
                clone = out.clone()
                handed[id(clone)] = (clone, out)
                return clone
            return hook

        try:
            for base in wanted:
                handles.append(self._named[base].register_forward_hook(make_hook(base)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _run(self, xt):
        out = self.module(xt)
        if isinstance(out, self._torch.Tensor) and self.output is None:
            return out
        if self.output is None:
            raise TypeError(f"The model returns a {type(out).__name__}; pass output=<index or key> to convscope.load "
                            "to pick the scores to explain.")
        return out[self.output]

    def _tensor(self, x):
        return self._torch.from_numpy(x).to(self._device, self._dtype)

    def _note_input(self, x):
        if self._input_shape is None:
            self._last_shape = x.shape[1:]

    def _numpy(self, t, what=None, owner=""):
        """To float32 NumPy; with ``what``, NaN or Inf the model produced is reported."""
        t = t.detach()
        a = (t if t.dtype == self._torch.float32 and t.device.type == "cpu" else t.to("cpu", self._torch.float32)).numpy()
        return a if what is None else check_finite(a, what, owner)

    # ----------------------------------------------------------------- the protocol
    def _layer_known(self, name):
        return name in self._named  # a module's second call, ``name#2``, is found in layers()

    def _tensor_shape(self, name, chw):
        if name == INPUT:
            return chw
        records, out_shape = self._probed(tuple(chw))
        return out_shape if name == OUTPUT else next((r.shape for r in records if r.name == name), None)

    def _probed(self, shape):
        with self._lock:
            if shape not in self._layers:
                try:
                    self._layers[shape] = self._probe(shape)
                except RuntimeError as err:
                    raise ValueError(f"Could not run the model on a probe of shape {shape} to list its layers ({err}). "
                                     "Pass input_shape=(C, H, W) to convscope.load, or run a batch first.") from None
            return self._layers[shape]

    def layers(self):
        """Records in execution order, shapes for ``input_shape`` or else the last batch seen."""
        return list(self._probed(tuple(self._input_shape or self._last_shape or (self.channels or 3, 224, 224)))[0])

    def _probe(self, shape):
        """One forward pass with hooks on every module: order, shapes, geometry and data flow.

        Data flow follows the autograd graph: a module's inputs are the modules whose
        outputs are reached from its input tensors through functional operations (an add
        in a residual block records both branches). Outputs are kept alive for the pass so
        that no node is freed and reused. Returns (records, shape of the scores or None).
        """
        torch = self._torch
        order, info, producer, handles, alive = [], {}, {}, [], []
        calls, current = {}, {}

        def producers(tensor):
            found, stack, seen = [], [tensor.grad_fn], set()
            while stack:
                node = stack.pop()
                if node is None or node in seen:
                    continue
                seen.add(node)
                if node in producer:
                    found.append(producer[node])
                    continue
                stack.extend(n for n, _ in reversed(node.next_functions))
            return found

        def pre(name):
            def hook(module, inputs):
                calls[name] = calls.get(name, 0) + 1
                key = name if calls[name] == 1 else f"{name}#{calls[name]}"
                tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
                ins = tuple(dict.fromkeys(p for t in tensors for p in producers(t)))
                info[key] = dict(inputs=ins, in_shape=tuple(tensors[0].shape[1:]) if tensors else None)
                current[name] = key
            return hook

        def post(name):
            def hook(module, inputs, out):
                key = current.pop(name, name)
                if isinstance(out, torch.Tensor):
                    info[key]["shape"] = tuple(out.shape[1:])
                    if out.grad_fn is not None:
                        producer[out.grad_fn] = key
                    alive.append(out)
                order.append((key, module))
            return hook

        try:
            for name, m in self._named.items():
                handles.append(m.register_forward_pre_hook(pre(name)))
                handles.append(m.register_forward_hook(post(name)))
            with self._eval_mode(), torch.enable_grad():
                x = torch.zeros((1, *shape), dtype=self._dtype, device=self._device, requires_grad=True)
                out = self.module(x)
        finally:
            for h in handles:
                h.remove()
        records = []
        for key, m in order:
            d = info[key]
            records.append(Layer(name=key, kind=_kind(m, torch), shape=d.get("shape"), inputs=d["inputs"],
                                 op=type(m).__name__, **_geometry(m, d["in_shape"], torch)))
        seen = {r.name for r in records}
        records += [Layer(name=n, kind=_kind(m, torch), op=type(m).__name__) for n, m in self._named.items() if n not in seen]
        if self.output is not None and not isinstance(out, torch.Tensor):
            try:
                out = out[self.output]
            except (KeyError, IndexError, TypeError):
                out = None
        return records, tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None

    def _forward(self, x):
        with self._lock, self._eval_mode(), self._torch.inference_mode(), self._pool_mode(x):
            return self._numpy(self._run(self._tensor(x)), "the output", "forward")

    def _activations(self, x, names):
        store = {}
        inner = [n for n in names if n not in (INPUT, OUTPUT)]
        stop = OUTPUT not in names and len(set(inner)) == len(inner)
        with self._lock, self._eval_mode(), self._torch.inference_mode(), self._pool_mode(x):
            xt = self._tensor(x)
            try:
                with self._capture(inner, store, replace=False, stop_when_done=stop):
                    out = self._run(xt)
                    store[OUTPUT] = out
            except _Stop:
                pass
            store[INPUT] = xt
            return {n: self._numpy(store[n], repr(n), "activations") for n in names}

    def _gradient(self, x, seeds, wrt, at, relu):
        torch = self._torch
        inner = list(dict.fromkeys(n for n in [*at, *wrt] if n not in (INPUT, OUTPUT)))
        # Only layers at or after the first ``wrt`` layer need a graph: when ``wrt`` names
        # layers only, the pass runs without one until a ``wrt`` layer starts it (Grad-CAM
        # differentiates the last conv block: the whole trunk before it records nothing).
        from_input = INPUT in wrt or OUTPUT in wrt
        store = {}
        with self._lock, ExitStack() as stack:
            stack.enter_context(self._eval_mode())
            stack.enter_context(torch.enable_grad() if from_input else torch.no_grad())
            stack.enter_context(self._pool_mode(x))
            if inner:
                stack.enter_context(self._capture(inner, store, replace=True, leaves=() if from_input else set(wrt)))
            if relu != "standard":
                stack.enter_context(relu_rule_mode(relu, torch))
            xt = self._tensor(x).requires_grad_(from_input)
            store[OUTPUT] = self._run(xt)
            store[INPUT] = xt
            missing = [n for n in inner if n not in store]
            if missing:
                raise ValueError(f"Layers {missing} did not run in the forward pass; they cannot be seeded or differentiated.")
            acts = {n: x if n == INPUT else self._numpy(store[n], repr(n), "gradient")  # x: checked already
                    for n in dict.fromkeys([*at, *wrt])}
            seed_map = seeds({n: acts[n] for n in at}) if callable(seeds) else seeds
            outs, grads_out = [], []
            for n, s in seed_map.items():  # names in ``at``, shapes checked by the base
                if store[n].requires_grad:  # else nothing in ``wrt`` reaches it: no contribution
                    outs.append(store[n])
                    seed = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))
                    grads_out.append(seed if seed.dtype == store[n].dtype and self._device.type == "cpu"
                                     else seed.to(self._device, store[n].dtype))
            targets = [store[n] for n in wrt]
            got = torch.autograd.grad(outs, targets, grads_out, allow_unused=True) if outs else [None] * len(targets)
        grads = {n: self._numpy(g, f"the gradient at {n!r}", "gradient") if g is not None else np.zeros(tuple(t.shape), np.float32)
                 for n, g, t in zip(wrt, got, targets)}
        outputs = acts[OUTPUT] if OUTPUT in acts else self._numpy(store[OUTPUT])
        return Gradients(grads=grads, activations=acts, outputs=outputs)

    def __getstate__(self):  # picklable (Dask workers): the lock and caches are rebuilt
        state = dict(self.__dict__)
        for key in ("_lock", "_torch", "_layers"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        import torch

        self.__dict__.update(state, _lock=threading.RLock(), _torch=torch, _layers={})

    def weights(self, layer):
        check_name(layer, self._named, "layer", "weights")
        return {k: self._numpy(v) for k, v in self._named[layer].named_parameters(recurse=False)}
