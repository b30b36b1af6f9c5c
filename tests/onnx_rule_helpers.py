"""Shared helpers of the ONNX gradient-rule tests (test_onnx_rules_pointwise.py and
test_onnx_rules_spatial.py): the float64 reference and the gradient check.

A case's input gradient, computed by the backend's adjoint graph on ONNX Runtime in
float32, is compared with central finite differences of a float64 copy of the same graph
run by ``onnx.reference.ReferenceEvaluator``: a reference independent of ONNX Runtime and of
the rules. Every case's graph is batch-independent, so all perturbed copies of the input
run as one batch.
"""
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import convscope

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
