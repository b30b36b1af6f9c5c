"""Small ONNX graphs built with onnx.helper, one per operator the ONNX backend differentiates,
and the finite-difference check the tests run on them.

Each model takes an image batch "x" of shape (N, C, H, W) = (N, 4, 6, 6) and ends in a
Flatten to (N, K) scores "y", with the operator under test in between, fed by a Conv so
that its input is a mix of channels. Weights come from a fixed seed.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C, H, W = 4, 6, 6


class Graph:
    """Collects nodes and initializers; ``model()`` wraps them in a ModelProto."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, name=None):
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape, scale=0.5):
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type, inputs, outputs=None, **attrs):
        self.count += 1
        outputs = outputs or [f"t{self.count}"]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type.lower()}_{self.count}", **attrs))
        return outputs[0]

    def conv(self, x, c_in=C, c_out=C, **attrs):
        attrs = {k: v for k, v in {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **attrs}.items() if v is not None}
        group = attrs.get("group", 1)
        return self.op("Conv", [x, self.weight(c_out, c_in // group, *attrs["kernel_shape"]), self.weight(c_out)],
                       **attrs)

    def model(self, out, *, opset=17, batch="N", shape=(C, H, W), inputs_with_inits=False, ir_version=8, domains=(),
              flatten=True):
        if flatten:
            out = self.op("Flatten", [out], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *shape])
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, "K"])
        inputs = [x]
        if inputs_with_inits:  # as exporters for IR < 4 wrote them
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        graph = helper.make_graph(self.nodes, "test", inputs, [y], self.inits)
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
        onnx.checker.check_model(model)
        return model


def _pool(op, **attrs):
    def build(g):
        return g.op(op, [g.conv("x")], kernel_shape=[3, 3], **attrs)
    return build


def _add_broadcast(g):
    a = g.conv("x")
    return g.op("Add", [g.op("Add", [a, g.weight(1, C, 1, 1)]), g.op("Relu", [a])])


def _mul(g):
    a = g.conv("x")
    return g.op("Mul", [g.op("Mul", [a, a]), g.weight(C, 1, 1)])


def _matmul(g):
    a = g.op("Reshape", [g.conv("x"), g.const(np.array([0, C, H * W], np.int64))])
    gram = g.op("MatMul", [a, g.op("Transpose", [a], perm=[0, 2, 1])])  # both operands vary
    return g.op("MatMul", [gram, g.weight(C, 3)])


def _gemm(g):
    flat = g.op("Flatten", [g.conv("x")])
    hidden = g.op("Gemm", [flat, g.weight(5, C * H * W, scale=0.1), g.weight(5)], transB=1)
    # transA with a varying A: Gemm(A^T...) on the transposed activations
    return g.op("Gemm", [g.op("Transpose", [hidden], perm=[1, 0]), g.weight(5, 3), g.weight(3)],
                transA=1, alpha=0.5, beta=2.0)


def _gemm_large(g):
    """A weight over 1 MB that only a Gemm reads: sessions use the backend's array in place."""
    hidden = g.op("Gemm", [g.op("Flatten", [g.conv("x")]), g.weight(C * H * W, 2048, scale=0.05)])
    return g.op("MatMul", [g.op("Relu", [hidden]), g.weight(2048, 3, scale=0.05)])


def _clip(g):
    return g.op("Clip", [g.conv("x"), g.const(np.float32(0.0)), g.const(np.float32(0.5))])


def _concat(g):
    a = g.conv("x")
    return g.op("Concat", [a, g.op("Relu", [a]), "x"], axis=1)


def _softmax_logits(g):
    return g.op("Softmax", [g.op("Flatten", [g.conv("x")])], axis=1)


OPERATORS = {
    "Conv": lambda g: g.conv("x", strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2]),
    "Conv_flipped_dilated": lambda g: g.conv("x", dilations=[2, 1], pads=[2, 0, 1, 1], kernel_shape=[3, 2]),
    "Conv_grouped_same": lambda g: g.conv(g.conv("x"), group=2, strides=[2, 2], auto_pad="SAME_UPPER",
                                          pads=None, kernel_shape=[3, 3]),
    "Relu": lambda g: g.op("Relu", [g.conv("x")]),
    "Clip": _clip,
    "LeakyRelu": lambda g: g.op("LeakyRelu", [g.conv("x")], alpha=0.2),
    "MaxPool": _pool("MaxPool", strides=[2, 2], pads=[1, 1, 1, 1]),
    "MaxPool_disjoint_ceil": lambda g: g.op("MaxPool", [g.conv("x")], kernel_shape=[2, 2], strides=[2, 2],
                                            ceil_mode=1),
    "MaxPool_wide_by_indices": lambda g: g.op("MaxPool", [g.conv("x")], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
    "AveragePool": _pool("AveragePool", strides=[2, 2], pads=[1, 1, 1, 1]),
    "AveragePool_include_pad_ceil": _pool("AveragePool", strides=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1,
                                          ceil_mode=1),
    "GlobalAveragePool": lambda g: g.op("GlobalAveragePool", [g.conv("x")]),
    "BatchNormalization": lambda g: g.op("BatchNormalization", [g.conv("x"), g.weight(C), g.weight(C),
                                                                g.weight(C), g.const(np.full(C, 0.7, np.float32))],
                                         epsilon=1e-3),
    "Gemm": _gemm,
    "Gemm_large_shared": _gemm_large,
    "MatMul": _matmul,
    "Add": _add_broadcast,
    "Sum": lambda g: g.op("Sum", [g.conv("x"), "x", g.weight(1, 1, H, W)]),
    "Mul": _mul,
    "Concat": _concat,
    "Transpose": lambda g: g.op("Transpose", [g.conv("x")], perm=[0, 2, 3, 1]),
    "Reshape": lambda g: g.op("Reshape", [g.conv("x"), g.const(np.array([0, C * H, W], np.int64))]),
    "Flatten": lambda g: g.op("Flatten", [g.op("Unsqueeze", [g.conv("x"), g.const(np.array([2], np.int64))])]),
    "Dropout": lambda g: g.op("Dropout", [g.conv("x"), g.const(np.float32(0.5))]),
    "LRN": lambda g: g.op("LRN", [g.conv("x")], size=3, alpha=0.3, beta=0.75, bias=1.5),
    "LRN_wide": lambda g: g.op("LRN", [g.conv("x")], size=5, alpha=0.5, beta=0.6, bias=1.0),
    "Softmax": _softmax_logits,
    "Sub_Div_Tanh_Sigmoid": lambda g: g.op("Div", [g.op("Sub", [g.op("Tanh", [g.conv("x")]), "x"]),
                                                   g.op("Add", [g.op("Sigmoid", ["x"]), g.const(np.float32(1))])]),
}


def images(n=3, shape=(3, 64, 64), seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def relative(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def operator_model(name, seed=0, **kwargs):
    g = Graph(seed)
    return g.model(OPERATORS[name](g), **kwargs)


def old_style_model(opset=9, seed=0):
    """What an old exporter wrote: opset 9, attributes later turned into inputs (Clip min/max,
    Dropout ratio), and every initializer also listed as a graph input (IR version 3)."""
    g = Graph(seed)
    a = g.conv("x")
    bn = g.op("BatchNormalization", [a, g.weight(C), g.weight(C), g.weight(C), g.const(np.full(C, 0.5, np.float32))])
    r6 = g.op("Clip", [bn], min=0.0, max=0.8)
    pooled = g.op("MaxPool", [r6], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    dropped = g.op("Dropout", [pooled], ratio=0.3)
    flat = g.op("Reshape", [dropped, g.const(np.array([0, -1], np.int64))])
    logits = g.op("Gemm", [flat, g.weight(5, C * 9), g.weight(5)], ["logits"], transB=1)
    out = g.op("Softmax", [logits], ["probabilities"], axis=1)
    return g.model(out, opset=opset, inputs_with_inits=True, ir_version=3, flatten=False)


def no_image_model():
    """An MLP on (N, 8) vectors: nothing image-like to explain."""
    g = Graph()
    h = g.op("Gemm", ["x", g.weight(8, 3)])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    graph = helper.make_graph(g.nodes, "mlp", [x], [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["N", 3])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def two_output_model():
    """Scores "a" and "b" = -a: a model with more than one output."""
    g = Graph()
    a = g.op("Flatten", [g.op("GlobalAveragePool", [g.conv("x")])], ["a"])
    g.op("Neg", [a], ["b"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", C]) for n in ("a", "b")]
    graph = helper.make_graph(g.nodes, "two", [x], outs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def custom_op_model():
    """A contrib operator (com.microsoft Gelu) in the middle: ONNX shape inference cannot see
    through it and there is no gradient rule for it; ONNX Runtime runs it."""
    g = Graph()
    a = g.conv("x")
    g.nodes.append(helper.make_node("Gelu", [a], ["gelu"], name="my_gelu", domain="com.microsoft"))
    b = g.conv("gelu")
    pooled = g.op("GlobalAveragePool", [b])
    return g.model(pooled, batch="N", shape=("C", "H", "W"), domains=("com.microsoft",))


def finite_difference_check(backend, x, *, seed=0, h=2e-3, tol=1e-2):
    """Full input gradient of <forward(x), r> against central differences, element by element.

    Where the one-sided slopes (f(x + h e) - f(x)) / h and (f(x) - f(x - h e)) / h disagree,
    a kink (ReLU, max, clip) lies within h of x and the element is skipped; at least 90% of
    the elements must remain, and there the central difference must match the gradient."""
    rng = np.random.default_rng(seed)
    out = backend.forward(x)
    r = rng.standard_normal(out.shape).astype(np.float32)
    grad = backend.gradient(x, {"output": r})["input"].astype(np.float64).reshape(len(x), -1)
    size = x[0].size
    eye = np.eye(size, dtype=np.float32).reshape(size, *x.shape[1:])
    left, right, noise = [], [], []
    for i in range(len(x)):
        f = lambda z: backend.forward(z).astype(np.float64) @ r[i].astype(np.float64)  # noqa: E731
        centre = float(out[i].astype(np.float64) @ r[i])
        right.append((f(x[i] + h * eye) - centre) / h)
        left.append((centre - f(x[i] - h * eye)) / h)
        # float32 rounding of the outputs, seen through a difference quotient
        noise.append(1e-6 * float(np.abs(out[i]).astype(np.float64) @ np.abs(r[i])) / h)
    left, right, noise = np.stack(left), np.stack(right), np.array(noise)[:, None]
    scale = max(np.abs(grad).max(), 1e-6)
    smooth = np.abs(right - left) < 0.2 * tol * scale + 4 * noise
    assert smooth.mean() > 0.9, f"only {smooth.mean():.0%} of the elements are away from kinks"
    error = (np.abs(grad - (left + right) / 2) - 2 * noise)[smooth].max() / scale
    assert error < tol, f"gradient differs from finite differences by {error:.2e} of its largest value"
    return error
