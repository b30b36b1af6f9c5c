"""Layer-wise relevance propagation inside torch autograd: one forward, one modified backward.

A ``TorchFunctionMode`` sees every operator of the forward pass (modules and functional calls
alike) and keeps the set of data-path tensors (the input and everything computed from it).
Each operator on that path is replaced by an autograd Function whose backward carries
relevance by the rules of :mod:`convscope._relevance` (the semantics every backend shares):
conv2d and linear by the layer's rule (:mod:`._lrp_rules`), a BatchNorm right after one merged
into it when ``canonize``, other BatchNorms and average pools/means by the epsilon rule with
``sum_stabilizer``, additions of data tensors by their shares, elementwise activations and
operations with constants as Pass, routing operators (reshapes, cat, slicing, padding, max
pools, resizes) by their plain gradient. Any other operator on the path raises ``ValueError``
naming the layer and the operator. Forward values are the model's own; nothing on the model
changes (the hooks that name the running module are removed in ``finally``).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

from ._lrp_rules import divide, layer_relevance

__all__ = ["lrp_mode"]

#: routed by the plain adjoint
_ROUTE = {"cat", "concat", "concatenate", "stack", "view", "reshape", "flatten", "permute", "transpose", "t",
          "squeeze", "unsqueeze", "contiguous", "clone", "__getitem__", "pad", "interpolate", "upsample",
          "upsample_nearest2d", "upsample_bilinear2d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices",
          "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "max_pool1d", "chunk", "split", "unbind",
          "narrow", "to", "float", "type_as", "expand", "expand_as", "view_as", "reshape_as", "movedim",
          "identity", "split_with_sizes", "unflatten", "dropout", "dropout2d", "alpha_dropout",
          "feature_alpha_dropout"}
#: elementwise activations: relevance passes unchanged (Zennit's Pass)
_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
                "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "softplus", "sigmoid", "sigmoid_",
                "tanh", "tanh_", "hardswish", "hardsigmoid", "prelu", "threshold", "threshold_", "rrelu"}
_ADD = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_SUB = {"sub", "__sub__", "__isub__", "sub_", "subtract"}
_RSUB = {"__rsub__", "rsub"}
_SCALE = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__itruediv__", "div_",
          "true_divide", "neg", "__neg__", "multiply", "divide"}
_POOLS = {"avg_pool2d", "adaptive_avg_pool2d", "avg_pool1d", "adaptive_avg_pool1d", "mean", "sum"}
_OFF_PATH = {"__get__", "detach", "detach_", "cpu", "numpy", "__array__", "__format__", "__repr__", "isfinite", "isnan",
             "ge", "gt", "le", "lt", "eq", "ne", "all", "any", "max", "min", "argmax", "argmin", "abs", "norm"}
_SOFTMAX = {"softmax", "log_softmax", "_softmax"}


def _name(func):
    return getattr(func, "__name__", None) or str(func)


def _sum_to(t, shape):
    return t if tuple(t.shape) == tuple(shape) else t.sum_to_size(shape)


@lru_cache(maxsize=None)
def _functions(torch):
    Function = torch.autograd.Function

    class Pass(Function):
        @staticmethod
        def forward(ctx, x, compute):
            ctx.shape = x.shape
            return compute()

        @staticmethod
        def backward(ctx, r):
            return _sum_to(r, ctx.shape), None

    class Layer(Function):
        """conv2d / linear with an LRP rule: ``spec`` holds the op, weights, rule and forward value."""

        @staticmethod
        def forward(ctx, a, spec):
            ctx.spec = spec
            ctx.save_for_backward(a)
            return spec.value

        @staticmethod
        def backward(ctx, r):
            (a,) = ctx.saved_tensors
            spec = ctx.spec
            return layer_relevance(torch, spec, a, r), None

    class Norm(Function):
        """A linear map without parameters to modify (pools, means, an unmerged BatchNorm):
        R_in = a * J^T (R / stab(z)), J the map's Jacobian (its plain VJP)."""

        @staticmethod
        def forward(ctx, a, spec):
            ctx.spec = spec
            ctx.save_for_backward(a)
            return spec.value

        @staticmethod
        def backward(ctx, r):
            (a,) = ctx.saved_tensors
            spec = ctx.spec
            s = divide(torch, r, spec.z, spec.epsilon)
            with torch.enable_grad():
                a_ = a.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(spec.linear(a_), a_, s)
            return a * g, None

    class Sum(Function):
        """z = sum_i c_i x_i of data tensors: R_i = c_i x_i R / stab(z) (Zennit's Norm on Sum)."""

        @staticmethod
        def forward(ctx, spec, *xs):
            ctx.spec = spec
            return spec.value

        @staticmethod
        def backward(ctx, r):
            spec = ctx.spec
            s = divide(torch, r, spec.z, spec.epsilon)
            return (None, *(_sum_to(c * x * s, x.shape) for c, x in zip(spec.coefficients, spec.operands)))

    return Pass, Layer, Norm, Sum


class _Spec:
    """What a Function's backward needs (plain attributes; no tensor here is an autograd input)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    Pass, Layer, Norm, Sum = _functions(torch)
    Tensor = torch.Tensor

    class RelevanceMode(TorchFunctionMode):
        def __init__(self, rules, where, xt, allow_softmax):
            super().__init__()
            self.rules, self.where, self.allow_softmax = rules, where, allow_softmax
            self.path = {id(xt): xt}
            self.pending = {}  # id(conv/linear output) -> (that output, its version, its spec)
            self.used = {}  # layer name -> the Rule applied (for info)
            self.done = False

        # ------------------------------------------------------------ bookkeeping
        def _data(self, t):
            return isinstance(t, Tensor) and self.path.get(id(t)) is t

        def _mark(self, out):
            if isinstance(out, Tensor):
                if out.is_floating_point():
                    self.path[id(out)] = out
            elif isinstance(out, (tuple, list)):
                for o in out:
                    self._mark(o)
            return out

        def _layer(self):
            return self.where[-1][0] if self.where else "<model>"

        def _refuse(self, func):
            raise ValueError(f"LRP has no rule for the operator {_name(func)!r} at layer {self._layer()!r} "
                             "(on the relevance path): layer-wise relevance propagation covers conv, linear, "
                             "BatchNorm, pools, additions, concatenations, reshapes and elementwise activations.")

        # ------------------------------------------------------------ dispatch
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if self.done or _name(func) in ("grad", "backward", "run_backward"):
                self.done = True  # the forward pass is over: the backward runs as written
                return func(*args, **kwargs)
            flat = list(args) + list(kwargs.values())
            if args and isinstance(args[0], (list, tuple)):
                flat += list(args[0])
            data = [t for t in flat if self._data(t)]
            if not data:
                return func(*args, **kwargs)
            name = _name(func)
            if name in ("conv2d", "linear"):
                return self._mark(self._weighted(func, name, args, kwargs))
            if name == "batch_norm":
                return self._mark(self._batch_norm(func, args, kwargs))
            if name in _ACTIVATIONS or (name in _SOFTMAX and self.allow_softmax):
                return self._mark(self._pass(func, name, args, kwargs))
            if name in _ADD or name in _SUB or name in _RSUB:
                return self._mark(self._add(func, name, args, kwargs))
            if name in _SCALE:
                if sum(self._data(t) for t in args[:2]) > 1:
                    self._refuse(func)
                return self._mark(self._pass(func, name, args, kwargs))
            if name in _POOLS:
                return self._mark(self._norm(func, args, kwargs))
            out = func(*args, **kwargs)
            if any(out is t for t in data) or not isinstance(out, (Tensor, tuple, list)):
                return out  # the same tensor (requires_grad_, an identity) or a non-tensor (a size)
            if name in _ROUTE:
                if name == "clone" and id(args[0]) in self.pending:  # a recorded copy of a conv output
                    self.pending[id(out)] = (out, out._version, *self.pending[id(args[0])][2:])
                return self._mark(out)
            if name in _OFF_PATH or isinstance(out, Tensor) and not out.is_floating_point():
                return out  # off the relevance path (detach), indices, masks
            self._refuse(func)

        # ------------------------------------------------------------ the rules
        def _weighted(self, func, name, args, kwargs):
            a = args[0]
            if any(self._data(t) for t in [*args[1:3], kwargs.get("weight"), kwargs.get("bias")]):
                self._refuse(func)
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            layer = self._layer()
            rule = self.rules.rule_for(layer)
            if rule is None:
                raise ValueError(f"The 'rules' of lrp leave the {name} layer {layer!r} without a rule.")
            with torch.no_grad():
                value = func(a.detach(), weight, bias, *args[3:], **{k: v for k, v in kwargs.items()
                                                                    if k not in ("weight", "bias")})
            spec = _Spec(op=name, weight=weight.detach(), bias=None if bias is None else bias.detach(),
                         geometry=_conv_geometry(args, kwargs) if name == "conv2d" else None, rule=rule,
                         value=value, layer=layer)
            if rule.name in ("epsilon", "zero") and not rule.zero_bias:
                spec.z = value.clone()  # an in-place op after the layer may change its output
            self.used[layer] = rule
            out = Layer.apply(a, spec)
            self.pending[id(out)] = (out, out._version, spec, a)
            return out

        def _batch_norm(self, func, args, kwargs):
            x = args[0]
            with torch.no_grad():
                value = func(x.detach(), *args[1:], **kwargs)
            mean, var = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
            gamma, beta = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
            eps = _arg(args, kwargs, 7, "eps", 1e-5)
            if mean is None or var is None or _arg(args, kwargs, 5, "training", False):
                raise ValueError(f"LRP needs BatchNorm layer {self._layer()!r} in eval mode with running statistics.")
            scale = (var + eps).rsqrt()
            if gamma is not None:
                scale = scale * gamma.detach()
            shift = -mean * scale + (0 if beta is None else beta.detach())
            found = self.pending.get(id(x))
            if self.rules.canonize and found is not None and found[0] is x and found[1] == x._version:
                conv = found[2]
                shape = (-1,) + (1,) * (conv.weight.dim() - 1)
                merged = _Spec(op=conv.op, weight=conv.weight * scale.reshape(shape),
                               bias=(0 if conv.bias is None else conv.bias) * scale + shift, geometry=conv.geometry,
                               rule=conv.rule, value=value, layer=conv.layer)
                if conv.rule.name in ("epsilon", "zero") and not conv.rule.zero_bias:
                    merged.z = value.clone()
                return Layer.apply(found[3], merged)
            view = (1, -1) + (1,) * (x.dim() - 2)
            spec = _Spec(value=value, z=value.clone(), epsilon=self.rules.sum_stabilizer,
                         linear=lambda t: t * scale.reshape(view))
            return Norm.apply(x, spec)

        def _norm(self, func, args, kwargs):
            a = args[0]
            with torch.no_grad():
                value = func(a.detach(), *args[1:], **kwargs)
            spec = _Spec(value=value, z=value.clone(), epsilon=self.rules.sum_stabilizer,
                         linear=lambda t: func(t, *args[1:], **kwargs))
            return Norm.apply(a, spec)

        def _pass(self, func, name, args, kwargs):
            x = next(t for t in args if self._data(t))
            in_place = name.endswith("_") and not name.endswith("__") or name.startswith("__i") or \
                kwargs.get("inplace") is True
            if in_place:
                kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}

            def compute():
                if name.startswith("__i"):
                    return getattr(Tensor, "__" + name[3:])(*(t.detach() if t is x else t for t in args), **kwargs)
                if in_place and name.endswith("_"):
                    return func(*(t.detach().clone() if t is x else t for t in args), **kwargs)
                return func(*(t.detach() if t is x else t for t in args), **kwargs)

            out = Pass.apply(x, compute)
            return x.copy_(out) if in_place and args[0] is x else out

        def _add(self, func, name, args, kwargs):
            a, b = args[0], args[1]
            alpha = kwargs.get("alpha", 1)
            if not (self._data(a) and self._data(b)):
                return self._pass(func, name, args, kwargs)
            c = (1.0, alpha) if name in _ADD else (1.0, -alpha) if name in _SUB else (-alpha, 1.0)
            with torch.no_grad():
                value = c[0] * a.detach() + c[1] * b.detach()
            operands = (a.detach().clone(), b.detach().clone()) if name.startswith("__i") or name.endswith("_") \
                else (a.detach(), b.detach())
            spec = _Spec(value=value, z=value.clone(), epsilon=self.rules.sum_stabilizer, coefficients=c,
                         operands=operands)
            out = Sum.apply(spec, a, b)
            return a.copy_(out) if (name.startswith("__i") or name.endswith("_")) else out

    return RelevanceMode


def _arg(args, kwargs, i, key, default=None):
    return args[i] if len(args) > i else kwargs.get(key, default)


def _conv_geometry(args, kwargs):
    names = ("stride", "padding", "dilation", "groups")
    defaults = (1, 0, 1, 1)
    return tuple(_arg(args, kwargs, 3 + i, k, d) for i, (k, d) in enumerate(zip(names, defaults)))


@contextmanager
def lrp_mode(torch, module, named, rules, xt, allow_softmax):
    """The relevance mode for one pass, with forward hooks naming the running module (a module
    called again is ``name#2``); yields the mode (its ``used`` maps layers to the rules applied)."""
    where, calls, handles = [], {}, []

    def pre(name):
        def hook(mod, inputs):
            calls[name] = calls.get(name, 0) + 1
            where.append((name if calls[name] == 1 else f"{name}#{calls[name]}", mod))
        return hook

    def post(mod, inputs, out):
        if where:
            where.pop()

    try:
        for name, m in named.items():
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post))
        mode = _mode_class(torch)(rules, where, xt, allow_softmax)
        with mode:
            yield mode
    finally:
        for h in handles:
            h.remove()
