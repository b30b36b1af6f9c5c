"""Exact (and approximate) incremental occlusion on torch (Nakandala, Kumar and
Papakonstantinou, SIGMOD 2019): the plan of :mod:`convscope._incremental`.

The module is traced once with ``torch.fx.symbolic_trace`` (a module that does not trace
has no plan: the tracer's reason is given) and its graph is run node by node. The original
image's pass keeps every node's output. A batch of patches then enters as a
:class:`._incremental_ops.Cropped` input, and each conv, pool (module or functional call,
:mod:`._incremental_windows`), elementwise op, channel concatenation and upsampling
recomputes only its output region (:mod:`._incremental_ops`);
an operator that needs the whole map (a global pool, flatten, linear, a normalisation over
the map, anything not known here) gets full maps (copies of the original with the boxes
pasted) and the rest of the graph runs as usual. The plan checks, on the original image,
that the traced graph reproduces ``backend.forward``; the model's hooks fire as in any
pass (on crops for leaf modules), its flags are restored after each call.
"""
from __future__ import annotations

import weakref

import numpy as np

from convscope._incremental import NotIncremental, window_region

from ._incremental_ops import Cropped, Ops, concat, elementwise, flat, mapped, materialise, upsample, window_op
from ._incremental_windows import spec, upsampling, window_geometry

__all__ = ["make_plan", "IncrementalPlan"]

_TRACED = weakref.WeakKeyDictionary()  # module -> GraphModule or the tracer's error message


def _traced(torch, module):
    got = _TRACED.get(module)
    if got is None:
        from ._capture import eval_mode

        try:
            with eval_mode(module):  # flags such as dropout's ``self.training`` are traced as constants
                got = torch.fx.symbolic_trace(module)
        except Exception as err:  # noqa: BLE001 - any tracer failure: no plan, and why
            got = f"torch.fx could not trace the model ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        _TRACED[module] = got
    if isinstance(got, str):
        raise NotIncremental(got)
    return got


class IncrementalPlan:
    """The plan for one image and one window size (:func:`make_plan`)."""

    def __init__(self, backend, image, window, threshold):
        self._torch = backend._torch
        self.backend, self.window, self.threshold = backend, tuple(window), threshold
        self.image = backend._tensor(np.ascontiguousarray(image, np.float32)).clone()  # never the caller's array
        self.ops = Ops(self._torch)
        expected = backend._forward(np.ascontiguousarray(image, np.float32))  # also finds a final softmax to cut
        if not self._reproduces(expected):  # a module changed since it was traced: trace it again, once
            _TRACED.pop(backend.module, None)
            if not self._reproduces(expected, raise_why=True):
                raise NotIncremental("the model's traced graph does not reproduce its forward on this image")
        self._probe_saving(image)

    def _reproduces(self, expected, raise_why=False):
        """Runs the original through the traced graph (keeping every node's output); whether it
        gives ``backend.forward``'s scores (with ``raise_why``, why not)."""
        self.graph_module = _traced(self._torch, self.backend.module)
        self.nodes = list(self.graph_module.graph.nodes)
        self.modules = dict(self.graph_module.named_modules())
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotIncremental(f"the traced model takes {len(placeholders)} inputs; incremental occlusion needs one")
        self.depends = set()  # nodes computed from the input
        for n in self.nodes:
            if n.op == "placeholder" or any(a in self.depends for a in n.all_input_nodes):
                self.depends.add(n)
        self.geometry, self.orig = {}, {}
        self.conv_flops = {}  # conv node -> multiply-adds of one image's full map
        self._work = [0.0, 0.0]  # recomputed conv work, conv work of as many full passes
        self._full_from = {}
        got = self._call(self.image, None)
        if got.shape != expected.shape:
            if raise_why:
                raise NotIncremental(f"the model's traced graph gives outputs of shape {got.shape}, "
                                     f"its forward {expected.shape}")
            return False
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(expected).max())):
            if raise_why:
                raise NotIncremental("the model's traced graph does not reproduce its forward on this image "
                                     f"(largest difference {np.abs(got - expected).max():.3g})")
            return False
        return True

    def _probe_saving(self, image):
        """One window of the image's own pixels: no conv working on crops means nothing to save."""
        h, w = (min(a, b) for a, b in zip(self.window, image.shape[-2:]))
        self.scores(np.ascontiguousarray(image[:, :, :h, :w]), np.zeros((1, 2), np.int64))
        if not self._work[1] or self._work[0] >= self._work[1]:
            where = next(iter(self._full_from), "the first conv (the window covers its map)")
            raise NotIncremental(f"no conv works on crops: full maps from {where}; plain occlusion is as fast")
        self._work, self._full_from = [0.0, 0.0], {}

    # ---------------------------------------------------------------- the public face
    @property
    def info(self) -> dict:
        work, full = self._work
        info = {"method": "incremental (Krypton: recomputes only each window's projective field)",
                "approximate": self.threshold, "conv_work": round(work / full, 4) if full else None}
        if self._full_from:
            info["full_maps_from"] = max(self._full_from, key=self._full_from.get)
        return info

    def scores(self, patches, corners):
        """(B, K) float32 scores of the image with ``patches`` (B, C, h, w) pasted at ``corners``."""
        region = window_region(corners, patches.shape[-2:], tuple(self.image.shape[-2:]))
        crop = self.backend._tensor(np.ascontiguousarray(patches, np.float32))
        return self._call(Cropped(self.image, region, crop), region)

    # ---------------------------------------------------------------- the pass
    def _call(self, value, region):
        backend, torch = self.backend, self._torch
        with backend._lock, backend._eval_mode(), torch.inference_mode(), backend._scores():
            out = self._run(value, first=region is None)
            if not isinstance(out, torch.Tensor) or backend.select is not None:
                if backend.select is None:
                    raise NotIncremental(f"the model returns a {type(out).__name__}")
                out = out[backend.select]
            return backend._numpy(out, "the output", "occlusion")

    def _run(self, value, first):
        env = {}
        self._batch_full, self._materialised = False, {}
        for node in self.nodes:
            if node.op == "output":
                result = mapped(torch_fx_load(node.args[0], env), self._full)
                self._materialised = {}
                return result
            if not first and node not in self.depends:
                env[node] = self.orig[node]
                continue
            if node.op == "placeholder":
                env[node] = value
                if first:
                    self.orig[node] = value
                continue
            if node.op == "get_attr":
                env[node] = self._attr(node.target)
            else:
                args, kwargs = torch_fx_load(node.args, env), torch_fx_load(node.kwargs, env)
                if first:
                    env[node] = self._plain(node, args, kwargs, first=True)
                else:  # an operand computed from the input on full maps: the node needs full maps too
                    full_in = any(a in self.depends and isinstance(env[a], self._torch.Tensor)
                                  for a in node.all_input_nodes)
                    env[node] = self._node(node, args, kwargs, full_in)
            if first:
                self.orig[node] = env[node]
                found = spec(self._torch, self.modules, node, args, kwargs) if node.op.startswith("call_") else None
                if found is not None and found[0] == "conv" and isinstance(found[1]["weight"], self._torch.Tensor):
                    self.conv_flops[node] = env[node][0].numel() * found[1]["weight"][0].numel()
        raise NotIncremental("the traced graph has no output")

    def _attr(self, target):
        obj = self.graph_module
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _callable(self, node):
        if node.op == "call_module":
            return self.modules[node.target]
        if node.op == "call_function":
            return node.target
        return lambda obj, *a, **k: getattr(obj, node.target)(*a, **k)

    def _inplace(self, node):
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            return node.target in self.ops.inplace_methods
        return node.target in self.ops.inplace_functions or bool(node.kwargs.get("inplace", False))

    def _copy_first(self, node, first):
        """Whether an in-place op must work on a copy: always in the original's pass (every
        value stays as computed, for the batches to read), in a batch's pass when the value it
        changes is read elsewhere too (or is the batch's input)."""
        if not self._inplace(node):
            return False
        target = node.args[0] if node.args else None
        return first or not hasattr(target, "users") or len(target.users) > 1 or target.op == "placeholder"

    def _plain(self, node, args, kwargs, first=False):
        """The node on ordinary tensors (an in-place op on a copy where :meth:`_copy_first` says)."""
        if self._copy_first(node, first):
            args = mapped(args, lambda v: v.clone() if isinstance(v, self._torch.Tensor) else v)
        return self._callable(node)(*args, **kwargs)

    def _full(self, value):
        """Full maps of a :class:`Cropped`, made once per value and pass (a squeeze-excitation
        block's pool and its gate both need the block's input whole)."""
        if not isinstance(value, Cropped):
            return value
        got = self._materialised.get(id(value))
        if got is None or got[0] is not value:
            got = self._materialised[id(value)] = (value, materialise(self._torch, value))
        return got[1]

    def _node(self, node, args, kwargs, full_in):
        """The node on a batch: crop-wise where it can, else on full maps."""
        cropped = [v for v in flat((args, kwargs)) if isinstance(v, Cropped)]
        if cropped:
            try:
                got = None if full_in else self._cropwise(node, args, kwargs, cropped)
            except _Global:
                got = None
            if got is not None:
                return got
            self._note_full(node, "needs the whole map")
            args, kwargs = mapped(args, self._full), mapped(kwargs, self._full)
        out = self._plain(node, args, kwargs)
        if node in self.conv_flops:
            self._count(node, 1.0, len(out))
        return out

    def _note_full(self, node, why):
        if not self._batch_full:
            self._batch_full = True
            what = repr(node.target) if node.op == "call_module" else f"{node.name} (a {node.op[5:]} call)"
            key = f"{what}: {why}"
            self._full_from[key] = self._full_from.get(key, 0) + 1

    # ---------------------------------------------------------------- crop-wise rules
    def _spatial(self, v):
        return isinstance(v, self._torch.Tensor) and v.dim() >= 3 and (v.shape[-1] > 1 or v.shape[-2] > 1)

    def _cropwise(self, node, args, kwargs, cropped):
        torch, ops = self._torch, self.ops
        out_orig = self.orig[node]
        fn = self._callable(node)
        if node.op == "call_method" and node.target in ops.meta_methods and isinstance(args[0], Cropped):
            meta = torch.empty((args[0].batch, *args[0].orig.shape[1:]), device="meta")
            return getattr(meta, node.target)(*args[1:], **kwargs)
        if node.op == "call_function" and node.target is getattr and args[1] == "shape":
            return torch.Size((args[0].batch, *args[0].orig.shape[1:]))
        geometry = window_geometry(self, node, args, kwargs)
        if geometry is not None:
            if not isinstance(args[0], Cropped) or len(cropped) > 1:
                raise _Global
            got = window_op(torch, args[0], geometry, out_orig, self.threshold)
            if isinstance(got, Cropped):
                r = got.region
                self._count(node, r.size[0] * r.size[1] / (r.shape[0] * r.shape[1]), got.batch)
            else:
                self._note_full(node, "the region covers the map")
                self._count(node, 1.0, len(got))
            return got
        if self._pointwise(node, args):
            if not isinstance(out_orig, torch.Tensor) or out_orig.dim() != 4:
                raise _Global
            for v in flat((args, kwargs)):  # another operand with a spatial extent: aligned if the same map
                if (self._spatial(v) and not isinstance(v, Cropped)
                        and tuple(v.shape[-2:]) != tuple(out_orig.shape[-2:])):
                    raise _Global
            if any(isinstance(v, Cropped) for v in flat(kwargs)):
                raise _Global
            inplace = self._copy_first(node, False)
            if any(isinstance(a, Cropped) and a.orig.shape != out_orig.shape for a in args):
                raise _Global  # broadcast against a larger map
            def run(*crops):
                if inplace:
                    crops = [c.clone() if isinstance(c, torch.Tensor) else c for c in crops]
                return fn(*crops, **kwargs)
            return elementwise(torch, run, list(args), out_orig, self._spatial)
        if node.op == "call_function" and node.target in ops.cat:
            tensors = args[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim not in (1, -3) or out_orig.dim() != 4 or any(isinstance(v, Cropped) for v in flat(args[1:])):
                raise _Global
            return concat(torch, list(tensors), 1, out_orig, self._spatial)
        scale = upsampling(self, node, args, kwargs)
        if scale is not None:
            return upsample(torch, args[0], scale[0], scale[1], out_orig)
        raise _Global

    def _pointwise(self, node, args):
        ops = self.ops
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, self._torch.nn.BatchNorm2d):
                return m.running_mean is not None and isinstance(args[0], Cropped)
            return isinstance(m, ops.pointwise_modules)
        if node.op == "call_method":
            return node.target in ops.pointwise_methods
        return node.op == "call_function" and node.target in ops.pointwise_functions

    def _count(self, node, fraction, batch):
        """Adds a conv's work on this batch: ``fraction`` of its map recomputed for each sample."""
        flops = self.conv_flops.get(node)
        if flops is not None:
            self._work[0] += flops * fraction * batch
            self._work[1] += flops * batch


class _Global(Exception):
    """Raised by a crop-wise rule: this node needs full maps."""


def torch_fx_load(value, env):
    """``value`` with every fx node replaced by its value in ``env``."""
    import torch.fx

    return torch.fx.node.map_arg(value, lambda n: env[n])


def make_plan(backend, image, window, threshold):
    """The torch backend's ``_incremental_plan`` (:mod:`convscope._incremental`)."""
    return IncrementalPlan(backend, image, window, threshold)
