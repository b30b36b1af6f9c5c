"""What in an ONNX graph is a layer, and how each layer's axes are laid out.

A tensor *depends on the image* when its values do: the image input does, and so does every
output of a node that reads a dependent tensor, except ``Shape`` and ``Size``, whose outputs
depend only on the image's size. So constants, initializers, an ``Identity``/``Cast``/
``Reshape`` of a constant (torch shares equal weights through ``Identity`` nodes), shape
arithmetic (``Shape -> Gather -> Unsqueeze -> Concat``, ``ConstantOfShape``, ``Range``) and a
class token ``Expand``-ed to the batch size never are. Only dependent float tensors are layers.

Layouts (:data:`convscope.backend.LAYOUTS`) follow the data flow from the image, a channels-first
map, through every node in order. Besides the layout, each tensor carries its *grid*: the
positions of the image's H and W axes, while the tensor still holds them (two neighbouring
axes, H first), else None. A 4-d tensor with the grid on axes (2, 3) is ``"chw"``, on (1, 2)
``"hwc"``; any other tensor that still holds the grid (a channel shuffle's 5-d view) is
``"other"`` but keeps it, so that the map it is folded back into is a map again. What each
operator does:

* Conv, ConvTranspose, the pools (windowed and global), DepthToSpace, SpaceToDepth: their
  output is a channels-first map (the operator reads axis 1 as channels), whatever came in;
* pointwise operators with one varying input (activations, Cast, Identity, Dropout, Clip,
  Softmax), the normalisations (BatchNormalization, LayerNormalization, InstanceNormalization,
  GroupNormalization, LRN), Pad, Slice, Split, Resize, Tile, CumSum and rank-preserving
  Gather, Expand: the output has its input's layout and grid (sizes may change, meanings not);
* broadcasting operators (Add, Mul, Sub, Div, Pow, Max, Min, Sum, Mean, Where, PRelu, ...) and
  Concat: the layout of the varying input of the output's shape, a specific layout before
  ``"other"`` (a residual Add of tokens and an attention output is tokens); an SE gate (C, 1, 1)
  times its map is the map;
* Transpose: the grid moves with the permutation: a chw map under perm (0, 2, 3, 1) is hwc,
  hwc under (0, 3, 1, 2) is chw again, H and W swapped lose the grid; (N, D, T) under
  (0, 2, 1) is tokens (N, T, D), tokens under (0, 2, 1) are (N, D, T) again;
* Reshape, Flatten, Squeeze, Unsqueeze (by the shapes before and after): a 2-d result that
  keeps the batch is a vector; a result that keeps the grid axes with everything before them
  (or everything after them) has the grid; a chw map (N, C, H, W) viewed as (N, C, H W) is
  (N, D, T), which a Transpose makes tokens; hwc (N, H, W, C) viewed as (N, H W, C) is tokens;
  a vector viewed as (N, D, 1, 1) is a 1 x 1 chw map (an SE gate), as (N, 1, 1, D) an hwc one;
* reductions: with keepdims the layout and grid stay; otherwise a 2-d result that keeps the
  batch is a vector (global pooling by ReduceMean over (2, 3), token pooling over axis 1);
* MatMul with a constant right operand (a Linear on the last axis) keeps the layout of an hwc
  map, tokens or a vector; on a chw map (its last axis W) or with two varying operands
  (attention) the result is ``"other"``; Gemm gives a vector;
* a rank-dropping Gather (tokens[:, 0]) follows the Reshape rule; any other operator keeps
  its input's layout where its output has its input's shape, else gives ``"other"``.
"""
from __future__ import annotations

from ._session import _reads

__all__ = ["dependent_tensors", "track_layouts", "VIEW_OPS"]

_SIZE_ONLY = ("Shape", "Size")
_MAP_OPS = frozenset(("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                      "GlobalMaxPool", "GlobalLpPool", "DepthToSpace", "SpaceToDepth", "MaxUnpool", "MaxRoiPool",
                      "DeformConv", "QLinearConv", "ConvInteger"))
_KEEP_OPS = frozenset((
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Sin", "Cos", "ThresholdedRelu", "Clip", "Cast", "CastLike", "Identity", "Dropout", "Softmax", "LogSoftmax",
    "Hardmax", "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LRN",
    "MeanVarianceNormalization", "Pad", "Slice", "Split", "Resize", "Upsample", "Tile", "CumSum", "Not", "IsNaN",
    "IsInf", "TopK", "Expand", "Shrink", "LpNormalization", "ReverseSequence", "Trilu", "GatherElements"))
_BROADCAST_OPS = frozenset(("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Mod", "And",
                            "Or", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Concat",
                            "BitShift", "PRelu"))
_REDUCE_OPS = frozenset(("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"))
#: operators that only view their input's values in another shape or order
VIEW_OPS = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"))
_SPECIFIC = ("chw", "hwc", "tokens", "vector")
_DT = "dt"  # (N, D, T): a chw map with its grid flattened, before the Transpose to tokens
OTHER = ("other", None)


def dependent_tensors(graph) -> set:
    """Names of the tensors whose values depend on the image (see the module docstring)."""
    dependent = {graph.image}
    for node in graph.nodes:
        if node.op_type in _SIZE_ONLY and node.domain in ("", "ai.onnx"):
            continue
        if not dependent.isdisjoint(_reads(node)):
            dependent.update(o for o in node.output if o)
    return dependent


def _from_grid(rank, grid):
    if rank == 4 and grid == (2, 3):
        return "chw", grid
    if rank == 4 and grid == (1, 2):
        return "hwc", grid
    return "other", grid


def _known(shape):
    return shape is not None and None not in shape[1:]


def _view(state, before, after):
    """The layout of a Reshape-like view of a tensor laid out as ``state`` (see the docstring)."""
    layout, grid = state
    if not (_known(before) and _known(after)) or before[0] != after[0]:
        return OTHER
    rank_in, rank = len(before), len(after)
    if rank == 2:
        return "vector", None
    if tuple(before) == tuple(after):
        return state
    if grid is not None:
        h, w = grid
        if w == rank_in - 1 and rank >= 3 and tuple(after[-2:]) == tuple(before[-2:]):
            return _from_grid(rank, (rank - 2, rank - 1))
        if rank > w and tuple(after[:w + 1]) == tuple(before[:w + 1]):
            return _from_grid(rank, grid)
    if layout == "chw" and rank == 3 and tuple(after[:2]) == tuple(before[:2]):
        return _DT, None
    if layout == "hwc" and rank == 3 and after[1] == before[1] * before[2] and after[2] == before[3]:
        return "tokens", None
    if layout == "vector" and rank == 4:
        if tuple(after[2:]) == (1, 1) and after[1] == before[1]:
            return "chw", (2, 3)
        if tuple(after[1:3]) == (1, 1) and after[3] == before[1]:
            return "hwc", (1, 2)
    return OTHER


def _transpose(state, perm):
    layout, grid = state
    perm = list(perm)
    if layout in (_DT, "tokens") and perm == [0, 2, 1]:
        return ("tokens" if layout == _DT else _DT), None
    if grid is None or not set(grid) <= set(range(len(perm))):
        return OTHER
    h, w = perm.index(grid[0]), perm.index(grid[1])
    if w != h + 1:
        return OTHER
    if perm[0] != 0:
        return "other", (h, w)
    return _from_grid(len(perm), (h, w))


def _pick(candidates, out_shape):
    """The state of the varying input that shapes the output: full shape first, a specific layout
    before "other"."""
    def score(item):
        state, shape = item
        full = shape is not None and out_shape is not None and tuple(shape) == tuple(out_shape)
        rank = shape is not None and out_shape is not None and len(shape) == len(out_shape)
        return (full, rank, state[0] in _SPECIFIC)
    best = max(candidates, key=score) if candidates else None
    if best is None or not score(best)[1]:
        return OTHER
    return best[0]


def _state(node, ins, out_shape):
    """The (layout, grid) of ``node``'s outputs from its varying inputs ``ins`` [(input index, state, shape)]."""
    from .adjoint._emit import attr

    op = node.op_type
    first, shape = ins[0][1], ins[0][2]
    rank = len(out_shape) if out_shape is not None else None
    if op in _MAP_OPS:
        return ("chw", (2, 3)) if rank == 4 else OTHER
    if op in _BROADCAST_OPS:
        return _pick([(s, sh) for _, s, sh in ins], out_shape)
    if op in VIEW_OPS - {"Transpose"}:
        return _view(first, shape, out_shape)
    if op == "Transpose":
        perm = attr(node, "perm")
        if perm is None and shape is not None:
            perm = list(range(len(shape)))[::-1]
        return OTHER if perm is None else _transpose(first, perm)
    if op in _REDUCE_OPS:
        if attr(node, "keepdims", 1) and rank is not None and shape is not None and rank == len(shape):
            return first
        return _view(first, shape, out_shape) if rank == 2 else OTHER
    if op == "MatMul":
        if len(ins) > 1 or ins[0][0] != 0 or first[0] not in ("hwc", "tokens", "vector"):
            return OTHER
        return first if shape is not None and rank == len(shape) else OTHER
    if op == "Gemm":
        return ("vector", None) if ins[0][0] == 0 and not attr(node, "transA", 0) else OTHER
    if op == "Gather" and rank is not None and shape is not None and rank < len(shape):
        return _view(first, shape, out_shape)
    if op in _KEEP_OPS:
        return first if rank is None or shape is None or rank == len(shape) else OTHER
    return first if shape is not None and out_shape is not None and tuple(shape) == tuple(out_shape) else OTHER


def track_layouts(graph, dependent, shapes) -> dict:
    """``{tensor: (layout, grid)}`` for every dependent tensor, for the shapes of one input size.

    ``layout`` is one of LAYOUTS or "dt" (an (N, D, T) view, reported as "other")."""
    states = {graph.image: ("chw", (2, 3))}
    for node in graph.nodes:
        outs = [o for o in node.output if o in dependent]
        if not outs:
            continue
        ins = [(i, states[t], shapes.get(t)) for i, t in enumerate(node.input) if t in states]
        if not ins:  # a dependent tensor read only inside a subgraph (If, Loop)
            for o in outs:
                states[o] = OTHER
            continue
        for o in outs:
            states[o] = _state(node, ins, shapes.get(o))
    return states
