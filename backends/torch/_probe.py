"""Layer records of a torch module from one probe pass: order, shapes, geometry, data flow, layout.

One forward pass of a zero image with a pre- and a post-hook on every module, and a
``TorchFunctionMode`` that sees every torch function the forward calls:

* **data flow** follows the autograd graph. A leaf module's ``inputs`` are the layers whose
  outputs are reached from its input tensors through functional operations (a residual add
  names both branches). A container's ``inputs`` describe its *output*: its last child when
  it returns that child's output, else the layers its output is computed from (a
  squeeze-excitation block returning ``x * gate`` names the branch and the gate, a residual
  block returning ``x + f(x)`` the block's input and ``f``'s last layer).
* **only tensors computed from the input are layers**: a module whose output the input does
  not reach (a positional embedding, a module returning a parameter) is left out; one whose
  output carries no graph at all (a buffer) is listed as kind ``"other"``, layout ``"other"``.
* **layout** is tracked per tensor by the mode, from the model input (a channels-first map)
  through every operation: ``permute(0, 2, 3, 1)`` of a channels-first map gives a
  channels-last one (``"hwc"``) and ``permute(0, 3, 1, 2)`` turns it back; ``flatten(2)`` of a
  map gives (C, T), which ``transpose(1, 2)`` turns into tokens (``"tokens"``, a ViT patch
  embedding); a reshape that keeps the channel axis keeps the family (tokens <-> hwc,
  (C, T) <-> chw); a channel shuffle's (N, G, C / G, H, W) views of a map, transposed on the
  group axes and viewed back, stay a map; convolutions, pools and resizes give
  channels-first maps whatever came in; an operation whose result has as many axes as its first tensor argument
  (pointwise ops, norms, linear layers, convs, adds, cat) keeps that argument's layout. A
  2-d result is a vector; an untracked 4-d one a channels-first map, an untracked 3-d one
  ``"other"``. A LayerNorm or Linear on a (N, H, W, C) tensor thus produces ``"hwc"``.
* **functional activations** (``F.relu(features)`` between modules) on a module's output are
  layers ``"<module>:<op>"``, their results the producers of what comes after
  (:mod:`._functional`).
* **a final softmax** (a module, or a functional call whose result is the model output)
  is noted for :mod:`._output`.
"""
from __future__ import annotations

from functools import lru_cache

from convscope.backend import Layer

from ._functional import Functional, activation_ops, op_kind
from ._output import FinalSoftmax, softmax_functions

__all__ = ["probe", "kind_of", "geometry"]


def kind_of(module, torch) -> str:
    nn = torch.nn
    table = [
        ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
        ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "deconv"),
        ((nn.ReLU, nn.ReLU6), "relu"),
        ((nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
          nn.Mish, nn.SELU, nn.Softplus), "activation"),
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


def geometry(module, in_shape, torch) -> dict:
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


# ----------------------------------------------------------------------------- layout tracking
def _dims(args, ndim):
    dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    try:
        return tuple(int(d) % ndim for d in dims)
    except (TypeError, ValueError):
        return None


def _layout_after(name, args, kwargs, a, tag, r):
    """The layout tag of result ``r`` of ``name(a, *args)``, ``a`` tagged ``tag``."""
    nd, rd = a.dim(), r.dim()
    if name in _MAP_OPS and rd == 4:  # convolutions, pools, resizes take and give channels-first maps
        return "chw"
    if name == "permute":
        dims = _dims(args or kwargs.get("dims", ()), nd)
        if nd == 4 and tag == "chw" and dims == (0, 2, 3, 1):
            return "hwc"
        if nd == 4 and tag == "hwc" and dims == (0, 3, 1, 2):
            return "chw"
        if nd == 3 and dims == (0, 2, 1):  # torchvision's ViT: reshape(n, hidden, -1).permute(0, 2, 1)
            return {"ct": "tokens", "tokens": "ct"}.get(tag, "other")
        return "other" if rd != 2 else "vector"
    if name in ("transpose", "swapaxes", "swapdims", "movedim"):
        dims = _dims(args[:2], nd) if len(args) >= 2 else None
        if nd == 3 and dims in ((1, 2), (2, 1)):
            return {"ct": "tokens", "tokens": "ct"}.get(tag, "other")
        if nd == 5 and tag == "chw5" and dims is not None and 3 not in dims and 4 not in dims:
            return "chw5"  # a channel shuffle swaps the group axes, never H or W
        return "other"
    if rd == 2:
        return "vector"
    if name in ("flatten", "reshape", "view", "unflatten", "view_as", "reshape_as"):
        if rd == nd and tuple(r.shape) == tuple(a.shape):
            return tag
        if tag == "chw" and rd == 3 and r.shape[1] == a.shape[1]:
            return "ct"
        if tag == "ct" and rd == 4 and r.shape[1] == a.shape[1]:
            return "chw"
        if tag == "tokens" and rd == 4 and r.shape[-1] == a.shape[-1]:
            return "hwc"
        if tag == "hwc" and rd == 3 and r.shape[-1] == a.shape[-1]:
            return "tokens"
        if tag == "chw" and rd == 5 and tuple(r.shape[-2:]) == tuple(a.shape[-2:]):
            return "chw5"  # (N, groups, C / groups, H, W): a channel shuffle's view
        if tag == "chw5" and rd == 4 and tuple(r.shape[-2:]) == tuple(a.shape[-2:]):
            return "chw"
        return "other"
    return tag if rd == nd else None


@lru_cache(maxsize=None)
def _tracker_class(torch):
    from torch.overrides import TorchFunctionMode

    softmaxes = softmax_functions(torch)
    activations = activation_ops(torch)
    Tensor = torch.Tensor

    class Tracker(TorchFunctionMode):
        """Tags every tensor result with its layout; counts softmax calls; hands each
        activation call to ``watch(op, autograd node of its input before the call, result)``."""

        def __init__(self, watch=None):
            super().__init__()
            self.tags = {}  # id(tensor) -> (tensor, tag); the tensors are kept for the pass
            self.softmax = []  # results of softmax calls, in call order
            self.watch = watch

        def tag(self, t):
            entry = self.tags.get(id(t))
            return entry[1] if entry is not None and entry[0] is t else None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            op = activations.get(func)
            x = (args[0] if args else kwargs.get("input")) if op is not None else None
            node = x.grad_fn if isinstance(x, Tensor) else None  # before an in-place op replaces it
            r = func(*args, **kwargs)
            self._tag(func, args, kwargs, r)
            if node is not None and self.watch is not None and isinstance(r, Tensor):
                self.watch(op, node, r)
            return r

        def _tag(self, func, args, kwargs, r):
            if func in softmaxes:
                self.softmax.append((r, softmaxes[func]))
            results = [r] if isinstance(r, Tensor) else \
                [t for t in r if isinstance(t, Tensor)] if isinstance(r, (tuple, list)) else []
            if not results:
                return
            first = args[0] if args else None
            tensors = [first] if isinstance(first, Tensor) else []
            if isinstance(first, (tuple, list)) and first:  # cat, stack
                tensors = [t for t in first if isinstance(t, Tensor)]
            elif isinstance(first, Tensor) and len(args) > 1 and first.dim() == results[0].dim():  # x + y, gate * x
                tensors += [t for t in args[1:] if isinstance(t, Tensor) and t.dim() == results[0].dim()]
            if tensors:  # the first argument whose layout is known says the layout
                first = next((t for t in tensors if self.tag(t) in _KNOWN), tensors[0])
                tag = self.tag(first) or _default(first.dim())
                for out in results:  # a tuple of results (chunk, split) inherits in the same way
                    new = _layout_after(getattr(func, "__name__", ""), args[1:], kwargs, first, tag, out)
                    if new is not None:
                        self.tags[id(out)] = (out, new)

    return Tracker


_KNOWN = ("chw", "hwc", "tokens", "ct", "chw5")
#: functions whose 4-d results are channels-first maps whatever came in
_MAP_OPS = frozenset(("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                      "adaptive_max_pool2d", "max_pool2d_with_indices", "batch_norm", "instance_norm", "interpolate",
                      "upsample", "pixel_shuffle", "pixel_unshuffle"))


def _default(ndim):
    return {4: "chw", 2: "vector"}.get(ndim, "other")


def _public_layout(tag, ndim):
    tag = tag or _default(ndim)
    return tag if tag in ("chw", "hwc", "tokens", "vector") and {"vector": 2, "tokens": 3}.get(tag, 4) == ndim \
        else "other"


# ----------------------------------------------------------------------------- the probe
def probe(torch, root, named, x0, select):
    """One forward pass of ``root`` on ``x0`` (a leaf that requires grad) with hooks on the
    modules ``named`` (path -> module): (records, output shape or None, FinalSoftmax or None,
    {functional layer: :class:`._functional.Functional`}).
    Outputs are kept alive for the pass so that no autograd node is freed and reused."""
    order, info, producer, handles, alive = [], {}, {}, [], []
    calls, current, memo = {}, {}, {}
    last_softmax_module = []
    modular = set()  # autograd nodes of module outputs: what a functional layer is anchored on
    leaf_depth, op_calls, found = [0], {}, {}  # found: functional layer -> Functional

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

    def reaches_input(t):
        """Whether the autograd graph of ``t`` reaches ``x0``; None when ``t`` has no graph."""
        if t.grad_fn is None:
            return True if t is x0 else (False if t.requires_grad else None)
        stack = [(t.grad_fn, False)]
        while stack:
            node, expanded = stack.pop()
            if node in memo:
                continue
            children = [n for n, _ in node.next_functions if n is not None]
            if expanded:
                memo[node] = any(memo.get(c, False) for c in children)
                continue
            variable = getattr(node, "variable", None)
            if variable is not None:  # AccumulateGrad of a leaf
                memo[node] = variable is x0
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in children if c not in memo)
        return memo[t.grad_fn]

    def functional(op, node, r):
        """An activation call on ``node``'s tensor: a layer when that is a module's output and
        no leaf module is running (:mod:`._functional`)."""
        anchor = producer.get(node) if node in modular else None
        if anchor is None:
            return
        index = op_calls[(anchor, op)] = op_calls.get((anchor, op), 0) + 1  # leaf modules' calls too
        if leaf_depth[0]:
            return
        base = f"{anchor}:{op}"
        calls[base] = calls.get(base, 0) + 1
        key = base if calls[base] == 1 else f"{base}#{calls[base]}"
        found[key] = Functional(anchor, op, index)
        info[key] = dict(inputs=(anchor,), in_shape=None, shape=tuple(r.shape[1:]), from_input=True,
                         layout=_public_layout(tracker.tag(r), r.dim()), op=op)
        if r.grad_fn is not None:
            producer[r.grad_fn] = key
        alive.append(r)
        order.append((key, None))

    def pre(name, leaf):
        def hook(module, inputs):
            leaf_depth[0] += leaf
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            ins = tuple(dict.fromkeys(p for t in tensors for p in producers(t)))
            info[key] = dict(inputs=ins, in_shape=tuple(tensors[0].shape[1:]) if tensors else None)
            current[name] = key
        return hook

    def post(name, container):
        def hook(module, inputs, out):
            leaf_depth[0] -= not container
            key = current.pop(name, name)
            d = info[key]
            if isinstance(out, torch.Tensor):
                d["shape"] = tuple(out.shape[1:])
                d["layout"] = _public_layout(tracker.tag(out), out.dim())
                d["from_input"] = reaches_input(out)
                if container:  # what its output is computed from (module docstring)
                    d["inputs"] = (producer[out.grad_fn],) if out.grad_fn in producer else \
                        tuple(dict.fromkeys(producers(out)))
                if out.grad_fn is not None and d["from_input"]:
                    producer[out.grad_fn] = key
                    modular.add(out.grad_fn)
                alive.append(out)
                if isinstance(module, (torch.nn.Softmax, torch.nn.LogSoftmax)):
                    last_softmax_module[:] = [(name, calls[name], type(module).__name__, out)]
            order.append((key, module))
        return hook

    tracker = _tracker_class(torch)(functional)
    try:
        for name, m in named.items():
            handles.append(m.register_forward_pre_hook(pre(name, not m._modules)))
            handles.append(m.register_forward_hook(post(name, bool(m._modules))))
        with tracker:
            out = root(x0)
    finally:
        for h in handles:
            h.remove()
    records = []
    for key, m in order:
        d = info[key]
        if m is None:  # a functional layer
            records.append(Layer(name=key, kind=op_kind(d["op"]), shape=d["shape"], inputs=d["inputs"], op=d["op"],
                                 layout=d["layout"]))
            continue
        dep = d.get("from_input", True)
        if dep is False:
            continue  # not computed from the input: not a layer
        kind, layout = (kind_of(m, torch), d.get("layout", "")) if dep else ("other", "other")
        records.append(Layer(name=key, kind=kind, shape=d.get("shape"), inputs=d["inputs"], op=type(m).__name__,
                             layout=layout, **geometry(m, d["in_shape"], torch)))
    seen = set(info)
    records += [Layer(name=n, kind=kind_of(m, torch), op=type(m).__name__) for n, m in named.items() if n not in seen]
    if select is not None and not isinstance(out, torch.Tensor):
        try:
            out = out[select]
        except (KeyError, IndexError, TypeError):
            out = None
    head = None
    if isinstance(out, torch.Tensor):
        if last_softmax_module and last_softmax_module[0][3] is out:
            name, call, cls, _ = last_softmax_module[0]
            head = FinalSoftmax(call=call, module=name, function=cls)
        else:
            k = next((i for i, (r, _) in enumerate(tracker.softmax) if r is out), None)
            if k is not None:
                head = FinalSoftmax(call=k + 1, function=tracker.softmax[k][1])
    return records, tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None, head, found
