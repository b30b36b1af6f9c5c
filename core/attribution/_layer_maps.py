"""A CAM layer's activations as (N, C, h, w) maps, whatever the layer's layout.

Channels-first maps are used as they are; channels-last maps (a tensor permuted inside the
model) are transposed; a token sequence (N, T, D) of a vision transformer is reshaped to its
grid: the last ``h * w`` tokens are the patches in raster order (class and register tokens
come first and are dropped), ``h, w`` the size of the patch-embedding conv's map, found by
the data flow. Where the grid cannot be found (or the tokens are laid out otherwise), pass
``reshape``: a function from the layer's (N, T, D) array to (N, C, h, w), the convention of
pytorch-grad-cam's ``reshape_transform``.
"""
from __future__ import annotations

import numpy as np

from .._layers import layout_of, token_grid
from .._validate import describe, param_error

__all__ = ["check_reshape", "to_maps", "patch_tokens_reached"]


def check_reshape(reshape, owner: str):
    if reshape is not None and not callable(reshape):
        raise param_error("reshape", owner, "None or a function (N, T, D) -> (N, C, h, w)", describe(reshape), TypeError)
    return reshape


def _grid_for(tokens: int, grid, layer, owner):
    if grid is None or grid[0] * grid[1] > tokens:
        raise ValueError(f"{owner}: layer {layer!r} is a sequence of {tokens} tokens and convscope cannot tell its "
                         "grid (no patch-embedding map feeds it); pass reshape=, a function from the (N, T, D) "
                         "activations to (N, C, h, w) maps, e.g. reshape=lambda a: a[:, 1:].reshape(len(a), 14, 14, "
                         "-1).transpose(0, 3, 1, 2) for 196 patch tokens after one class token.")
    return grid


def to_maps(a: np.ndarray, record, reshape, recs, owner: str) -> np.ndarray:
    """(N, C, h, w) from the layer's activations (or gradients) ``a``."""
    if reshape is not None:
        out = np.asarray(reshape(a), np.float32)
        if out.ndim != 4 or len(out) != len(a):
            raise param_error("reshape", owner, f"a function returning (N, C, h, w) maps for N = {len(a)}",
                              f"one returning shape {out.shape}")
        return np.ascontiguousarray(out)
    layout = layout_of(record) if record is not None else ("chw" if a.ndim == 4 else "other")
    if layout == "hwc" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    if layout == "tokens" and a.ndim == 3:
        h, w = _grid_for(a.shape[1], token_grid(recs, record.name), record.name, owner)
        patches = a[:, a.shape[1] - h * w:]
        return np.ascontiguousarray(patches.reshape(len(a), h, w, a.shape[2]).transpose(0, 3, 1, 2))
    return a


def patch_tokens_reached(grad: np.ndarray, record, recs) -> bool:
    """Whether the gradient at a token layer is non-zero on its patch tokens (the class token
    of a ViT reads them only through attention, so after the last attention it is zero)."""
    grid = token_grid(recs, record.name)
    n = grid[0] * grid[1] if grid is not None and grid[0] * grid[1] <= grad.shape[1] else grad.shape[1] - 1
    return bool(np.abs(grad[:, grad.shape[1] - n:]).max() > 0)
