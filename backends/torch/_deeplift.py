"""DeepLift's rescale rule inside torch autograd (Shrikumar et al. 2017; as Captum's ``DeepLift``).

The pass runs the images and their baselines as one batch of 2N (images first). A
``TorchFunctionMode`` replaces every elementwise nonlinearity called on a 2N-batch tensor that
carries a graph (modules and functional calls alike) by an autograd Function whose backward, for
the images' half, is the multiplier ``(f(u) - f(u0)) / (u - u0)`` where ``|u - u0| >= eps`` and
the plain derivative elsewhere; 2-d max pools take Captum's rule (the pooled difference routed
to the arg-max of the image and of the baseline). The baselines' half gets no gradient (the
seeds sit on the images' outputs only, and no operator mixes samples). Linear operators keep
their gradient.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["deeplift_mode"]

_NONLINEAR = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
              "selu", "celu", "gelu", "silu", "mish", "softplus", "sigmoid", "sigmoid_", "tanh", "tanh_",
              "hardswish", "hardsigmoid", "prelu"}
_MAXPOOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"}


def _name(func):
    return getattr(func, "__name__", "")


@lru_cache(maxsize=None)
def _functions(torch):
    Function = torch.autograd.Function
    F = torch.nn.functional

    class Rescale(Function):
        @staticmethod
        def forward(ctx, u, compute, eps):
            y = compute(u)
            n = len(u) // 2
            du, dy = u[:n] - u[n:], y[:n] - y[n:]
            small = du.abs() < eps
            ctx.compute = compute
            # the images' own pre-activations only where the plain derivative is needed (a copy:
            # an in-place activation overwrites u)
            ctx.ux = u[:n].clone() if bool(small.any()) else None
            ctx.save_for_backward(du, dy, small)
            return y

        @staticmethod
        def backward(ctx, r):
            du, dy, small = ctx.saved_tensors
            rx = r[:len(du)]
            g = rx * dy / torch.where(small, torch.ones_like(du), du)
            if ctx.ux is not None:
                with torch.enable_grad():
                    u_ = ctx.ux.requires_grad_(True)
                    (plain,) = torch.autograd.grad(ctx.compute(u_), u_, rx)
                g = torch.where(small, plain, g)
            return torch.cat([g, torch.zeros_like(g)]), None, None

    class MaxPool(Function):
        @staticmethod
        def forward(ctx, u, args, kwargs, eps):
            y, idx = F.max_pool2d_with_indices(u, *args, **kwargs)
            n = len(u) // 2
            ctx.eps = eps
            ctx.save_for_backward(u[:n] - u[n:], y[:n].clone(), y[n:].clone(), idx[:n], idx[n:])
            return y

        @staticmethod
        def backward(ctx, r):
            du, yx, y0, ix, i0 = ctx.saved_tensors
            rx = r[:len(du)]
            top = torch.max(yx, y0)

            def unpool(v, idx):
                out = torch.zeros(du.shape, dtype=v.dtype, device=v.device).flatten(2)
                return out.scatter_add_(2, idx.flatten(2), v.flatten(2)).reshape(du.shape)

            diff = unpool(rx * (top - y0), ix) + unpool(rx * (yx - top), i0)
            g = torch.where(du.abs() < ctx.eps, unpool(rx, ix), diff / torch.where(du == 0, torch.ones_like(du), du))
            return torch.cat([g, torch.zeros_like(g)]), None, None, None

    return Rescale, MaxPool


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    Rescale, MaxPool = _functions(torch)
    Tensor = torch.Tensor

    class DeepLiftMode(TorchFunctionMode):
        def __init__(self, batch, eps):
            super().__init__()
            self.batch, self.eps = batch, eps

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = _name(func)
            u = args[0] if args else kwargs.get("input")
            if not (isinstance(u, Tensor) and u.requires_grad and u.dim() > 0 and len(u) == self.batch
                    and u.is_floating_point()):
                return func(*args, **kwargs)
            if name in _NONLINEAR:
                in_place = name.endswith("_") or kwargs.get("inplace") is True or \
                    (name in ("relu", "relu6", "selu", "celu", "elu") and len(args) > 1 and args[-1] is True)
                kw = {k: v for k, v in kwargs.items() if k != "inplace"}
                rest = args[1:]
                if in_place and name in ("relu", "relu6") and rest and rest[-1] is True:
                    rest = rest[:-1]
                base = func if not name.endswith("_") else getattr(torch, name[:-1], None) or getattr(Tensor, name[:-1])

                def compute(t):
                    return base(t, *rest, **kw)

                out = Rescale.apply(u, compute, self.eps)
                return u.copy_(out) if in_place else out
            if name in _MAXPOOL:
                if kwargs.get("return_indices") or name == "max_pool2d_with_indices":
                    raise ValueError("DeepLift's max-pool rule needs max_pool2d without return_indices.")
                kw = {k: v for k, v in kwargs.items() if k != "return_indices"}
                return MaxPool.apply(u, tuple(args[1:]), kw, self.eps)
            return func(*args, **kwargs)

    return DeepLiftMode


def deeplift_mode(torch, batch, eps):
    """The mode of one DeepLift pass over ``batch`` = 2N samples (images, then baselines)."""
    return _mode_class(torch)(batch, eps)
