"""PyTorch backend: any ``torch.nn.Module``; layers are ``named_modules`` paths.

The module is put in eval mode for each call and left exactly as it was afterwards
(training flags, ``requires_grad``, grad mode, BatchNorm statistics, hooks), also when the
call raises. A module called more than once per pass is reachable as ``name#2``, ``name#3``;
a functional activation on a module's output as ``name:relu`` (:mod:`._functional`).
Layer records come from one probe pass (:mod:`._probe`), outputs are recorded by hooks
(:mod:`._capture`), and a final softmax is left out unless asked for (:mod:`._output`).
"""
from __future__ import annotations

import sys
import threading
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np

from convscope._relevance import DeepLiftRules, RelevanceRules
from convscope._validate import check_finite, check_name, param_error
from convscope.backend import INPUT, OUTPUT, BackendBase, Gradients
from convscope.hookspecs import hookimpl

from ._capture import Stop, capture, eval_mode
from ._deeplift import deeplift_mode
from ._functional import is_functional
from ._layout import Layout
from ._lrp import lrp_mode
from ._output import detect_softmax, output_options, strip_softmax
from ._pool import MIN_ELEMENTS, channels_last_pool_mode
from ._probe import probe
from ._rules import relu_rule_mode
from ._device import checked_device, device_ceiling
from ._weights import module_with_weights

__all__ = ["TorchBackend"]


@hookimpl
def convscope_make_backend(model, options):
    if sys.modules.get("torch") is None:  # never imported (or blocked): no torch model can exist
        return None
    import torch

    if isinstance(model, torch.nn.Module):
        return TorchBackend(model, **options)
    return None


_UNSET = object()


class _Redo(Exception):
    """Raised by the first pass of a model found to end in a softmax: the pass runs again without it."""


class TorchBackend(BackendBase):
    """Backend for a ``torch.nn.Module``; :class:`~convscope.backend.BackendBase` checks the arguments.

    ``input_shape`` (C, H, W) sets the probe used by :meth:`layers` (default: the module's
    own ``input_shape`` attribute when it has one, else the shape of the last batch seen,
    else the first conv's channels at 224 x 224). A module that declares ``input_shape`` and
    fails on another size gets ``fixed_size`` (H, W). ``output="scores"`` (the default)
    explains the input of a final softmax, ``"probabilities"`` its output (``choices`` says
    what was chosen); ``select`` picks one output of a model that returns a tuple or dict.

    Devices: the backend runs the module where it is (its parameters', else its buffers',
    device; the CPU for a module with neither) and never moves it. Images go to that device
    once a call, results come back only at the NumPy edge. ``device`` ("cuda", "cuda:1",
    "cpu", a ``torch.device``) states where the module is to run: a module elsewhere raises,
    saying to move it (``model.to(device)``), as does a device that does not exist here.
    """

    name = "torch"
    #: LRP and DeepLift inside autograd (:mod:`._lrp`, :mod:`._deeplift`)
    rule_sets = (RelevanceRules, DeepLiftRules)
    #: layer records per probe shape, the lock of the module's hooks and what the probe found
    #: (final softmax, fixed size): shared by every backend ``convscope.load`` makes for one
    #: module with the same options (they hold no reference to it)
    _shared = ("_shapes_seen", "_layers", "_lock", "_found")

    def __init__(self, module, *, input_shape=None, output=None, select=None, device=None):
        import torch

        self._torch = torch
        self.module = module
        self.output, self.select = output_options(output, select)
        self._named = {n: m for n, m in module.named_modules() if n}
        self._lock = threading.RLock()
        self._layers = {}  # probe shape -> (records, output shape, final softmax, functional layers)
        # "head": the final softmax (or None), "fixed_size": (H, W) or None, "functional": where
        # each functional layer is found in a pass (:mod:`._functional`)
        self._found = {}
        self._last_shape = None
        self._detecting = None  # the pass that looks for a final softmax (:meth:`_scores`)
        self._max_pools = None  # whether the model has MaxPool2d modules, found on first use
        hint = getattr(module, "input_shape", None)  # a model may state its input size (C, H, W)
        self._declared = tuple(int(d) for d in hint) if isinstance(hint, tuple) and len(hint) == 3 else None
        if input_shape is None:
            input_shape = self._declared
        if self._declared is None:
            self._found["fixed_size"] = None
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        first_conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.channels = self._input_shape[0] if self._input_shape else (first_conv.in_channels if first_conv else None)
        param = next(module.parameters(), None)
        held = param if param is not None else next(module.buffers(), None)
        self._device = checked_device(torch, device, held)
        self._dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    @property
    def device(self):
        """The ``torch.device`` the module runs on (the backend never moves it)."""
        return self._device

    def memory_ceiling(self, height, width):
        """Images of (height, width) per call that fit on a CUDA device; None on the CPU (:mod:`._device`)."""
        return device_ceiling(self._torch, self._device, self._dtype, lambda chw: self._probed(chw)[0],
                              (self.channels or 3, int(height), int(width)))

    # ----------------------------------------------------------------- what the probe decides
    @property
    def fixed_size(self):
        """(H, W) for a module that declares ``input_shape`` and fails on another size, else None."""
        fs = self._found.get("fixed_size", _UNSET)
        return self._find_fixed_size() if fs is _UNSET else fs

    @fixed_size.setter
    def fixed_size(self, value):
        self._found["fixed_size"] = None if value is None else tuple(value)

    def _find_fixed_size(self):
        """Probe at the declared size, then try one other size (H + 32, W + 32) without hooks."""
        c, h, w = self._declared
        with self._lock:
            self._probed((c, h, w))
            try:
                with eval_mode(self.module), self._torch.no_grad():
                    self.module(self._torch.zeros((1, c, h + 32, w + 32), dtype=self._dtype, device=self._device))
                fixed = None
            except Exception:  # noqa: BLE001 - any failure at another size: the model needs its own
                fixed = (h, w)
            self._found["fixed_size"] = fixed
        return fixed

    @contextmanager
    def _scores(self):
        """The context in which a pass of the module returns the scores to explain. Until the
        final softmax is known, the pass looks for one (:func:`._output.detect_softmax`) and
        :meth:`_run` raises :class:`_Redo` when it finds one to leave out."""
        head = self._found.get("head", _UNSET) if self.output == "scores" else None
        if head is None:
            yield
        elif head is not _UNSET:
            with strip_softmax(self._torch, self._named, head):
                yield
        else:
            with detect_softmax(self._torch, self._named) as found:
                self._detecting = found
                try:
                    yield
                finally:
                    self._detecting = None

    def _twice(self, method, *args):
        """``method(*args)``, again when its pass found a final softmax to leave out; a pass that
        failed in channels-last runs again in NCHW first (:meth:`._layout.Layout.run`)."""
        with self._lock:
            try:
                return self._layout.run(method, *args)
            except _Redo:
                return self._layout.run(method, *args)

    @property
    def _layout(self):
        """The input layout of this module's passes (:mod:`._layout`), shared like the probes."""
        return self._found.setdefault("layout", Layout())

    @property
    def choices(self) -> dict:
        """What convscope chose for the user, ``{option: why}``; empty when nothing was chosen."""
        refused = self._layout.refused
        chosen = {} if refused is None else {"layout": refused}
        if self.output != "scores":
            return chosen
        if "head" not in self._found:
            try:
                self.layers()
            except ValueError:
                return chosen
        head = self._found.get("head")
        return chosen if head is None else {"output": head.describe(), **chosen}

    def _pool_mode(self, x):
        """Large CPU max pools through the channels-last kernel (:mod:`._pool`), for
        models with a MaxPool2d module and inputs of some size: the mode costs a few us per
        operation, which a small pass does not win back."""
        if self._max_pools is None:
            self._max_pools = any(isinstance(m, self._torch.nn.MaxPool2d) for m in self.module.modules())
        if self._max_pools and x.size >= MIN_ELEMENTS and self._device.type == "cpu":
            return channels_last_pool_mode(self._torch)
        return nullcontext()

    # ----------------------------------------------------------------- helpers
    def _eval_mode(self):
        return eval_mode(self.module)

    def _run(self, xt):
        out = self.module(xt)
        if not isinstance(out, self._torch.Tensor) or self.select is not None:
            if self.select is None:
                raise TypeError(f"The model returns a {type(out).__name__}; pass select=<index or key> to "
                                "convscope.load to pick the scores to explain.")
            out = out[self.select]
        if self._detecting is not None:
            head = self._found["head"] = self._detecting.found(out)
            self._detecting = None
            if head is not None:
                raise _Redo
        return out

    def _tensor(self, x):
        return self._torch.from_numpy(x).to(self._device, self._dtype)

    def _note_input(self, x):
        if self._input_shape is None:
            self._last_shape = x.shape[1:]

    def _numpy(self, t, what=None, owner=""):
        """To float32 NumPy; with ``what``, NaN or Inf the model produced is reported."""
        t = t.detach()
        a = (t if t.dtype == self._torch.float32 and t.device.type == "cpu" else t.to("cpu", self._torch.float32))
        a = a.contiguous().numpy()  # a channels-last pass's tensors come back C-ordered
        return a if what is None else check_finite(a, what, owner)

    # ----------------------------------------------------------------- the protocol
    def _layer_known(self, name):
        # a module's second call, ``name#2``, and a functional layer are found in layers()
        return name in self._named or name in self._found.get("functional", ())

    def _functional(self, names):
        """Where the asked functional layers are found (probing first if none was), or None."""
        if not any(is_functional(n) for n in names):
            return None
        if not self._found.get("functional"):
            self.layers()
        return self._found.get("functional", {})

    def _tensor_shape(self, name, chw):
        """The shape when this input size was probed already; else None: the seeds are then
        checked against the pass's own tensors (a probe here would run the model twice)."""
        if name == INPUT:
            return chw
        with self._lock:
            probed = self._layers.get(tuple(chw))
        if probed is None:
            return None
        records, out_shape = probed[:2]
        return out_shape if name == OUTPUT else next((r.shape for r in records if r.name == name), None)

    def _probed(self, shape):
        with self._lock:
            if shape not in self._layers:
                try:
                    self._layers[shape] = self._probe(shape)
                except RuntimeError as err:
                    raise ValueError(f"Could not run the model on a probe of shape {shape} to list its layers ({err}). "
                                     "Pass input_shape=(C, H, W) to convscope.load, or run a batch first.") from None
                self._found.setdefault("head", self._layers[shape][2])
                self._found.setdefault("functional", {}).update(self._layers[shape][3])
            return self._layers[shape]

    def layers(self):
        """Records in execution order, shapes for ``input_shape`` or else the last batch seen."""
        return list(self._probed(tuple(self._input_shape or self._last_shape or (self.channels or 3, 224, 224)))[0])

    def _probe(self, shape):
        """One forward pass with hooks on every module (:func:`._probe.probe`)."""
        torch = self._torch
        with self._eval_mode(), torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros((1, *shape), dtype=self._dtype, device=self._device, requires_grad=True)
            return probe(torch, self.module, self._named, x, self.select)

    def _forward(self, x):
        return self._twice(self._forward_pass, x)

    def _forward_pass(self, x):
        with self._lock, self._eval_mode(), self._torch.inference_mode(), self._pool_mode(x), self._scores():
            return self._numpy(self._run(self._layout.tensor(self._tensor(x))), "the output", "forward")

    def _activations(self, x, names):
        return self._twice(self._activations_pass, x, names)

    def _activations_pass(self, x, names):
        store = {}
        inner = [n for n in names if n not in (INPUT, OUTPUT)]
        stop = OUTPUT not in names and len(set(inner)) == len(inner)
        functional = self._functional(inner)  # its mode needs version counters: no inference tensors
        grad_off = self._torch.inference_mode() if functional is None else self._torch.no_grad()
        with self._lock, self._eval_mode(), grad_off, self._pool_mode(x):
            xt = self._layout.tensor(self._tensor(x))
            try:  # the softmax hook after the capture hooks: a capture sees the layer's own output
                with capture(self._torch, self._named, inner, store, replace=False, stop_when_done=stop,
                             functional=functional), self._scores():
                    out = self._run(xt)
                    store[OUTPUT] = out
            except Stop:
                pass
            store[INPUT] = xt
            return {n: self._numpy(store[n], repr(n), "activations") for n in names}

    def _gradient(self, x, seeds, wrt, at, relu):
        return self._twice(self._gradient_pass, x, seeds, wrt, at, relu)

    def _gradient_pass(self, x, seeds, wrt, at, relu):
        torch = self._torch
        inner = list(dict.fromkeys(n for n in [*at, *wrt] if n not in (INPUT, OUTPUT)))
        # Only layers at or after the first ``wrt`` layer need a graph: when ``wrt`` names
        # layers only, the pass runs without one until a ``wrt`` layer starts it (Grad-CAM
        # differentiates the last conv block: the whole trunk before it records nothing).
        rule_set = relu if isinstance(relu, (RelevanceRules, DeepLiftRules)) else None
        if rule_set is not None:
            from_input = True  # relevance and multipliers flow from the output down to the input
            if isinstance(rule_set, DeepLiftRules) and inner:
                raise param_error("at", "gradient", "only 'input' and 'output' with DeepLiftRules", repr(inner))
        else:
            from_input = INPUT in wrt or OUTPUT in wrt
        store = {}
        with self._lock, ExitStack() as stack:
            stack.enter_context(self._eval_mode())
            stack.enter_context(torch.enable_grad() if from_input else torch.no_grad())
            stack.enter_context(self._pool_mode(x))
            if rule_set is None and relu != "standard":  # below a functional layer's mode, which hands it the call
                stack.enter_context(relu_rule_mode(relu, torch))
            if inner:
                stack.enter_context(capture(torch, self._named, inner, store, replace=True,
                                            leaves=() if from_input else set(wrt), functional=self._functional(inner)))
            xt = self._tensor(x).requires_grad_(from_input)  # NCHW, unlike forward passes: see ._layout
            fed = xt
            if isinstance(rule_set, RelevanceRules):  # below the softmax stripping, which then hides it
                stack.enter_context(lrp_mode(torch, self.module, self._named, rule_set, xt,
                                             self._found.get("head") is not None))
            elif rule_set is not None:
                fed = torch.cat([xt, self._tensor(np.ascontiguousarray(rule_set.baseline, np.float32))])
                stack.enter_context(deeplift_mode(torch, len(fed), rule_set.eps))
            stack.enter_context(self._scores())
            store[OUTPUT] = self._run(fed)
            if fed is not xt:
                store[OUTPUT] = store[OUTPUT][:len(xt)]
            store[INPUT] = xt
            missing = [n for n in inner if n not in store]
            if missing:
                raise ValueError(f"Layers {missing} did not run in the forward pass; they cannot be seeded or differentiated.")
            acts = {n: x if n == INPUT else self._numpy(store[n], repr(n), "gradient")  # x: checked already
                    for n in dict.fromkeys([*at, *wrt])}
            seed_map = seeds({n: acts[n] for n in at}) if callable(seeds) else seeds
            outs, grads_out = [], []
            for n, s in seed_map.items():  # names in ``at``; shapes checked by the base where it knew them
                if tuple(s.shape) != tuple(store[n].shape):
                    raise param_error("seeds", "gradient", f"shaped like {n!r}, {tuple(store[n].shape)}",
                                      f"shape {tuple(s.shape)}")
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

    def _incremental_plan(self, image, window, threshold):
        """Incremental occlusion's plan for one image (:mod:`._incremental`, :mod:`convscope._incremental`)."""
        from ._incremental import make_plan

        return make_plan(self, image, window, threshold)

    def __getstate__(self):  # picklable (Dask workers): the lock and caches are rebuilt
        state = dict(self.__dict__)
        for key in ("_lock", "_torch", "_layers"):
            state.pop(key)
        state["_detecting"] = None
        return state

    def __setstate__(self, state):
        import torch

        self.__dict__.update(state, _lock=threading.RLock(), _torch=torch, _layers={})

    def weights(self, layer):
        check_name(layer, self._named, "layer", "weights")
        return {k: self._numpy(v) for k, v in self._named[layer].named_parameters(recurse=False)}

    def _replaceable(self, layer):
        check_name(layer, self._named, "weights", "with_weights", what="module")
        return self.weights(layer)

    def _with_weights(self, weights):
        """A backend over a deep copy of the module with ``weights`` replaced (:mod:`._weights`)."""
        with self._lock:
            twin = module_with_weights(self._torch, self.module, self._named, weights)
        new = TorchBackend(twin, input_shape=self._input_shape, output=self.output, select=self.select)
        new._adopt_state(self._share_state())  # the same architecture: its probes, final softmax and lock hold
        return new
