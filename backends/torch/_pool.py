"""Max pooling through the channels-last kernel: the same numbers, several times faster on CPU.

PyTorch's CPU max pooling of a contiguous (N, C, H, W) tensor runs 3-6x slower than its
channels-last kernel (torch 2.13, one thread: ResNet's 3x3/2 stem pool on 64 x 112 x 112
takes 4.3 ms, against 0.9 ms through channels-last with both layout conversions; the demo
model's first pool on a batch of 16, 3.9 against 1.1 ms). Max pooling only compares, so
that kernel returns exactly the same values and the same argmax indices (ties and NaN
included: the first maximum of each window; indices count positions within a plane, so
they do not depend on the layout). The backward pass stays in NCHW: PyTorch's NCHW kernel
for it is fast, and a channels-last gradient would make every elementwise backward op
after it run on mixed layouts (several times slower).

A ``TorchFunctionMode`` routes each 2-d max pool of a large contiguous CPU tensor through
:func:`pool`; other calls pass through untouched, and nothing on the model changes. A pool that
nothing will differentiate (a forward pass, occlusion) skips the autograd Function and the
copy of the argmax indices back to NCHW (``aten.max_pool2d``, which drops them).
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["channels_last_pool_mode", "MIN_ELEMENTS"]

#: Smaller inputs keep PyTorch's own path (the layout copies would cost more than they save).
MIN_ELEMENTS = 1 << 15
#: Large batches go through in chunks of about this many input elements, so that each chunk's
#: channels-last copy stays in cache: ResNet's stem pool on a batch of 32 (an integrated
#: gradients pass) takes 110-120 ms in chunks against 150-180 ms whole (NCHW: 190 ms).
CHUNK_ELEMENTS = 1 << 21


def _chunks(x):
    """Slices of ``x`` along the batch, each of about :data:`CHUNK_ELEMENTS` elements."""
    per = max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))
    return [slice(start, start + per) for start in range(0, x.shape[0], per)]


def _pooled(torch, kernel_fn, x, args, with_indices):
    """``kernel_fn`` (max_pool2d or max_pool2d_with_indices) over channels-last copies of
    ``x``'s chunks, gathered into NCHW tensors."""
    outs = None
    for part in _chunks(x):
        got = kernel_fn(x[part].contiguous(memory_format=torch.channels_last), *args)
        got = got if with_indices else (got,)
        if outs is None:
            outs = [torch.empty((x.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device) for t in got]
        for out, t in zip(outs, got):
            out[part].copy_(t)
    return tuple(outs) if with_indices else outs[0]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@lru_cache(maxsize=None)
def _pool_function(torch):
    """autograd Function: channels-last forward, NCHW backward from the saved indices."""
    backward_kernel = torch.ops.aten.max_pool2d_with_indices_backward

    class ChannelsLastMaxPool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
            values, indices = _pooled(torch, torch.ops.aten.max_pool2d_with_indices, x,
                                      (kernel, stride, padding, dilation, ceil_mode), True)
            ctx.save_for_backward(x, indices)
            ctx.args = (kernel, stride, padding, dilation, ceil_mode)
            ctx.mark_non_differentiable(indices)
            return values, indices

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad, _grad_indices):
            x, indices = ctx.saved_tensors
            return (backward_kernel(grad.contiguous(), x, *ctx.args, indices),
                    None, None, None, None, None)

    return ChannelsLastMaxPool


def _call(torch, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
    args = (kernel, stride, _pair(padding), _pair(dilation), bool(ceil_mode))
    if not return_indices and not (x.requires_grad and torch.is_grad_enabled()):
        # nothing will differentiate it: no autograd Function, and the indices are dropped, not
        # copied back (ResNet's stem pool on a batch of 8: 15 against 23 ms of CPU time, one thread)
        return _pooled(torch, torch.ops.aten.max_pool2d, x, args, False)
    values, indices = _pool_function(torch).apply(x, *args)
    return (values, indices) if return_indices else values


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    F = torch.nn.functional
    plain = {F.max_pool2d, getattr(F, "_max_pool2d", F.max_pool2d), torch.max_pool2d}
    nhwc = torch.channels_last

    def wanted(x):
        return (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu" and x.is_floating_point()
                and x.numel() >= MIN_ELEMENTS and x.is_contiguous() and not x.is_contiguous(memory_format=nhwc))

    class ChannelsLastPool(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if (func in plain or func is F.max_pool2d_with_indices) and args and wanted(args[0]):
                if func is F.max_pool2d_with_indices:  # always (values, indices), whatever the flag says
                    args, kwargs = args[:6], {**kwargs, "return_indices": True}
                return _call(torch, *args, **kwargs)
            return func(*args, **kwargs)

    return ChannelsLastPool


def channels_last_pool_mode(torch):
    """A TorchFunctionMode that runs large CPU 2-d max pools in the channels-last layout."""
    return _mode_class(torch)()
