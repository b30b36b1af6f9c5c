"""The cases of the ONNX gradient-rule tests: tiny models built with onnx.helper (image batch
"x" -> operator(s) -> Flatten to "y"), one per operator or operator variant. Inputs are
random normal, so kinks (ReLU at 0, ties of a max) lie almost surely farther than h away.
A case's seed is its place in the sorted names of all cases.

``POINTWISE`` names the activations, arithmetic, softmax and matrix products, normalisation
and reductions; ``SPATIAL`` the selecting, repeating, padding, resizing and transposed
convolution cases.
"""
import numpy as np
from onnx import TensorProto, helper

import onnx_models as om
from onnx_rule_helpers import F32, SHAPE, build_model, i64


# --------------------------------------------------------------------------- the cases
def unary(op, scale=1.0, shift=0.0, **attrs):
    def build(g):
        x = "x" if scale == 1.0 else g.op("Mul", ["x", g.const(F32(scale))])
        x = x if shift == 0.0 else g.op("Add", [x, g.const(F32(shift))])
        return g.op(op, [x], **attrs)
    return build


def positive(g, x="x"):
    return g.op("Add", [g.op("Abs", [x]), g.const(F32(0.5))])


def mixed(g, channels=3):
    """x plus a per-channel mix of x (so that channels interact), still batch-independent."""
    total = g.op("ReduceSum", ["x", g.const(i64(1))], keepdims=1)
    return g.op("Add", ["x", g.op("Mul", [total, g.weight(channels, 1, 1)])])


def reduce(op, axes, keepdims, opset, noop=None):
    def build(g):
        x = positive(g) if op in ("ReduceLogSumExp",) else "x"
        attrs = {"keepdims": keepdims}
        if noop is not None:
            attrs["noop_with_empty_axes"] = noop
        if op == "ReduceSum" or opset >= 18:
            inputs = [x, g.const(i64(*axes))] if axes else [x]
            return g.op(op, inputs, **attrs)
        return g.op(op, [x], axes=list(axes), **attrs)
    return build, opset


def attention(g):
    tokens = g.op("Transpose", [g.op("Reshape", ["x", g.const(i64(0, 3, 20))])], perm=[0, 2, 1])  # (N, 20, 3)
    q, k, v = (g.op("MatMul", [tokens, g.weight(3, 4)]) for _ in range(3))
    scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]), g.const(F32(2.0))])
    return g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])


def shape_subgraph(g):
    """Flatten as torch writes it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape; and a Gather
    whose (scalar) index is computed from the shape, not a constant."""
    n = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", ["x"]), g.const(np.int64(0))], axis=0), g.const(i64(0))])
    flat = g.op("Reshape", ["x", g.op("Concat", [n, g.const(i64(-1))], axis=0)])
    last = g.op("Sub", [g.op("Gather", [g.op("Shape", ["x"]), g.const(np.int64(3))], axis=0), g.const(np.int64(1))])
    picked = g.op("Gather", ["x", last], axis=3)  # x[..., -1] with the index computed: (N, 3, 4)
    return g.op("Concat", [flat, g.op("Flatten", [picked])], axis=1)


def integer_side_paths(g):
    """ArgMax, Equal, Size, Shape and casts to int feed a float factor: they carry no adjoint."""
    first = g.op("Cast", [g.op("Equal", [g.op("ArgMax", ["x"], axis=1, keepdims=1), g.const(i64(0))])],
                 to=TensorProto.FLOAT)
    size = g.op("Cast", [g.op("Size", [g.op("Gather", ["x", g.const(np.int64(0))], axis=3)])], to=TensorProto.FLOAT)
    size = g.op("Div", [size, g.op("Cast", [g.op("Gather", [g.op("Shape", ["x"]), g.const(np.int64(0))])],
                                   to=TensorProto.FLOAT)])  # 12 whatever the batch
    steps = g.op("Cast", [g.op("Cast", [g.op("Mul", ["x", g.const(F32(3))])], to=TensorProto.INT64)],
                 to=TensorProto.FLOAT)
    return g.op("Add", [g.op("Mul", [g.op("Mul", ["x", first]), g.op("Mul", [size, g.const(F32(0.01))])]),
                        g.op("Mul", [g.op("Tanh", ["x"]), steps])])


def _half_width(g):
    return g.op("Div", [g.op("Slice", [g.op("Shape", ["x"]), g.const(i64(3)), g.const(i64(4))]), g.const(i64(2))])


def _like_x(g, last):
    """The shape of x with its last axis ``last`` long, computed as torch would compute it."""
    return g.op("Concat", [g.op("Slice", [g.op("Shape", ["x"]), g.const(i64(0)), g.const(i64(3))]),
                           g.const(i64(last))], axis=0)


def resize(mode, transform, *, scales=None, sizes=None, opset=17, axes=None, **attrs):
    def build(g):
        inputs = ["x", ""]
        inputs.append(g.const(np.array(scales, F32)) if scales is not None else "")
        if sizes is not None:
            inputs.append(g.const(i64(*sizes)))
        extra = {"axes": axes} if axes else {}
        return g.op("Resize", inputs, mode=mode, coordinate_transformation_mode=transform, **extra, **attrs)
    return build, opset


CASES = {
    # activations
    "HardSwish": unary("HardSwish", scale=3.0),
    "HardSigmoid": unary("HardSigmoid", scale=3.0, alpha=0.3, beta=0.4),
    "Erf": unary("Erf"),
    "Gelu_none": (unary("Gelu", scale=2.0), 20),
    "Gelu_tanh": (unary("Gelu", scale=2.0, approximate="tanh"), 20),
    "Softplus": unary("Softplus", scale=2.0),
    "Softsign": unary("Softsign", scale=2.0),
    "Elu": unary("Elu", alpha=0.7),
    "Selu": unary("Selu"),
    "Celu": unary("Celu", alpha=0.6),
    "Mish": (unary("Mish", scale=2.0), 18),
    "ThresholdedRelu": unary("ThresholdedRelu", alpha=0.3),
    "LeakyRelu_negative_alpha": unary("LeakyRelu", alpha=-0.3),
    "PRelu_channel": lambda g: g.op("PRelu", ["x", g.weight(3, 1, 1)]),
    "PRelu_width": lambda g: g.op("PRelu", ["x", g.weight(5)]),
    "PRelu_scalar_like": lambda g: g.op("PRelu", ["x", g.const(np.array([0.25], F32))]),
    # arithmetic
    "Mul_broadcast_both": lambda g: g.op("Mul", [g.op("Mul", ["x", g.weight(1, 4, 1)]),
                                                 g.op("ReduceMean", ["x"], axes=[3], keepdims=1)]),
    "Div_both": lambda g: g.op("Div", ["x", g.op("Add", [g.op("Mul", ["x", "x"]), g.const(F32(1))])]),
    "Div_broadcast_denominator": lambda g: g.op("Div", [g.weight(1, 1, 5), positive(g, g.op(
        "ReduceMax", ["x"], axes=[1, 2], keepdims=1))]),
    "Sub_broadcast": lambda g: g.op("Sub", [g.op("ReduceSum", ["x", g.const(i64(2))], keepdims=1), "x"]),
    "Pow_square": lambda g: g.op("Pow", ["x", g.const(F32(2.0))]),
    "Pow_cube_int_exponent": lambda g: g.op("Pow", ["x", g.const(np.int64(3))]),
    "Pow_root": lambda g: g.op("Pow", [positive(g), g.const(F32(0.5))]),
    "Pow_varying_exponent": lambda g: g.op("Pow", [positive(g), g.op("Tanh", ["x"])]),
    "Pow_exponent_only": lambda g: g.op("Pow", [g.const(np.full((1, 4, 1), 1.7, F32)), "x"]),
    "Sqrt": lambda g: g.op("Sqrt", [positive(g)]),
    "Exp": unary("Exp"),
    "Log": lambda g: g.op("Log", [positive(g)]),
    "Abs": unary("Abs"),
    "Reciprocal": lambda g: g.op("Reciprocal", [positive(g)]),
    "Sin_Cos": lambda g: g.op("Add", [g.op("Sin", ["x"]), g.op("Cos", [g.op("Mul", ["x", g.const(F32(2))])])]),
    "Where_both_values": lambda g: g.op("Add", [
        g.op("Where", [g.op("Greater", ["x", g.const(F32(0))]), g.op("Mul", ["x", g.const(F32(2))]), g.weight(5)]),
        g.op("Where", [g.op("Less", [g.weight(1, 4, 1), g.const(F32(0))]), g.weight(1), g.op("Tanh", ["x"])])]),
    "Cast_float_roundtrip": lambda g: g.op("Cast", [g.op("Mul", [g.op("Cast", ["x"], to=TensorProto.DOUBLE),
                                                               g.const(np.float64(1.5))])], to=TensorProto.FLOAT),
    "Max_Min_elementwise": lambda g: g.op("Add", [g.op("Max", ["x", g.weight(1, 4, 1), g.op("Neg", ["x"])]),
                                                  g.op("Min", ["x", g.const(F32(0.3))])]),
    "Mean_variadic": lambda g: g.op("Mean", ["x", g.op("Tanh", ["x"]), g.weight(5)]),
    "Floor_blocks_nothing": lambda g: g.op("Add", ["x", g.op("Floor", [g.op("Mul", ["x", g.const(F32(3))])])]),
    "integer_side_paths": integer_side_paths,
    # softmax and matrix products
    "Softmax_axis1": lambda g: g.op("Softmax", [mixed(g)], axis=1),
    "Softmax_axis2": lambda g: g.op("Softmax", ["x"], axis=2),
    "LogSoftmax_axis_neg1": lambda g: g.op("LogSoftmax", ["x"], axis=-1),
    "attention": attention,
    "MatMul_weight_4d": lambda g: g.op("MatMul", ["x", g.weight(5, 6)]),
    "MatMul_broadcast_batch": lambda g: g.op("MatMul", ["x", g.weight(3, 5, 2)]),
    "MatMul_left_weight": lambda g: g.op("MatMul", [g.weight(2, 4), "x"]),
    "MatMul_both_vary": lambda g: g.op("MatMul", ["x", g.op("Transpose", ["x"], perm=[0, 1, 3, 2])]),
    "MatMul_both_vary_broadcast": lambda g: g.op("MatMul", [g.op("ReduceMean", ["x"], axes=[1], keepdims=1),
                                                            g.op("Transpose", ["x"], perm=[0, 1, 3, 2])]),
    "MatMul_vector_right": lambda g: g.op("MatMul", ["x", g.weight(5)]),
    "MatMul_vector_left": lambda g: g.op("MatMul", [g.weight(4), "x"]),
    "MatMul_vector_varies": lambda g: g.op("MatMul", [g.op("Reshape", [g.op("ReduceSum", ["x", g.const(i64(1, 2))],
                                                                            keepdims=0), g.const(i64(-1, 1, 1, 5))]),
                                                      g.op("Transpose", ["x"], perm=[0, 1, 3, 2])]),
    # normalisation
    "LayerNorm_last_axis": (lambda g: g.op("LayerNormalization", [mixed(g), g.weight(5), g.weight(5)]), 17),
    "LayerNorm_from_axis1_no_bias": (lambda g: g.op("LayerNormalization", ["x", g.weight(3, 4, 5)], axis=1,
                                                    epsilon=1e-3), 17),
    "LayerNorm_axis2_tokens": (lambda g: g.op("LayerNormalization", [g.op("Transpose", [
        g.op("Reshape", ["x", g.const(i64(0, 3, 20))])], perm=[0, 2, 1]), g.weight(3), g.weight(3)], axis=-1), 17),
    "InstanceNormalization": lambda g: g.op("InstanceNormalization", [mixed(g), g.weight(3), g.weight(3)]),
    "GroupNorm_opset18_per_group": (lambda g: g.op("GroupNormalization", ["x", g.weight(3), g.weight(3)],
                                                   num_groups=3), 18, (6, 4, 5)),
    "GroupNorm_opset21_per_channel": (lambda g: g.op("GroupNormalization", [mixed(g, 6), g.weight(6), g.weight(6)],
                                                     num_groups=2, epsilon=1e-3), 21, (6, 4, 5)),
    # reductions
    "ReduceSum_keep": reduce("ReduceSum", (2, 3), 1, 17),
    "ReduceSum_drop_negative_axis": reduce("ReduceSum", (-1,), 0, 17),
    "ReduceSum_noop_empty": reduce("ReduceSum", (), 1, 17, noop=1),
    "ReduceMean_attr": reduce("ReduceMean", (2, 3), 0, 17),
    "ReduceMean_input": reduce("ReduceMean", (1, -1), 1, 18),
    "ReduceMax_attr": reduce("ReduceMax", (1,), 1, 17),
    "ReduceMax_input": reduce("ReduceMax", (2, 3), 0, 18),
    "ReduceMin_input": reduce("ReduceMin", (3,), 1, 18),
    "ReduceL2": reduce("ReduceL2", (2, 3), 0, 18),
    "ReduceL1": reduce("ReduceL1", (1,), 1, 17),
    "ReduceSumSquare": reduce("ReduceSumSquare", (3,), 0, 18),
    "ReduceLogSumExp": reduce("ReduceLogSumExp", (1, 3), 1, 17),
    "ReduceMean_noop_empty_input": reduce("ReduceMean", (), 0, 18, noop=1),
    # selecting, repeating, padding
    "Slice_rows": lambda g: g.op("Slice", ["x", g.const(i64(1)), g.const(i64(3)), g.const(i64(2))]),
    "Slice_reversed_clamped": lambda g: g.op("Slice", ["x", g.const(i64(100)), g.const(i64(-100)), g.const(i64(-1)),
                                                       g.const(i64(-1))]),
    "Slice_strided_two_axes": lambda g: g.op("Slice", ["x", g.const(i64(0, -1)), g.const(i64(2 ** 62, -4)),
                                                       g.const(i64(3, 2)), g.const(i64(2, -2))]),
    "Slice_negative_stride_3": lambda g: g.op("Slice", ["x", g.const(i64(-1)), g.const(i64(-(2 ** 63))),
                                                        g.const(i64(3)), g.const(i64(-3))]),
    "Slice_computed_starts": lambda g: g.op("Slice", [  # torch.chunk on a dynamic graph
        "x", _half_width(g), g.op("Mul", [_half_width(g), g.const(i64(2))]), g.const(i64(3))]),
    "Slice_folded_steps": lambda g: g.op("Slice", ["x", g.const(i64(-1)), g.const(i64(-(2 ** 63))), g.const(i64(2)),
                                                   g.op("Neg", [g.const(i64(1))])]),
    "Pad_folded_pads": lambda g: g.op("Pad", ["x", g.op("Concat", [g.const(i64(0, 0, 1, 2)), g.op(
        "Add", [g.const(i64(0, 0, 1, 1)), g.const(i64(0, 0, 1, 0))])], axis=0)], mode="reflect"),
    "Split_input_sizes": lambda g: g.op("Concat", [
        g.op("Mul", [o, g.const(F32(k + 1))]) for k, o in enumerate(_split(g, ["x", g.const(i64(2, 3))], 2, axis=3))],
        axis=3),
    "Split_one_output_used": lambda g: g.op("Tanh", [_split(g, ["x", g.const(i64(1, 2))], 2, axis=1)[1]]),
    "Split_num_outputs": (lambda g: g.op("Add", _split(g, ["x"], 2, axis=2, num_outputs=2)), 18),
    "Gather_class_token": lambda g: g.op("Gather", ["x", g.const(np.int64(0))], axis=1),
    "Gather_repeated_negative": lambda g: g.op("Gather", ["x", g.const(i64(4, -1, 0, 0, 2))], axis=3),
    "Gather_2d_indices": lambda g: g.op("Gather", ["x", g.const(np.array([[0, 2], [-1, 1]], np.int64))], axis=2),
    "Gather_many_runs": lambda g: g.op("Gather", ["x", g.const(i64(0, 2, 1, 3, 0, 2, 1, 3, 2, 0, 3, 1))], axis=2),
    "GatherElements_argmax": lambda g: g.op("Add", [
        g.op("GatherElements", ["x", g.op("ArgMax", ["x"], axis=3, keepdims=1)], axis=3),
        g.op("GatherElements", ["x", g.op("Expand", [g.const(np.array([[[[1, 1], [-2, 0], [0, 0], [4, 2]]]], np.int64)),
                                                     _like_x(g, last=2)])], axis=3)]),
    "Expand": lambda g: g.op("Mul", [g.op("Expand", [g.op("ReduceMean", ["x"], axes=[3], keepdims=1),
                                                      g.const(i64(1, 1, 1, 5))]), g.weight(5)]),
    "Expand_rank_up": lambda g: g.op("Transpose", [g.op("Expand", [  # (N, 4, 5) -> (2, N, 4, 5) -> (N, 2, 4, 5)
        g.op("ReduceSum", ["x", g.const(i64(1))], keepdims=0), g.const(i64(2, 1, 1, 1))])], perm=[1, 0, 2, 3]),
    "Tile": lambda g: g.op("Tile", ["x", g.const(i64(1, 2, 1, 3))]),
    "Pad_constant": lambda g: g.op("Pad", ["x", g.const(i64(0, 1, 0, 2, 0, 0, 2, 1)), g.const(F32(0.5))]),
    "Pad_reflect": lambda g: g.op("Pad", ["x", g.const(i64(0, 0, 2, 3, 0, 0, 3, 1))], mode="reflect"),
    "Pad_edge": lambda g: g.op("Pad", ["x", g.const(i64(0, 1, 2, 0, 0, 0, 1, 3))], mode="edge"),
    "Pad_wrap_many_periods": (lambda g: g.op("Pad", ["x", g.const(i64(0, 0, 7, 1, 0, 0, 2, 11))], mode="wrap"), 19),
    "Pad_axes_input": (lambda g: g.op("Pad", ["x", g.const(i64(1, 2, 2, 3)), "", g.const(i64(-1, 2))],
                                      mode="reflect"), 18),
    "CumSum_reverse_exclusive": lambda g: g.op("CumSum", ["x", g.const(np.int64(3))], reverse=1, exclusive=1),
    "DepthToSpace_DCR": (lambda g: g.op("DepthToSpace", ["x"], blocksize=2), 17, (8, 2, 3)),
    "DepthToSpace_CRD": (lambda g: g.op("DepthToSpace", ["x"], blocksize=2, mode="CRD"), 17, (8, 2, 3)),
    "SpaceToDepth": (lambda g: g.op("SpaceToDepth", ["x"], blocksize=2), 17, (2, 4, 6)),
    "shape_subgraph": shape_subgraph,
    # resizing and transposed convolution
    "Resize_nearest_torch": resize("nearest", "asymmetric", scales=[1, 1, 2, 2], nearest_mode="floor"),
    "Resize_nearest_half_pixel_sizes": resize("nearest", "half_pixel", sizes=[7, 8], axes=[2, 3], opset=18),
    "Resize_nearest_prefer_ceil": resize("nearest", "half_pixel", scales=[1, 1, 1.5, 3],
                                         nearest_mode="round_prefer_ceil"),
    "Resize_linear_half_pixel": resize("linear", "half_pixel", scales=[1, 1, 2, 1.5]),
    "Resize_linear_pytorch_half_pixel": resize("linear", "pytorch_half_pixel", scales=[1, 1, 2, 2]),
    "Resize_linear_align_corners": resize("linear", "align_corners", sizes=[7, 9], axes=[2, 3], opset=18),
    "Resize_linear_downsample": resize("linear", "pytorch_half_pixel", sizes=[3, 1], axes=[2, 3], opset=19),
    "Resize_linear_asymmetric_axes": resize("linear", "asymmetric", scales=[2.5, 1.6], axes=[2, 3], opset=18),
    "Resize_cubic": resize("cubic", "half_pixel", scales=[1, 1, 2, 1.5]),
    "Resize_cubic_exclude_outside": resize("cubic", "align_corners", sizes=[6, 9], axes=[2, 3], opset=18,
                                           exclude_outside=1, cubic_coeff_a=-0.5),
    "ConvTranspose_stride_pads_output_padding": lambda g: g.op(
        "ConvTranspose", ["x", g.weight(3, 2, 3, 3), g.weight(2)], strides=[2, 3], pads=[1, 0, 0, 1],
        output_padding=[1, 2]),
    "ConvTranspose_dilations": lambda g: g.op(  # groups: the reference evaluator mishandles them (see torch tests)
        "ConvTranspose", ["x", g.weight(3, 2, 2, 3)], dilations=[2, 1], strides=[1, 2], pads=[0, 1, 1, 0]),
}

_FIRST_SPATIAL = list(CASES).index("Slice_rows")
POINTWISE = sorted(list(CASES)[:_FIRST_SPATIAL])
SPATIAL = sorted(list(CASES)[_FIRST_SPATIAL:])


def _split(g, inputs, count, **attrs):
    g.count += 1
    outputs = [f"split{g.count}_{k}" for k in range(count)]
    g.nodes.append(helper.make_node("Split", inputs, outputs, name=f"split_{g.count}", **attrs))
    return outputs


def case_model(name):
    spec = CASES[name] if isinstance(CASES[name], tuple) else (CASES[name],)
    build, opset, shape = (list(spec) + [17, SHAPE][len(spec) - 1:])[:3]
    g = om.Graph(seed=sorted(CASES).index(name))
    return build_model(g, build(g), opset, shape), shape
