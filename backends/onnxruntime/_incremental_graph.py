"""The crop-wise graph of incremental occlusion on ONNX Runtime (:mod:`._incremental`).

:func:`crop_graph` walks the model's nodes in order with, for every tensor that depends on
the image, either a *crop* (the (B, C, h, w) box of the map that a patch can change, with
its :class:`~convscope._incremental.Region`) or the *full* (B, ...) tensor:

* Conv, MaxPool, AveragePool on a crop: the input box (:func:`~convscope._incremental.through_window`)
  is gathered from the original's padded activation with the crop pasted in, and the same op
  runs on it with ``pads=0`` (an AveragePool that excludes padding, or overhangs in ceil mode,
  divides by the pooled mask of what it counts);
* pointwise operators (activations, BatchNormalization, Clip, ...) and broadcasting ones with
  constants that do not vary over the map run on the crop; Add, Mul, ... of several crops and
  Concat on channels run on their :func:`~convscope._incremental.union`;
* a constant Pad moves the box; a nearest Resize by integer factors (output o reading input
  floor(o / s)) upsamples the crop;
* any other operator (global pooling, Flatten, Reshape, Gemm, attention, ...), and any operator
  that reads a full tensor, gets full inputs: each crop is pasted into the original's map,
  and the node runs as it is in the model. From there on the graph is the model's own.

A *gather* pastes a crop into the original and takes a box of the result: the crop is laid
out channels-last as (B h w, C) after the original's (Hp Wp, C), and one Gather on axis 0
with int64 indices (B, ih, iw), computed in NumPy per batch from the boxes, copies each box
position's channel vector from the crop or the original (a row gather: a contiguous copy per
position, several times faster than gathering single elements). All boxes of a batch have one size per tensor (the
largest over every window position), so the graph depends on the window size only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convscope._incremental import Region, through_upsample, through_window, union

from ._session import _reads
from .adjoint._emit import attr
from .adjoint.rules_spatial import window_geometry

__all__ = ["Gather", "CropGraph", "crop_graph", "PATCHES"]

PATCHES = "convscope_incremental/patches"
_UNARY = frozenset(("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
                    "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg",
                    "Reciprocal", "Clip", "Identity", "Dropout", "BatchNormalization", "Floor", "Ceil", "Round",
                    "Sign", "ThresholdedRelu", "Shrink", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum",
                    "Mean"))
_WINDOWED = ("Conv", "MaxPool", "AveragePool")
_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Gather:
    """A box of ``source``'s original, padded by ``pads`` (top, left, bottom, right) with
    ``fill``, with the crop ``crop`` (of region ``crop_region``) pasted in; ``box`` holds the
    box starts in padded coordinates for every window position. ``crop`` None: the mask of
    what an AveragePool counts (``fill`` inside the map's padding, 0 past it)."""

    index: str
    source: str
    pads: tuple
    fill: float
    crop: str | None
    crop_region: Region | None
    box: Region
    output: str


@dataclass
class CropGraph:
    """What the walk produced: nodes and initializers of the crop-wise graph, its gathers, the
    padded originals it is fed ({input name: (kind, tensor, pads, fill, inner)}: "activation",
    or the "mask" of an AveragePool, ``fill`` on its padding ``inner``), and the accounting:
    ``work`` the share of the forward's multiply-adds (Conv, Gemm, MatMul) a patch costs,
    ``full_from`` the first node run on whole maps, ``forced`` True when an operator rather than
    the receptive field covering the map put it there, ``cropped`` the nodes run on crops."""

    nodes: list
    initializers: list
    gathers: list
    originals: dict
    work: float
    full_from: str | None
    forced: bool
    cropped: int


def _padded_shape(dims, pads):
    return dims[0] + pads[0] + pads[2], dims[1] + pads[1] + pads[3]


class _Walk:
    def __init__(self, graph, shapes, folder, dependent, threshold):
        from onnx import helper, numpy_helper

        self.graph, self.shapes, self.folder, self.dependent = graph, shapes, folder, dependent
        self.threshold, self._helper, self._np = threshold, helper, numpy_helper
        self.nodes, self.inits, self.gathers, self.originals = [], [], [], {}
        self.state = {}  # tensor -> ("crop", name, Region) or ("full", tensor)
        self._flat, self._count, self._grown = {}, 0, False
        self.macs_done, self.macs_all, self.full_from, self.forced, self.cropped = 0.0, 0.0, None, False, 0

    # ------------------------------------------------------------------ helpers
    def fresh(self, stem):
        self._count += 1
        return f"convscope_incremental/{stem}{self._count}"

    def op(self, op_type, inputs, output=None, **attrs):
        output = output or self.fresh(op_type.lower())
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def ints(self, values):
        name = self.fresh("const")
        self.inits.append(self._np.from_array(np.asarray(values, np.int64), name))
        return name

    def map_dims(self, tensor):
        dims = self.shapes.get(tensor)
        return None if dims is None or len(dims) != 4 or None in dims[1:] else dims

    def _flat_crop(self, name, channels):
        if name not in self._flat:  # (B, C, h, w) -> (B h w, C)
            moved = self.op("Transpose", [name], perm=[0, 2, 3, 1])
            self._flat[name] = self.op("Reshape", [moved, self.ints([-1, channels])])
        return self._flat[name]

    def gather(self, source, pads, fill, crop, box, output=None, inner=None):
        """The box ``box`` of ``source``'s padded original with the crop ``crop`` (name, Region)
        pasted; ``crop`` None: the box of the mask that is 1 on the map, ``fill`` on its padding
        ``inner`` and 0 on the rest of ``pads``."""
        channels = self.map_dims(source)[1]
        key = ("mask" if crop is None else "activation", source, tuple(pads), float(fill),
               None if inner is None else tuple(inner))
        if key not in self.originals.values():
            self.originals[self.fresh("original")] = key
        original = next(k for k, v in self.originals.items() if v == key)
        index = self.fresh("index")
        if crop is None:
            taken = self.op("Gather", [original, index], axis=0)
        else:
            joined = self.op("Concat", [original, self._flat_crop(crop[0], channels)], axis=0)
            taken = self.op("Gather", [joined, index], axis=0)
        output = self.op("Transpose", [taken], output, perm=[0, 3, 1, 2])
        self.gathers.append(Gather(index, source, tuple(pads), float(fill), None if crop is None else crop[0],
                                   None if crop is None else crop[1], box, output))
        return output

    def full(self, tensor):
        """``tensor`` as a full (B, ...) map in the new graph (its own name)."""
        if self.state[tensor][0] == "crop":
            _, name, region = self.state[tensor]
            box = Region(np.zeros_like(region.starts), region.shape, region.shape)
            self.gather(tensor, (0, 0, 0, 0), 0.0, (name, region), box, output=tensor)
            self.state[tensor] = ("full", tensor)
        return tensor

    def macs(self, node):
        """Multiply-adds of ``node`` per sample (Conv, Gemm, MatMul; 0 for the rest)."""
        if node.op_type not in _MAC_OPS:
            return 0.0
        out = self.shapes.get(node.output[0])
        if out is None or None in out[1:]:
            return 0.0
        per = 1.0
        if node.op_type in ("Conv", "ConvTranspose"):
            w = self.shapes.get(node.input[1])
            per = float(np.prod(w[1:])) if w is not None and None not in w else 1.0
        else:
            a = self.shapes.get(node.input[0])
            per = float(a[-1]) if a is not None and a[-1] is not None else 1.0
        return per * float(np.prod(out[1:]))

    # ------------------------------------------------------------------ the walk
    def visit(self, node):
        reads = [t for t in _reads(node) if t in self.state]
        full_cost = self.macs(node)
        self.macs_all += full_cost
        if not reads:
            self.nodes.append(node)
            return
        crops = [t for t in reads if self.state[t][0] == "crop"]
        handled = bool(crops) and len(crops) == len(reads) and node.domain in ("", "ai.onnx") and self.crop(node)
        if handled:
            self.cropped += 1
            return
        if crops and self.full_from is None:
            self.full_from = f"{node.op_type} ({node.name or node.output[0]!r})"
            self.forced = not self._grown  # an operator, not the receptive field, ended the crops
        for t in crops:
            self.full(t)
        self.nodes.append(node)
        self.macs_done += full_cost
        for o in node.output:
            if o in self.dependent:
                self.state[o] = ("full", o)

    def crop(self, node):
        """Emit the crop-wise form of ``node`` and return True, or False to run it on full maps."""
        outs = [o for o in node.output if o]
        if len(outs) != 1 or self.map_dims(outs[0]) is None:
            return False
        op = node.op_type
        if op in _WINDOWED:
            return self._windowed(node)
        if op in _UNARY or (op == "Concat" and attr(node, "axis") in (1, -3)):
            return self._pointwise(node)
        if op == "Pad":
            return self._pad(node)
        if op == "Resize":
            return self._nearest(node)
        return False

    def _set(self, tensor, name, region):
        self.state[tensor] = ("crop", name, region) if not region.full else ("full", tensor)
        if region.full and name != tensor:
            self.op("Identity", [name], tensor)

    def _windowed(self, node):
        x = node.input[0]
        if any(t in self.state for t in node.input[1:]) or self.map_dims(x) is None:
            return False
        _, name, region = self.state[x]
        out_dims = self.map_dims(node.output[0])
        in_dims = self.map_dims(x)
        kernel, strides, dilations, begin, end = window_geometry(node, list(in_dims[2:]))
        if kernel is None and node.op_type == "Conv":
            kernel = list(self.shapes[node.input[1]][2:])
        if kernel is None or len(kernel) != 2 or (node.op_type == "AveragePool" and dilations != [1, 1]):
            return False
        padding = (begin[0], begin[1], end[0], end[1])
        out, in_starts, in_size = through_window(region, kernel, strides, padding, dilations, tuple(out_dims[2:]),
                                                 self.threshold)
        if out.full:
            self._grown = True
            return False
        padded = _padded_shape(in_dims[2:], padding)
        over = [max(0, int((in_starts[:, a] + in_size[a]).max()) - padded[a]) for a in (0, 1)]
        pads = (padding[0], padding[1], padding[2] + over[0], padding[3] + over[1])
        fill = -np.inf if node.op_type == "MaxPool" else 0.0
        box = Region(in_starts, tuple(in_size), _padded_shape(in_dims[2:], pads))
        taken = self.gather(x, pads, fill, (name, region), box)
        new = self._helper.make_node(node.op_type, [taken, *node.input[1:]], [self.fresh("crop")], name=node.name)
        skip = ("pads", "auto_pad", "ceil_mode", "count_include_pad")
        new.attribute.extend(a for a in node.attribute if a.name not in skip)
        new.attribute.append(self._helper.make_attribute("pads", [0, 0, 0, 0]))
        self.nodes.append(new)
        output = new.output[0]
        counted = int(attr(node, "count_include_pad", 0))
        if node.op_type == "AveragePool" and (any(over) or (any(padding) and not counted)):
            mask = self.gather(x, pads, float(counted), None, box, inner=padding)
            pooled = self._helper.make_node("AveragePool", [mask], [self.fresh("mask")])
            pooled.attribute.extend(a for a in new.attribute)
            self.nodes.append(pooled)
            output = self.op("Div", [output, pooled.output[0]])
        self._set(node.output[0], output, out)
        self.macs_done += self.macs(node) * np.prod(out.size) / np.prod(out_dims[2:])
        return True

    def _constant_ok(self, name):
        """A constant operand that does not vary over H and W (a bias, a per-channel scale)."""
        dims = self.shapes.get(name)
        return dims is not None and all(d == 1 for d in ((1, 1, *dims)[-2:] if len(dims) >= 1 else (1, 1)))

    def _pointwise(self, node):
        out_dims = self.map_dims(node.output[0])
        varying = [t for t in node.input if t in self.state]
        if any(self.map_dims(t) is None or (node.op_type != "Concat" and self.map_dims(t) != out_dims)
               for t in varying):
            return False
        constants = [t for t in node.input if t and t not in self.state]
        if node.op_type in ("BatchNormalization", "Clip"):  # per-channel parameters, scalar bounds
            if varying != [node.input[0]]:
                return False
        elif not all(self._constant_ok(t) for t in constants):
            return False
        if node.op_type == "BatchNormalization" and attr(node, "training_mode", 0):
            return False
        regions = [self.state[t][2] for t in varying]
        joint = union(regions) if len(regions) > 1 else regions[0]
        inputs = []
        for t in node.input:
            if t not in self.state:
                inputs.append(t)
                continue
            _, name, region = self.state[t]
            if region.size != joint.size or not np.array_equal(region.starts, joint.starts):
                name = self.gather(t, (0, 0, 0, 0), 0.0, (name, region), joint)
            inputs.append(name)
        new = self._helper.make_node(node.op_type, inputs, [self.fresh("crop")], name=node.name)
        new.attribute.extend(node.attribute)
        self.nodes.append(new)
        self._set(node.output[0], new.output[0], Region(joint.starts, joint.size, tuple(out_dims[2:])))
        return True

    def _pad(self, node):
        mode = attr(node, "mode", "constant")
        dims_out = self.map_dims(node.output[0])
        value = self.folder.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        pads = None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
        if mode != "constant" or pads is None or len(pads) != 8 or (len(node.input) > 3 and node.input[3]):
            return False
        if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0 or any(t in self.state for t in node.input[1:]):
            return False
        _, name, region = self.state[node.input[0]]
        starts = region.starts + np.array([pads[2], pads[3]], np.int64)
        self.state[node.output[0]] = ("crop", name, Region(starts, region.size, tuple(dims_out[2:])))
        return True


    def _nearest(self, node):
        """Nearest upsampling by integer factors, where output o reads input floor(o / s): the crop
        at the box times s upsamples to the output's box (:func:`through_upsample`)."""
        x = node.input[0]
        dims_in, dims_out = self.map_dims(x), self.map_dims(node.output[0])
        transform = attr(node, "coordinate_transformation_mode", "half_pixel")
        rounding = attr(node, "nearest_mode", "round_prefer_floor")
        halves = transform in ("half_pixel", "pytorch_half_pixel")
        floors = (transform == "asymmetric" and rounding == "floor") or (
            halves and rounding in ("round_prefer_floor", "round_prefer_ceil"))
        if attr(node, "mode", "nearest") != "nearest" or not floors or attr(node, "axes") is not None:
            return False
        if dims_in is None or dims_in[1] != dims_out[1] or any(t in self.state for t in node.input[1:]):
            return False
        scale = [o // i for i, o in zip(dims_in[2:], dims_out[2:])]
        if any(o != f * i for i, o, f in zip(dims_in[2:], dims_out[2:], scale)):
            return False
        _, name, region = self.state[x]
        scales = self.fresh("scales")
        self.inits.append(self._np.from_array(np.array([1, 1, *scale], np.float32), scales))
        new = self._helper.make_node("Resize", [name, "", scales], [self.fresh("crop")], name=node.name)
        new.attribute.extend(node.attribute)
        self.nodes.append(new)
        self._set(node.output[0], new.output[0], through_upsample(region, scale, tuple(dims_out[2:])))
        return True


def crop_graph(graph, shapes, folder, dependent, image_region, threshold):
    """Walk ``graph`` from the image's ``image_region`` (a Region over every window position)."""
    walk = _Walk(graph, shapes, folder, dependent, threshold)
    walk.state[graph.image] = ("crop", PATCHES, image_region) if not image_region.full else ("full", graph.image)
    if image_region.full:
        walk.op("Identity", [PATCHES], graph.image)
    for node in graph.nodes:
        walk.visit(node)
    if walk.state.get(graph.scores, ("full",))[0] == "crop":
        walk.full(graph.scores)
    work = walk.macs_done / walk.macs_all if walk.macs_all else 1.0
    return CropGraph(walk.nodes, walk.inits, walk.gathers, walk.originals, float(work), walk.full_from,
                     walk.forced, walk.cropped)
