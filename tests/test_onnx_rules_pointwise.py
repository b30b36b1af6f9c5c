"""The ONNX backend's gradient rules for pointwise operators, operator by operator:
activations, arithmetic, softmax and matrix products, normalisation, reductions (cases in
tests/onnx_rule_cases.py), each against float64 finite differences of the reference
evaluator (tests/onnx_rule_helpers.py); and the guided/deconvnet rules on the rectifiers
against the rules written out. Spatial operators are in test_onnx_rules_spatial.py.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from convscope.testing import relu_rule  # noqa: E402

import onnx_models as om  # noqa: E402
from onnx_rule_cases import CASES, POINTWISE, case_model  # noqa: E402
from onnx_rule_helpers import F32, check_gradient  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")


@pytest.mark.parametrize("name", POINTWISE)
def test_rule_matches_float64_finite_differences(name):
    model, shape = case_model(name)
    check_gradient(model, shape=shape, seed=sorted(CASES).index(name))


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
