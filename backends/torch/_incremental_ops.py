"""Crop-wise operators for incremental occlusion on torch (:mod:`._incremental`).

A value that differs from the original image's only inside one box per sample is a
:class:`Cropped`: the original's tensor (1, C, H, W), the boxes (a
:class:`convscope._incremental.Region`) and the batch's values inside them (B, C, h, w).
Each function here computes an operator's output region from its input regions with the
shared box arithmetic and runs the operator once, batched, on crops gathered from the
original with the batch's boxes pasted in (advanced indexing; no loop over samples).
"""
from __future__ import annotations

from dataclasses import dataclass

import operator
import weakref

import numpy as np

from convscope._incremental import Region, through_upsample, through_window, union

__all__ = ["Ops", "pair", "conv_padding", "flat", "mapped", "Cropped", "gather", "materialise", "window_op",
           "elementwise", "concat", "upsample"]


@dataclass
class Cropped:
    """``crop`` (B, C, h, w): the batch's values in ``region``'s boxes; elsewhere ``orig`` (1, C, H, W)."""

    orig: object
    region: Region
    crop: object

    @property
    def batch(self):
        return self.crop.shape[0]


def _index(torch, starts, size, device):
    """(rows (B, h), cols (B, w)) index tensors of boxes of ``size`` at ``starts`` (B, 2)."""
    s = torch.from_numpy(np.ascontiguousarray(starts, np.int64)).to(device)
    rows = s[:, :1] + torch.arange(size[0], device=device)
    cols = s[:, 1:] + torch.arange(size[1], device=device)
    return rows, cols


_PIXELS = {}  # id(tensor) -> (a weak reference to it, its (H * W, C) channels-last copy), until it dies


def pixels(t):
    """A (1, C, H, W) tensor as (H * W, C) rows, one per pixel (made once per tensor)."""
    key = id(t)
    got = _PIXELS.get(key)
    if got is not None and got[0]() is t:
        return got[1]
    flat = t[0].permute(1, 2, 0).reshape(-1, t.shape[1])
    _PIXELS[key] = (weakref.ref(t), flat)
    weakref.finalize(t, _PIXELS.pop, key, None)
    return flat


def rows_of(t):
    """A (B, C, h, w) tensor as (B * h * w, C) rows (free for channels-last memory)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def as_map(flat, batch, size):
    """(B * h * w, C) rows back to a (B, C, h, w) tensor in channels-last memory."""
    return flat.view(batch, size[0], size[1], -1).permute(0, 3, 1, 2)


def _flat_index(rows, cols, width):
    return (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)


def _paste(torch, flat, value, starts, size, offset):
    """Writes the pixels of ``value``'s boxes that lie inside the boxes ``starts`` of ``size``
    (coordinates shifted by ``offset``) into ``flat``, their (B * h * w, C) rows."""
    r = value.region
    device = flat.device
    rel = torch.from_numpy(np.ascontiguousarray(r.starts + np.asarray(offset) - starts, np.int64)).to(device)
    li = rel[:, :1] + torch.arange(r.size[0], device=device)  # (B, hr) rows of the crop in the box
    lj = rel[:, 1:] + torch.arange(r.size[1], device=device)
    b = torch.arange(len(rel), device=device)[:, None, None] * (size[0] * size[1])
    dest = (b + li[:, :, None] * size[1] + lj[:, None, :]).reshape(-1)
    src = rows_of(value.crop)
    if bool(((li >= 0) & (li < size[0])).all() and ((lj >= 0) & (lj < size[1])).all()):
        return flat.index_copy_(0, dest, src)
    valid = (((li >= 0) & (li < size[0]))[:, :, None] & ((lj >= 0) & (lj < size[1]))[:, None, :]).reshape(-1)
    return flat.index_copy_(0, dest[valid], src[valid])


def gather(torch, value, starts, size, offset=(0, 0), base=None):
    """The boxes ``starts`` (B, 2) of ``size`` of ``value`` (a :class:`Cropped`, or a plain
    (1, C, H, W) tensor the same for every sample), in the coordinates of ``base`` (default the
    original), a padded copy whose pixel (0, 0) is the original's ``-offset``. Returns
    (B, C, h, w) in channels-last memory: one row gather, then the batch's pixels pasted."""
    orig = value.orig if isinstance(value, Cropped) else value
    base = orig if base is None else base
    rows, cols = _index(torch, starts, size, base.device)
    flat = pixels(base).index_select(0, _flat_index(rows, cols, base.shape[-1]))
    if isinstance(value, Cropped):
        _paste(torch, flat, value, starts, size, offset)
    return as_map(flat, len(rows), size)


def materialise(torch, value):
    """The full maps (B, C, H, W) of a :class:`Cropped`: copies of the original, boxes pasted in."""
    shape = value.region.shape
    flat = pixels(value.orig).repeat(value.batch, 1)
    _paste(torch, flat, value, np.zeros((value.batch, 2), np.int64), shape, (0, 0))
    return as_map(flat, value.batch, shape).contiguous()  # the ordinary layout: the rest may view() it


def _finish(out_orig, region, crop):
    """A :class:`Cropped`, or the full tensor when the region is the whole map."""
    if region.full:
        return crop.contiguous()
    return Cropped(out_orig, region, crop)


@dataclass
class WindowGeometry:
    """A conv or pool with ``run(crops)`` (padding 0 on crops) and the padded original ``base``."""

    kernel: tuple
    stride: tuple
    padding: tuple  # top, left, bottom, right
    dilation: tuple
    run: object
    base: object = None  # the original input, padded (and extended for ceil mode)
    scale: object = None  # avg pool: the factor map (1, 1, H', W') or None


def window_op(torch, value, geometry, out_orig, threshold):
    """A conv or pool on a :class:`Cropped`: the outputs whose receptive field meets the boxes."""
    out_shape = tuple(out_orig.shape[-2:])
    region, in_starts, in_size = through_window(value.region, geometry.kernel, geometry.stride, geometry.padding,
                                                geometry.dilation, out_shape, threshold)
    crops = gather(torch, value, in_starts, in_size, offset=geometry.padding[:2], base=geometry.base)
    out = geometry.run(crops)
    if geometry.scale is not None:
        out = out * gather(torch, geometry.scale, region.starts, region.size)
    if tuple(out.shape[-2:]) != tuple(region.size):
        raise RuntimeError(f"incremental crop of size {tuple(out.shape[-2:])}, expected {region.size}")
    return _finish(out_orig, region, out)


def aligned(torch, values, spatial):
    """Crops of every tensor of ``values`` on the union of the :class:`Cropped` ones' regions
    (tensors without the map's spatial extent pass unchanged), and that region."""
    region = union([v.region for v in values if isinstance(v, Cropped)])

    def crop(v):
        if isinstance(v, Cropped):
            same = v.region.size == region.size and np.array_equal(v.region.starts, region.starts)
            return v.crop if same else gather(torch, v, region.starts, region.size)
        return gather(torch, v, region.starts, region.size) if spatial(v) and tuple(v.shape[-2:]) == region.shape else v

    return [crop(v) for v in values], region


def elementwise(torch, fn, values, out_orig, spatial):
    """An elementwise op ``fn(*crops)`` on crops aligned to one region."""
    crops, region = aligned(torch, values, spatial)
    return _finish(out_orig, region, fn(*crops))


def concat(torch, tensors, dim, out_orig, spatial):
    """``torch.cat`` of maps on the channel axis, crop-wise."""
    crops, region = aligned(torch, tensors, spatial)
    return _finish(out_orig, region, torch.cat(crops, dim))


def upsample(torch, value, scale, mode, out_orig):
    """An integer-factor nearest or bilinear (``align_corners=False``) upsampling on crops: for
    bilinear the crop takes one more input pixel each side than the outputs it keeps need."""
    F = torch.nn.functional
    in_shape = value.region.shape
    out_shape = tuple(out_orig.shape[-2:])
    halo = 1 if mode == "bilinear" else 0
    region = through_upsample(value.region, scale, out_shape, halo)
    if region.full:
        return F.interpolate(materialise(torch, value), scale_factor=scale, mode=mode)
    starts, size = [], []
    for a in (0, 1):
        lo = region.starts[:, a] // scale[a] - 2 * halo
        length = min(in_shape[a], -(-region.size[a] // scale[a]) + 4 * halo + 1)
        starts.append(np.clip(lo, 0, in_shape[a] - length))
        size.append(length)
    in_starts = np.stack(starts, axis=1)
    crops = gather(torch, value, in_starts, tuple(size))
    up = F.interpolate(crops, scale_factor=scale, mode=mode)
    inner = Cropped(None, Region(in_starts * np.asarray(scale), tuple(up.shape[-2:]), out_shape), up)
    rows, cols = _index(torch, region.starts - inner.region.starts, region.size, up.device)
    b = torch.arange(len(rows), device=up.device)[:, None, None]
    out = up[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return _finish(out_orig, region, out)


def pair(v):
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


def conv_padding(padding, kernel, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    p = pair(padding)
    return (p[0], p[1], p[0], p[1])


class Ops:
    """What the interpreter knows, by module class, function and method name."""

    def __init__(self, torch):
        nn, F = torch.nn, torch.nn.functional
        self.pointwise_modules = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                                  nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout,
                                  nn.Dropout2d, nn.PReLU)
        self.pointwise_functions = {F.relu, torch.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid,
                                    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.gelu, F.leaky_relu,
                                    F.elu, F.mish, F.dropout, F.dropout2d, torch.clamp, torch.relu_, F.relu_,
                                    operator.neg, torch.exp, torch.abs,
                                    operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd,
                                    operator.imul, operator.isub, torch.add, torch.mul, torch.sub, torch.div,
                                    torch.maximum, torch.minimum}
        self.pointwise_methods = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "add", "add_",
                                  "mul", "mul_", "sub", "div", "contiguous", "neg", "exp", "abs"}
        self.inplace_methods = {m for m in self.pointwise_methods if m.endswith("_")}
        self.inplace_functions = {operator.iadd, operator.imul, operator.isub, torch.relu_, F.relu_}
        self.cat = {torch.cat, torch.concat}
        self.meta_methods = {"size", "dim"}


def flat(value):
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from flat(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from flat(v)
    else:
        yield value


def mapped(value, fn):
    if isinstance(value, (tuple, list)):
        return type(value)(mapped(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: mapped(v, fn) for k, v in value.items()}
    return fn(value)
