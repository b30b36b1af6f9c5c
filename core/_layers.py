"""Choosing and checking layers from the backend's layer records: the layer a CAM reads, the
spatial layers a synthesis objective or a report walks."""
from __future__ import annotations

import heapq

import numpy as np

from ._validate import check_name, describe, param_error

__all__ = ["records", "spatial_size", "layout_of", "is_map", "default_candidates", "default_layer", "token_grid", "resolve_layer", "check_layer_name", "check_spatial",
           "gap_linear_head", "spatial_layers", "check_layers"]


def records(backend, x):
    """``backend.layers()``; a backend that needs a batch to size its probe sees one image first."""
    try:
        return backend.layers()
    except ValueError:
        backend.forward(x[:1])
        return backend.layers()


def spatial_size(shape) -> int:
    """H * W of a (C, H, W) output shape, 0 for any other shape (or an unknown one)."""
    return int(shape[1] * shape[2]) if shape is not None and len(shape) == 3 and None not in shape[1:] else 0


def layout_of(record) -> str:
    """The record's layout; a backend that does not say gets "chw" for 3-d shapes."""
    if record.layout:
        return record.layout
    shape = record.shape
    return "chw" if shape is not None and len(shape) == 3 else "vector" if shape is not None and len(shape) == 1 else "other"


def is_map(record) -> bool:
    """A channels-first map with more than one position: what a CAM reads by default."""
    return layout_of(record) == "chw" and spatial_size(record.shape) > 1


def _ancestors(recs):
    """The records the last one that ran is computed from, in reverse execution order (the
    last layer first), following ``inputs``; None when the backend reports no data flow."""
    if not any(r.inputs for r in recs):
        return None
    index = {r.name: i for i, r in enumerate(recs)}
    last = max((i for i, r in enumerate(recs) if r.shape is not None), default=len(recs) - 1)  # modules that ran
    heap, seen, out = [-last], {last}, []
    while heap:
        i = -heapq.heappop(heap)
        out.append(recs[i])
        parents = list(recs[i].inputs)
        if recs[i].kind == "block":  # a container's output comes from inside it: its last child
            inner = (recs[i].name + ".", recs[i].name + "/")
            parents += [c.name for c in reversed(recs[:i]) if c.name.startswith(inner)][:1]
        for name in parents:
            j = index.get(name)
            if j is not None and j not in seen:
                seen.add(j)
                heapq.heappush(heap, -j)
    return out


def default_candidates(recs):
    """What a CAM reads by default: ``("map", [name])``, the last channels-first map (H x W > 1)
    on the data path into the outputs (before global pooling); or, for a token model (a
    token sequence lies between that map and the outputs, as in a ViT), ``("tokens",
    names)``: the token layers on that path, the last one first. Without data flow, the last
    channels-first map in execution order."""
    path = _ancestors(recs)
    if path is None:
        maps = [r.name for r in recs if is_map(r)]
        return ("map", maps[-1:]) if maps else (None, [])
    tokens = []
    for r in path:
        if is_map(r):
            return ("tokens", tokens) if tokens else ("map", [r.name])
        if layout_of(r) == "tokens" and r.shape is not None and r.shape[0] > 1:
            tokens.append(r.name)
    return ("tokens", tokens) if tokens else (None, [])


def default_layer(recs, owner: str) -> str:
    """The first name :func:`default_candidates` offers."""
    kind, names = default_candidates(recs)
    if kind is not None:  # a map, or the last token layer (CAMs refine that one by its gradient)
        return names[0]
    raise ValueError(f"{owner} found no layer with a spatial (C, H, W) output in this model; "
                     "pass layer=<name> explicitly.")


def resolve_layer(backend, x, layer, owner: str):
    """The layer name to use (checked against the records; default :func:`default_layer`)."""
    if layer is not None and not isinstance(layer, str):
        raise param_error("layer", owner, "a layer name (str) or None", describe(layer), TypeError)
    recs = records(backend, x)
    if layer is None:
        return default_layer(recs, owner), recs
    check_name(layer, [r.name for r in recs], "layer", owner)
    record = next(r for r in recs if r.name == layer)
    shape = record.shape
    if layout_of(record) == "chw" and shape is not None and spatial_size(shape) <= 1 and None not in shape:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output, H x W > 1",
                          f"{layer!r} with output shape {tuple(shape)}")
    return layer, recs


def token_grid(recs, layer: str):
    """(H, W) of the channels-first map a token layer's sequence was made from (the patch
    embedding conv of a ViT), found by the data flow; None when there is none."""
    index = {r.name: i for i, r in enumerate(recs)}
    if layer not in index:
        return None
    upto = recs[: index[layer] + 1]
    path = _ancestors(upto)
    for r in path or []:
        if is_map(r):
            return tuple(r.shape[1:])
    return None


def check_layer_name(backend, x, layer, owner: str) -> None:
    """Raise the ``'layer'`` error (with close matches) when ``layer`` is not a known layer.

    Called when a pass with an explicitly named layer failed: the records are read only
    then, so a call that names its layer costs no probe of the model."""
    check_name(layer, [r.name for r in records(backend, x)], "layer", owner)


def check_spatial(acts: np.ndarray, layer: str, owner: str) -> np.ndarray:
    """The pass's own activations must be (N, C, H, W) with H x W > 1."""
    if acts.ndim != 4 or acts.shape[2] * acts.shape[3] <= 1:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output, H x W > 1",
                          f"{layer!r} with output shape {tuple(acts.shape[1:])}")
    return acts


def _why_not_gap_linear(recs, layer):
    """(reason, None) when the records after ``layer`` are not [global average pool, (flatten),
    linear]; (None, name of the linear layer) when they are."""
    names = [r.name for r in recs]
    after = [r for r in recs[names.index(layer) + 1:] if r.shape is not None and r.kind != "dropout"]
    if not after:
        return f"nothing runs after {layer!r}", None
    pool, rest = after[0], after[1:]
    op = (pool.op or "").lower()
    is_global = pool.kind == "pool" and ("global" in op or spatial_size(pool.shape) <= 1 and len(pool.shape) in (1, 3))
    if not is_global or "max" in op:
        return f"the layer after {layer!r} is {pool.name!r} ({pool.kind} {pool.op}), not a global average pool", None
    if rest and rest[0].kind in ("flatten", "reshape"):
        rest = rest[1:]
    if not rest or rest[0].kind != "linear":
        nxt = f"{rest[0].name!r} ({rest[0].kind})" if rest else "nothing"
        return f"the global pool {pool.name!r} is followed by {nxt}, not a linear layer", None
    if len(rest) > 1:
        extra = ", ".join(f"{r.name} ({r.kind})" for r in rest[1:4])
        return f"the linear layer {rest[0].name!r} is followed by more layers: {extra}", None
    return None, rest[0].name


def gap_linear_head(recs, layer: str, owner: str) -> str:
    """Name of the linear layer of a ``layer -> global average pool -> linear`` head; a
    ValueError that says what is in the way otherwise."""
    why, linear = _why_not_gap_linear(recs, layer)
    if linear is not None:
        return linear
    raise ValueError(f"{owner} (Zhou et al. 2016) needs the layer to feed global average pooling and then one "
                     f"linear layer that gives the outputs, so that class weights apply to its channels; here {why}. "
                     "Use grad_cam, which works for any architecture and equals CAM on such models.")


def spatial_layers(backend, kinds=("relu",)) -> list:
    """Names of the layers with (C, H, W) outputs, H x W > 1, of the given kinds (ReLUs by
    default; conv layers when the model has no separate ReLU layers)."""
    maps = [layer for layer in backend.layers() if spatial_size(layer.shape) > 1]
    names = [layer.name for layer in maps if layer.kind in kinds]
    return names or [layer.name for layer in maps if layer.kind == "conv"]


def check_layers(layers, backend, owner: str, param: str = "layers") -> list:
    """A layer name or a non-empty sequence of them, each known to the backend."""
    if isinstance(layers, str):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise param_error(param, owner, "a layer name or a list of layer names", repr(layers), TypeError) from None
    if not layers:
        raise param_error(param, owner, "at least one layer name", "an empty sequence")
    known = [layer.name for layer in backend.layers()]
    return [check_name(name, known, param, owner) for name in layers]
