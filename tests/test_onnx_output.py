"""What the ONNX backend explains: the scores before a final softmax by default, the
probabilities on request, one of several graph outputs by select=; the old spellings
(probabilities=, output=<name or index>) still work and warn once. References: the torch
module the file was exported from, and NumPy's softmax."""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
import convscope._renamed  # noqa: E402

import onnx_models as om  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")


@pytest.fixture
def fresh_warnings(monkeypatch):
    """The deprecation warnings fire once per process: start each test with none given."""
    monkeypatch.setattr(convscope._renamed, "_warned", set())


@pytest.fixture(scope="module")
def softmax_net():
    """(torch module without its softmax, ONNX bytes of the module followed by Softmax 'prob')."""
    torch = pytest.importorskip("torch")
    import onnx_exports as ox

    torch.manual_seed(0)
    module = ox.modules()["densenet"]().eval()
    return module, ox.export(module, softmax=True)


def x_images(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def logits_of(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_scores_before_a_final_softmax_are_explained_and_the_choice_is_said(softmax_net):
    module, data = softmax_net
    x = x_images()
    backend = convscope.load(data)
    assert backend.output == "scores"
    assert backend.choices == {"output": "the final Softmax 'prob' is left out: methods explain the scores before it; "
                                         "load(model, output='probabilities') keeps it"}
    np.testing.assert_allclose(backend.forward(x), logits_of(module, x), rtol=1e-4, atol=1e-5)
    kept = convscope.load(data, output="probabilities")
    assert kept.output == "probabilities" and kept.choices == {}
    np.testing.assert_allclose(kept.forward(x), softmax(logits_of(module, x)), rtol=1e-4, atol=1e-6)


def test_gradients_follow_the_output_choice(softmax_net):
    torch = pytest.importorskip("torch")
    module, data = softmax_net
    x = x_images(2, seed=1)
    seed = np.eye(5, dtype=np.float32)[[1, 3]]
    for output, head in (("scores", lambda z: z), ("probabilities", lambda z: z.softmax(1))):
        xt = torch.from_numpy(x).requires_grad_(True)
        (want,) = torch.autograd.grad(head(module(xt)), xt, torch.from_numpy(seed))
        got = convscope.load(data, output=output).gradient(x, {"output": seed})["input"]
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-5 * np.abs(want.numpy()).max())


def test_no_choice_without_a_final_softmax():
    backend = convscope.load(om.operator_model("Relu"))
    assert backend.output == "scores" and backend.choices == {}


def test_a_final_log_softmax_is_left_out_too():
    g = om.Graph()
    out = g.op("LogSoftmax", [g.op("Flatten", [g.op("GlobalAveragePool", [g.conv("x")])])], ["logp"], axis=1)
    model = g.model(out, flatten=False)
    x = np.random.default_rng(2).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    backend = convscope.load(model)
    assert "the final LogSoftmax 'logp' is left out" in backend.choices["output"]
    kept = convscope.load(model, output="probabilities").forward(x)
    np.testing.assert_allclose(kept, np.log(softmax(backend.forward(x))), rtol=1e-5, atol=1e-6)


def test_probabilities_true_is_the_old_spelling_and_warns_once(softmax_net, fresh_warnings):
    _, data = softmax_net
    x = x_images(2)
    with pytest.warns(DeprecationWarning, match=r"probabilities=True\) is deprecated; pass output='probabilities'"):
        old = convscope.load(data, probabilities=True)
    assert old.output == "probabilities" and old.choices == {}
    np.testing.assert_array_equal(old.forward(x), convscope.load(data, output="probabilities").forward(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convscope.load(data, probabilities=False, threads=1).output == "scores"  # warned already
    with pytest.raises(TypeError, match=r"got output='scores' and probabilities=True"):
        convscope.load(data, output="scores", probabilities=True)


def test_select_picks_a_graph_output_and_output_with_a_name_is_its_old_spelling(fresh_warnings):
    model = om.two_output_model()
    x = np.random.default_rng(3).standard_normal((2, om.C, om.H, om.W)).astype(np.float32)
    a = convscope.load(model, select="a").forward(x)
    np.testing.assert_array_equal(convscope.load(model, select=1).forward(x), -a)
    with pytest.warns(DeprecationWarning, match=r"output='b'\) to pick one of the model's outputs is deprecated; pass select='b'"):
        old = convscope.load(model, output="b")
    np.testing.assert_array_equal(old.forward(x), -a)
    assert old.output == "scores"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(convscope.load(model, output=0).forward(x), a)
    with pytest.raises(TypeError, match=r"got select='a' and output='b'"):
        convscope.load(model, select="a", output="b")


def test_bad_output_and_select_values_name_the_parameter():
    model = om.two_output_model()
    with pytest.raises(ValueError, match=r"several outputs \(a, b\); pass select=<name or index>"):
        convscope.load(model)
    with pytest.raises(ValueError, match=r"'select' parameter of convscope.load must be a known graph output name. "
                                         r"Got 'c' instead"):
        convscope.load(model, select="c")
    with pytest.raises(ValueError, match=r"'select' parameter of convscope.load must be an index below 2"):
        convscope.load(model, select=2)
    with pytest.raises(TypeError, match=r"'select' parameter of convscope.load must be an output's index, name or key"):
        convscope.load(model, select=True)
    with pytest.raises(TypeError, match=r"'output' parameter of convscope.load must be one of 'scores', 'probabilities'. "
                                        r"Got 1.5 instead"):
        convscope.load(model, output=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"'output' parameter of convscope.load must be a known graph output name "
                                             r"\(the old spelling of select=\) or one of 'scores', 'probabilities'. "
                                             r"Got 'probs' instead; the graph outputs are a, b"):
            convscope.load(model, output="probs")
