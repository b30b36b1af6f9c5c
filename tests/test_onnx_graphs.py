"""The ONNX Runtime backend on graphs built for the purpose: a finite-difference check per
operator, a torch-exported ResNet, old opsets, fixed batch, unknown shapes, Softmax heads."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from convscope.testing import check_backend  # noqa: E402

import onnx_models as om  # noqa: E402
from onnx_models import finite_difference_check, images, relative  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")


# --------------------------------------------------------------------------- every operator
@pytest.mark.parametrize("name", sorted(om.OPERATORS))
def test_operator_gradient_matches_finite_differences(name):
    backend = convscope.load(om.operator_model(name), probabilities=True)
    x = np.random.default_rng(3).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    finite_difference_check(backend, x)


def test_max_pool_ties_go_to_the_first_maximum_as_in_torch():
    """Windows full of equal values: the whole dy of a window goes to its first maximum."""
    torch = pytest.importorskip("torch")
    g = om.Graph()
    pooled = g.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    small = g.op("MaxPool", [pooled], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    backend = convscope.load(g.model(small, shape=(om.C, om.H + 1, om.W + 1)))
    x = np.random.default_rng(0).integers(0, 3, (2, om.C, om.H + 1, om.W + 1)).astype(np.float32)
    out = backend.forward(x)
    seed = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    got = backend.gradient(x, {"output": seed})["input"]
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        f = torch.nn.functional
        y = f.max_pool2d(f.max_pool2d(xt, 3, 2, 1), 2, 2, ceil_mode=True).flatten(1)
        (want,) = torch.autograd.grad(y, xt, torch.from_numpy(seed))
    np.testing.assert_allclose(out, y.detach().numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


def test_large_matrix_weights_are_shared_with_onnx_runtime_not_copied():
    backend = convscope.load(om.operator_model("Gemm_large_shared"))
    x = np.random.default_rng(0).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    g = backend.gradient(x, {"output": np.ones((2, 3), np.float32)})["input"]
    big = [n for n, w in backend.graph.weights.items() if w.nbytes > 1 << 20]
    assert len(big) == 1 and np.abs(g).sum() > 0
    value = backend._sessions._values[big[0]]  # the OrtValue handed to add_initializer wraps our array
    assert value.data_ptr() == backend.graph.weights[big[0]].ctypes.data


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_clip_from_zero_follows_the_relu_rule(rule):
    """A Clip(0, hi) is a ReLU6-style unit: the rule masks with 0 < x < hi."""
    from convscope.testing import relu_rule

    backend = convscope.load(om.operator_model("Clip"))
    x = np.random.default_rng(0).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    clip = [r for r in backend.layers() if r.kind == "relu"][0]
    assert clip.op == "Clip[0, 0.5]"
    seed = np.random.default_rng(1).standard_normal(backend.forward(x).shape).astype(np.float32)
    g = backend.gradient(x, {"output": seed}, wrt=[clip.inputs[0], clip.name], rule=rule)
    want = relu_rule(rule, g.activations[clip.inputs[0]], g[clip.name], upper=0.5)
    np.testing.assert_allclose(g[clip.inputs[0]], want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(want, relu_rule("standard", g.activations[clip.inputs[0]], g[clip.name], upper=0.5))


@pytest.mark.parametrize("batch", ["N", 2])
@pytest.mark.parametrize("name", ["MaxPool_wide_by_indices", "LRN", "Clip", "Concat", "Softmax"])
def test_callable_seeds_equal_the_same_seeds_given_fixed(name, batch):
    """Forward session, seeds in NumPy, backward session on the saved residuals (an int64 argmax
    among them for the patched MaxPool; a batch of 3 cut into padded chunks of 2 for batch=2)
    against the one-call graph fed with the very seeds the callable returned."""
    backend = convscope.load(om.operator_model(name, batch=batch), probabilities=True)
    x = np.random.default_rng(7).standard_normal((3, om.C, om.H, om.W)).astype(np.float32)
    inner = backend.layers()[0].name
    at, wrt = [inner, "output"], ["input", inner]
    given = {}

    def cubes(acts):  # seeds of sum(|a|^3) / 3 at both tensors: they depend on the pass itself
        given.update({k: v * np.abs(v) for k, v in acts.items()})
        return dict(given)

    for rule in ("standard", "guided"):
        called = backend.gradient(x, cubes, at=at, wrt=wrt, rule=rule)
        fixed = backend.gradient(x, given, at=at, wrt=wrt, rule=rule)
        np.testing.assert_array_equal(called.outputs, fixed.outputs)
        for n in wrt:
            assert np.abs(fixed[n]).max() > 0
            np.testing.assert_allclose(called[n], fixed[n], rtol=1e-5, atol=1e-6 * np.abs(fixed[n]).max())


# --------------------------------------------------------------------------- torch-exported ResNet
def export(model, *, batch=None, shape=(3, 16, 16), names=("input", "logits")):
    torch = pytest.importorskip("torch")
    import io
    import warnings

    buffer = io.BytesIO()
    axes = None if batch else {names[0]: {0: "N"}, names[1]: {0: "N"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(batch or 1, *shape),), buffer, input_names=[names[0]],
                          output_names=[names[1]], dynamic_axes=axes, opset_version=17, dynamo=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def resnet():
    torch = pytest.importorskip("torch")
    from torch_models import TinyResNet, randomise_bn

    torch.manual_seed(0)
    return randomise_bn(TinyResNet()).eval()


RESNET_PAIRS = {"/layer1/relu_1/Relu_output_0": "layer1", "/layer2/conv1/Conv_output_0": "layer2.bn1"}


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
def test_resnet_exported_from_torch_matches_torch(resnet, rule):
    backend = convscope.load(export(resnet))
    reference = convscope.load(resnet)
    x = images(2, (3, 16, 16))
    if rule == "standard":
        check_backend(backend, x)
    seed = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    got = backend.gradient(x, {"output": seed}, wrt=["input", *RESNET_PAIRS], rule=rule)
    want = reference.gradient(x, {"output": seed}, wrt=["input", *RESNET_PAIRS.values()], rule=rule)
    assert relative(got["input"], want["input"]) < 1e-4
    for ours, theirs in RESNET_PAIRS.items():
        assert relative(got[ours], want[theirs]) < 1e-4, ours


def test_model_fixed_at_batch_one_serves_a_batch_by_splitting(resnet):
    torch = pytest.importorskip("torch")
    backend = convscope.load(export(resnet, batch=1))
    assert backend.graph.fixed_batch == 1
    x = images(3, (3, 16, 16))
    with torch.no_grad():
        want = resnet(torch.from_numpy(x)).numpy()
    assert relative(backend.forward(x), want) < 1e-4
    seed = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    reference = convscope.load(resnet).gradient(x, {"output": seed}, wrt=["input", "layer1"], rule="guided")
    fixed = backend.gradient(x, {"output": seed}, wrt=["input", "/layer1/relu_1/Relu_output_0"], rule="guided")
    called = backend.gradient(x, lambda acts: {"output": seed}, wrt=["input"], rule="guided")
    assert relative(fixed["input"], reference["input"]) < 1e-4
    assert relative(fixed["/layer1/relu_1/Relu_output_0"], reference["layer1"]) < 1e-4
    assert relative(called["input"], reference["input"]) < 1e-4
    acts = backend.activations(x, ["/layer2/Add_output_0", "output"])
    assert acts["/layer2/Add_output_0"].shape == (3, 16, 8, 8) and relative(acts["output"], want) < 1e-4


# --------------------------------------------------------------------------- real-world graphs
def test_old_opset_with_initializers_listed_as_inputs():
    model = om.old_style_model(opset=9)
    assert model.ir_version == 3 and len(model.graph.input) > 1
    backend = convscope.load(model)
    assert backend.graph.opset >= 16
    x = np.random.default_rng(3).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    finite_difference_check(backend, x)
    finite_difference_check(convscope.load(model, probabilities=True), x)
    import onnxruntime

    bare = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(convscope.load(model, probabilities=True).forward(x), bare.run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-7)


def test_softmax_head_is_explained_on_logits_unless_probabilities_asked():
    model = om.old_style_model(opset=9)
    x = np.random.default_rng(4).standard_normal((3, om.C, om.H, om.W)).astype(np.float32)
    logits_backend = convscope.load(model)
    logits = logits_backend.forward(x)
    probabilities = convscope.load(model, probabilities=True).forward(x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert not np.allclose(logits.sum(1), 1)
    np.testing.assert_array_equal(logits, logits_backend.activations(x, ["logits"])["logits"])
    seed = np.eye(5, dtype=np.float32)[[0, 2, 4]]
    on_logits = logits_backend.gradient(x, {"output": seed})["input"]
    np.testing.assert_array_equal(on_logits, logits_backend.gradient(x, {"logits": seed})["input"])
    assert not np.allclose(on_logits, convscope.load(model, probabilities=True).gradient(x, {"output": seed})["input"])


def test_weights_stored_as_constant_nodes_work_like_initializers():
    model = om.operator_model("Gemm_large_shared")
    as_constants = onnx.ModelProto()
    as_constants.CopyFrom(model)
    graph = as_constants.graph
    nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer] + list(graph.node)
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    x = images(2, (om.C, om.H, om.W))
    seed = {"output": np.ones((2, 3), np.float32)}
    got, want = convscope.load(as_constants), convscope.load(model)
    np.testing.assert_array_equal(got.forward(x), want.forward(x))
    np.testing.assert_array_equal(got.gradient(x, seed)["input"], want.gradient(x, seed)["input"])


def test_weights_saved_as_external_data_are_read_from_beside_the_file(tmp_path):
    model = om.operator_model("Gemm_large_shared")
    x = images(2, (om.C, om.H, om.W))
    want = convscope.load(model).forward(x)
    path = tmp_path / "split.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="split.weights", size_threshold=0)
    assert (tmp_path / "split.weights").stat().st_size > 1 << 20
    np.testing.assert_array_equal(convscope.load(path).forward(x), want)
    with pytest.raises(ValueError, match=r"stored in an external file 'split.weights'; load the model from its path"):
        convscope.load(path.read_bytes())


def test_several_outputs_need_a_choice():
    model = om.two_output_model()
    with pytest.raises(ValueError, match=r"several outputs \(a, b\); pass select=<name or index>"):
        convscope.load(model)
    x = images(2, (om.C, om.H, om.W))
    a = convscope.load(model, output="a").forward(x)
    np.testing.assert_array_equal(convscope.load(model, output=1).forward(x), -a)
    g = convscope.load(model, output="b").gradient(x, {"output": np.ones_like(a)})["input"]
    np.testing.assert_allclose(g, -convscope.load(model, output="a").gradient(x, {"output": np.ones_like(a)})["input"])
    with pytest.raises(ValueError, match=r"'output' parameter of convscope.load must be a known graph output name"):
        convscope.load(model, output="c")


def tail_model(model, start):
    """The part of ``model`` after tensor ``start``, as a model whose image input is ``start``."""
    from onnx import helper

    nodes = list(model.graph.node)
    first = next(i for i, n in enumerate(nodes) if start in n.input)
    graph = helper.make_graph(nodes[first:], "tail", [helper.make_tensor_value_info(start, 1, ["N", om.C, "H", "W"])],
                              list(model.graph.output), list(model.graph.initializer))
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=8)


def test_unknown_shapes_are_inferred_and_unsupported_operator_reported_first():
    model = om.custom_op_model()  # input (N, C, H, W) all symbolic, a com.microsoft Gelu inside
    with pytest.raises(ValueError, match=r"leaves its input size open.*input_shape=\(C, H, W\)"):
        convscope.load(model).layers()
    backend = convscope.load(model, input_shape=(om.C, 5, 7))
    records = {r.name: r for r in backend.layers()}
    assert records["gelu"].shape == (om.C, 5, 7) and records["gelu"].op == "Gelu"
    assert all(r.shape is not None for r in records.values())
    x = np.random.default_rng(5).standard_normal((2, om.C, 5, 7)).astype(np.float32)
    seed = np.random.default_rng(6).standard_normal((2, om.C)).astype(np.float32)
    got = backend.gradient(x, {"output": seed}, wrt=["gelu"])["gelu"]
    tail = convscope.load(tail_model(model, "gelu"))
    gelu = backend.activations(x, ["gelu"])["gelu"]
    np.testing.assert_allclose(got, tail.gradient(gelu, {"output": seed})["input"], rtol=1e-5, atol=1e-7)
    finite_difference_check(tail, gelu)
    sessions = len(backend._sessions)
    with pytest.raises(ValueError, match=r"No gradient rule .*Gelu \(node 'my_gelu' with output 'gelu'\)"):
        backend.gradient(x, {"output": seed}, wrt=["input"])
    assert len(backend._sessions) == sessions  # reported before any session was built or run
