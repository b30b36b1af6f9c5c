"""The ONNX backend's gradient rules, operator by operator.

Each case is a tiny model built with onnx.helper (image batch "x" -> operator(s) -> Flatten
to "y"). Its input gradient, computed by the backend's adjoint graph on ONNX Runtime in
float32, is compared with central finite differences of a float64 copy of the same graph
run by ``onnx.reference.ReferenceEvaluator``: a reference independent of ONNX Runtime and of
the rules. Every case's graph is batch-independent, so all perturbed copies of the input
run as one batch. Inputs are random normal, so kinks (ReLU at 0, ties of a max) lie almost
surely farther than h away.

Torch-exported modules using these operators are checked against torch autograd, and the
guided/deconvnet rules on the rectifiers against the rules written out.
"""
import io
import math
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402

import convscope  # noqa: E402
from convscope.testing import relu_rule  # noqa: E402

import onnx_models as om  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")

SHAPE = (3, 4, 5)
F32 = np.float32


def i64(*values):
    return np.array(values, np.int64)


# --------------------------------------------------------------------------- the reference
def float64_copy(model):
    """The same graph in float64 (Resize's scales and roi stay float32, as the operator asks)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    keep = {n.input[i] for n in g.node if n.op_type == "Resize" for i in (1, 2) if len(n.input) > i}
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in keep:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    opset = next(o.version for o in copy.opset_import if o.domain == "")
    for node in g.node:
        if node.op_type == "GroupNormalization" and opset >= 21:
            node.attribute.append(helper.make_attribute("stash_type", TensorProto.DOUBLE))  # else float32 inside
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return copy


class Erf(OpRun):
    """The reference's Erf rounds to float32; this one keeps float64."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class Gelu(OpRun):
    op_domain = ""

    def _run(self, x, approximate="none"):
        if approximate == "tanh":
            return (0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),)
        return (0.5 * x * (1 + np.vectorize(math.erf, otypes=[x.dtype])(x / np.sqrt(2))),)


def fd_gradient(model, x, seed, h=1e-5):
    """Central differences of <f(x), seed> in float64, every element of every image in one batch."""
    ref = ReferenceEvaluator(float64_copy(model), new_ops=[Erf, Gelu])
    n, size = len(x), x[0].size
    eye = np.eye(size).reshape(size, *x.shape[1:]) * h
    base = x.astype(np.float64)[:, None]
    batch = np.concatenate([(base + eye).reshape(-1, *x.shape[1:]), (base - eye).reshape(-1, *x.shape[1:])])
    out = ref.run(None, {"x": batch})[0].reshape(2, n, size, -1)
    f = np.einsum("pnsk,nk->pns", out, seed.astype(np.float64))
    centre = ref.run(None, {"x": x.astype(np.float64)})[0]
    return ((f[0] - f[1]) / (2 * h)).reshape(x.shape), centre


def rel_l2(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / max(np.linalg.norm(want), 1e-30))


def check_gradient(model, *, shape=SHAPE, seed=0, tol=1e-3, x=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *shape)).astype(F32) if x is None else x
    backend = convscope.load(model, probabilities=True)
    out = backend.forward(x)
    r = rng.standard_normal(out.shape).astype(F32)
    got = backend.gradient(x, {"output": r})["input"]
    want, centre = fd_gradient(model, x, r)
    assert rel_l2(out, centre) < 1e-4, "ONNX Runtime and the reference evaluator disagree on the forward pass"
    assert np.linalg.norm(want) > 1e-6, "the case has no gradient to check"
    error = rel_l2(got, want)
    assert error < tol, f"relative L2 error {error:.2e}"
    return got


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


def build_model(g, out, opset=17, shape=SHAPE):
    """What ``om.Graph.model`` builds, checked unless the checker refuses the opset's own schema
    (GroupNormalization-18 is deprecated in onnx >= 1.16, yet ONNX Runtime still runs it)."""
    flat = g.op("Flatten", [out], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])
    y = helper.make_tensor_value_info(flat, TensorProto.FLOAT, ["N", "K"])
    graph = helper.make_graph(g.nodes, "test", [x], [y], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if not any(n.op_type == "GroupNormalization" for n in g.nodes) or opset >= 21:
        onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_float64_finite_differences(name):
    model, shape = case_model(name)
    check_gradient(model, shape=shape, seed=sorted(CASES).index(name))


# --------------------------------------------------------------------------- beyond the reference
def test_pad_with_negative_pads_crops_and_the_crop_gets_no_gradient():
    """The reference evaluator cannot crop with Pad; the rule is checked against the slicing it means."""
    g = om.Graph()
    model = build_model(g, g.op("Pad", ["x", g.const(i64(0, 1, -1, 2, 0, 0, 2, -2))]))
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(F32)
    backend = convscope.load(model)
    out = backend.forward(x)
    assert out.shape == (2, 4 * 5 * 5)
    seed = np.random.default_rng(1).standard_normal(out.shape).astype(F32)
    got = backend.gradient(x, {"output": seed})["input"]
    dy = seed.reshape(2, 4, 5, 5)  # channels: 1 padded before; H: 1 cut, 2 padded at the end; W: 2 before, 2 cut
    want = np.zeros_like(x)
    want[:, :, 1:, :3] = dy[:, 1:, :3, 2:]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_nonzero_on_the_side_carries_no_adjoint():
    """y = x * (number of positive elements of a weight-free tensor) / 1000: the count is an
    integer path (NonZero -> Shape -> Gather -> Cast) and only the factor reaches x."""
    g = om.Graph()
    found = g.op("NonZero", [g.op("Greater", ["x", g.const(F32(0))])])
    count = g.op("Cast", [g.op("Gather", [g.op("Shape", [found]), g.const(np.int64(1))])], to=TensorProto.FLOAT)
    model = build_model(g, g.op("Mul", ["x", g.op("Mul", [count, g.const(F32(1e-3))])]))
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(F32)
    seed = np.random.default_rng(1).standard_normal((1, x.size)).astype(F32)
    got = convscope.load(model).gradient(x, {"output": seed})["input"]
    np.testing.assert_allclose(got, seed.reshape(x.shape) * (x > 0).sum() * 1e-3, rtol=1e-5)


def test_operators_without_a_rule_are_all_named_and_gradient_free_methods_still_run():
    g = om.Graph()
    hard = g.op("Hardmax", [g.op("Reshape", ["x", g.const(i64(0, -1))])], axis=1)
    values = g.nodes[-1].output[0]
    top = g.op("TopK", ["x", g.const(i64(2))], ["top_values", "top_indices"], axis=3)
    out = g.op("Add", [g.op("Flatten", [top]), g.op("Slice", [values, g.const(i64(0)), g.const(i64(24)),
                                                               g.const(i64(1))])])
    model = build_model(g, out)
    assert hard == values
    backend = convscope.load(model)
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(F32)
    assert backend.forward(x).shape == (2, 24)
    with pytest.raises(convscope.backends.onnxruntime.UnsupportedOperatorError,
                       match=r"No gradient rule for 2 operator\(s\) on the gradient path \(Hardmax, TopK\): "
                             r"Hardmax \(node 'hardmax_\d+'.*TopK \(node 'topk_\d+' with output 'top_values'\).*"
                             r"gradient-free methods .* still work"):
        backend.gradient(x, {"output": np.ones((2, 24), F32)})
    assert "Hardmax" not in convscope.backends.onnxruntime.adjoint.supported_operators()
    np.testing.assert_array_equal(backend.activations(x, ["top_values"])["top_values"].shape, (2, 3, 4, 2))


# --------------------------------------------------------------------------- rectifiers under the ReLU rules
RECTIFIERS = {
    # name: (builder of the unit on t, its slope below 0 for standard gradients, upper bound)
    "LeakyRelu": (lambda g, t: g.op("LeakyRelu", [t], alpha=0.2), lambda pre: 0.2, None),
    "PRelu": (lambda g, t: g.op("PRelu", [t, g.const(np.array([0.1, -0.3, 0.5, 0.0], F32).reshape(4, 1, 1))]),
              lambda pre: np.array([0.1, -0.3, 0.5, 0.0], F32).reshape(1, 4, 1, 1), None),
    "ReLU6": (lambda g, t: g.op("Clip", [t, g.const(F32(0)), g.const(F32(6))]), lambda pre: 0.0, 6.0),
}


def _rectifier_model(name):
    g = om.Graph(seed=3)
    pre = g.op("Mul", [g.conv("x"), g.const(F32(8.0))], ["pre"])  # large: many inputs beyond 6 for ReLU6
    post = RECTIFIERS[name][0](g, pre)
    g.nodes[-1].output[0] = "post"
    return g.model(g.conv("post"))


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
@pytest.mark.parametrize("name", sorted(RECTIFIERS))
def test_rectifiers_follow_the_relu_rule_by_their_positive_part(name, rule):
    """standard: exact; guided: max(dy, 0) where the unit is open (0 < x < upper), the negative
    slope zeroed; deconvnet: max(dy, 0)."""
    backend = convscope.load(_rectifier_model(name))
    x = np.random.default_rng(0).standard_normal((2, om.C, om.H, om.W)).astype(F32)
    seed = np.random.default_rng(1).standard_normal(backend.forward(x).shape).astype(F32)
    g = backend.gradient(x, {"output": seed}, wrt=["pre", "post"], rule=rule)
    pre, dy = g.activations["pre"], g["post"]
    _, slope, upper = RECTIFIERS[name]
    if upper is not None:
        assert (pre > upper).mean() > 0.1
    if rule == "standard":
        open_ = (pre > 0) & (pre < (upper or np.inf))
        want = np.where(open_, dy, np.where(pre <= 0, slope(pre) * dy, 0.0))
    else:
        want = relu_rule(rule, pre, dy, upper=upper)
    np.testing.assert_allclose(g["pre"], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("op", ["HardSwish", "Gelu", "Elu"])
def test_smooth_activations_pass_the_plain_gradient_under_guided_rules(op):
    g = om.Graph(seed=4)
    act = g.op(op, [g.conv("x")])
    model = g.model(g.op("Relu", [g.conv(act)]), opset=20)
    backend = convscope.load(model)
    x = np.random.default_rng(0).standard_normal((2, om.C, om.H, om.W)).astype(F32)
    seed = {"output": np.random.default_rng(1).standard_normal(backend.forward(x).shape).astype(F32)}
    inner = g.nodes[-3].output[0]  # the Relu's input: below it, only the smooth unit
    guided, plain = (backend.gradient(x, seed, wrt=["input", inner], rule=r) for r in ("guided", "standard"))
    np.testing.assert_allclose(guided["input"], backend.gradient(x, {inner: guided[inner]})["input"], rtol=1e-5,
                               atol=1e-7)
    assert not np.allclose(guided["input"], plain["input"])


# --------------------------------------------------------------------------- torch-exported models
def _torch_modules():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Activations(nn.Module):
        """MobileNetV3-style: Hardswish, a squeeze-excite gate with Hardsigmoid on x.mean((2, 3)),
        GELU (both forms), SiLU, ELU, Softplus, LeakyReLU, PReLU and ReLU6."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.squeeze, self.excite = nn.Linear(8, 4), nn.Linear(4, 8)
            self.mix = nn.Conv2d(8, 8, 1)
            self.prelu = nn.PReLU(8, 0.2)
            self.head = nn.Linear(8 * 36, 5)

        def forward(self, x):
            h = nn.functional.hardswish(self.conv(x))
            gate = F.hardsigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3))))))
            h = h * gate[:, :, None, None]
            h = F.gelu(h) + F.gelu(self.mix(h), approximate="tanh") + F.silu(h) - F.elu(h, 0.5) + F.softplus(h)
            h = F.relu6(self.prelu(F.leaky_relu(h, 0.1)) * 3)
            return self.head(h.flatten(1))

    class Shapes(nn.Module):
        """LayerNorm over channels through a permute, torch.chunk, a channel shuffle, reflect and
        replicate padding, nearest and bilinear upsampling, and a grouped, dilated ConvTranspose2d."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
            self.dilated = nn.ConvTranspose2d(4, 4, 2, stride=1, padding=1, dilation=2)
            self.group_norm = nn.GroupNorm(2, 8)
            self.instance_norm = nn.InstanceNorm2d(4, affine=True)
            self.head = nn.Linear(4 * 8 * 8 + 8, 5)

        def forward(self, x):
            h = self.conv(x)
            h = self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            a, b = torch.chunk(h, 2, dim=1)
            h = torch.cat([torch.tanh(a), b * 2], dim=1)
            n, c, hh, ww = h.shape
            h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)  # channel shuffle
            h = self.group_norm(F.pad(h, (1, 2, 2, 1), mode="reflect"))[:, :, 1:-2, 2:-1]
            pooled = h.amax((2, 3))
            h = F.interpolate(h, scale_factor=2, mode="nearest")  # 12 x 12
            h = F.interpolate(h, size=(6, 6), mode="bilinear", align_corners=False)
            h = self.instance_norm(self.dilated(self.up(h)))  # 12 x 12 -> 10 x 10
            h = F.interpolate(F.pad(h, (1, 1, 0, 0), mode="replicate"), size=(8, 8), mode="bilinear",
                              align_corners=True)
            return self.head(torch.cat([h.flatten(1), pooled], 1))

    class TinyViT(nn.Module):
        """Patch embedding, class token concatenated in front, position embedding, pre-norm
        multi-head attention and a GELU MLP, the class token read as x[:, 0]."""

        def __init__(self, dim=8):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 2, stride=2)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 10, dim) * 0.1)
            self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
            self.head = nn.Linear(dim, 5)

        def attend(self, h, heads=2):  # as timm writes it
            n, t, d = h.shape
            q, k, v = self.qkv(h).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
            weights = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 9, dim)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
            t = t + self.attend(self.norm1(t))
            t = t + self.mlp(self.norm2(t))
            return self.head(self.norm3(t)[:, 0])

    return {"activations": Activations, "shapes": Shapes, "vit": TinyViT}


def _export(model, shape):
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["activations", "shapes", "vit"])
def test_torch_exported_models_match_torch_autograd(name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = _torch_modules()[name]().eval()
    shape = (3, 6, 6)
    backend = convscope.load(_export(module, shape))
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(F32)
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(F32)
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        y = module(xt)
        (want,) = torch.autograd.grad(y, xt, torch.from_numpy(seed))
    assert rel_l2(backend.forward(x), y.detach().numpy()) < 1e-5
    got = backend.gradient(x, {"output": seed})["input"]
    assert rel_l2(got, want.numpy()) < 1e-4


AT_OPSET_16 = ["Slice_strided_two_axes", "Slice_computed_starts", "Gather_2d_indices", "Gather_many_runs",
               "GatherElements_argmax", "Pad_edge", "Resize_nearest_torch", "Resize_cubic", "MatMul_vector_varies",
               "ReduceMax_attr", "ReduceMean_attr", "Tile", "Split_input_sizes", "Where_both_values",
               "Pow_varying_exponent", "DepthToSpace_CRD", "CumSum_reverse_exclusive", "ConvTranspose_stride_pads_output_padding"]


@pytest.mark.parametrize("name", AT_OPSET_16)
def test_rules_emit_what_the_oldest_opset_served_runs(name):
    """A model at opset 16 (the oldest the backend keeps) gets backward nodes valid at opset 16."""
    model, shape = case_model(name)
    model.opset_import[0].version = 16
    onnx.checker.check_model(model)
    check_gradient(model, shape=shape, seed=1)
