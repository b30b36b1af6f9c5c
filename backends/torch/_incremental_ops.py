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

import numpy as np

from convscope._incremental import Region, through_upsample, through_window, union

__all__ = ["Cropped", "gather", "materialise", "window_op", "elementwise", "concat", "upsample"]


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


def gather(torch, value, starts, size, offset=(0, 0), base=None):
    """The boxes ``starts`` (B, 2) of ``size`` of ``value`` (a :class:`Cropped`, or a plain
    (1, C, H, W) tensor the same for every sample), in the coordinates of ``base`` (default the
    original), a padded copy whose pixel (0, 0) is the original's ``-offset``. Returns (B, C, h, w)."""
    orig = value.orig if isinstance(value, Cropped) else value
    base = orig if base is None else base
    rows, cols = _index(torch, starts, size, base.device)
    out = base[0][:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # (B, C, h, w)
    if not isinstance(value, Cropped):
        return out
    r = value.region
    rr = rows - torch.from_numpy(r.starts[:, :1] + offset[0]).to(base.device)
    cc = cols - torch.from_numpy(r.starts[:, 1:] + offset[1]).to(base.device)
    inside = (((rr >= 0) & (rr < r.size[0]))[:, :, None] & ((cc >= 0) & (cc < r.size[1]))[:, None, :])
    if not bool(inside.any()):
        return out
    b = torch.arange(len(rows), device=base.device)[:, None, None]
    pasted = value.crop[b, :, rr.clamp(0, r.size[0] - 1)[:, :, None], cc.clamp(0, r.size[1] - 1)[:, None, :]]
    return torch.where(inside[:, None], pasted.permute(0, 3, 1, 2), out)


def materialise(torch, value):
    """The full maps (B, C, H, W) of a :class:`Cropped`: copies of the original, boxes pasted in."""
    r = value.region
    full = value.orig.expand(value.batch, *value.orig.shape[1:]).clone()
    rows, cols = _index(torch, r.starts, r.size, full.device)
    b = torch.arange(value.batch, device=full.device)[:, None, None]
    full[b, :, rows[:, :, None], cols[:, None, :]] = value.crop.permute(0, 2, 3, 1)
    return full


def _finish(out_orig, region, crop):
    """A :class:`Cropped`, or the full tensor when the region is the whole map."""
    if region.full:
        return crop
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
    crops = [gather(torch, v, region.starts, region.size)
             if isinstance(v, Cropped) or (spatial(v) and tuple(v.shape[-2:]) == region.shape) else v
             for v in values]
    return crops, region


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
