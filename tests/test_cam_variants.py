"""HiResCAM, XGrad-CAM, Eigen-Grad-CAM, FullGrad, multi-layer CAMs, aug_smooth and eigen_smooth
against written-out NumPy references of each paper's formula (pytorch-grad-cam's definitions),
from activations and gradients that torch autograd computes here (hooks), not convscope; the
same maps from the Keras and ONNX demo files; the make_cam extension point."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope import attribution as A
from convscope.data import demo_model, demo_path, shapes
from _torch_reference import hooked_gradients, out_of_place

X = shapes(3, seed=4).images.astype(np.float32)
LAYERS = ["relu3", "relu4"]


@pytest.fixture(scope="module")
def net():
    return demo_model("torch").eval()


def up(m, size=64):
    """Bilinear, align-corners False (cv2.resize's, pytorch-grad-cam's resize)."""
    return F.interpolate(torch.tensor(m)[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def scale(m):
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))


def projection(wa):
    """get_2d_projection as pytorch-grad-cam writes it, one image at a time, sign-free."""
    out = []
    for a in wa:
        r = a.reshape(a.shape[0], -1).T
        r = r - r.mean(axis=0)
        _, _, vt = np.linalg.svd(r, full_matrices=True)
        p = (r @ vt[0]).reshape(a.shape[1:])
        ref = (a.sum(axis=0)).ravel()
        out.append(p if p.ravel() @ (ref - ref.mean()) >= 0 else -p)
    return np.array(out)


REFS = {
    "hires_cam": lambda a, g: np.maximum((g * a).sum(1), 0),
    "xgrad_cam": lambda a, g: np.maximum(np.einsum("nc,nchw->nhw",
                                                   (g * a / (a.sum((2, 3), keepdims=True) + 1e-7)).sum((2, 3)), a), 0),
    "eigen_grad_cam": lambda a, g: np.maximum(projection(g * a), 0),
}


@pytest.mark.parametrize("name", list(REFS))
def test_variant_equals_the_written_out_formula(net, name):
    acts, grads, _, classes = hooked_gradients(net, X, ["relu4"])
    ref = REFS[name](acts["relu4"], grads["relu4"])
    got = getattr(A, name)(net, X, layer="relu4")
    assert got.info["layer"] == "relu4" and (got.target == classes).all()
    np.testing.assert_allclose(got.info["layer_maps"], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(got.maps, up(ref), rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def ablated_scores(net, x, layer, classes):
    """(N, C): the class score with channel c of ``layer`` zeroed by a forward hook (the paper's ablation)."""
    mod = dict(net.named_modules())[layer]
    state = {}

    def zero(module, inputs, output):
        output = output.clone()
        output[:, state["c"]] = 0
        return output

    h = mod.register_forward_hook(zero)
    try:
        cols = []
        with torch.no_grad():
            for c in range(64):
                state["c"] = c
                cols.append(net(torch.tensor(x))[np.arange(len(x)), classes].double().numpy())
    finally:
        h.remove()
    return np.stack(cols, axis=1)


def test_ablation_cam_equals_the_papers_formula_and_captums_layer_ablation(net):
    from captum.attr import LayerFeatureAblation

    acts, _, _, classes = hooked_gradients(net, X, ["relu4"])
    with torch.no_grad():
        y = net(torch.tensor(X))[np.arange(len(X)), classes].double().numpy()
    w = (y[:, None] - ablated_scores(net, X, "relu4", classes)) / y[:, None]
    ref = np.maximum(np.einsum("nc,nchw->nhw", w, acts["relu4"]), 0)
    got = A.ablation_cam(net, X, layer="relu4", batch_size=2)
    np.testing.assert_allclose(got.info["layer_maps"], ref, rtol=1e-4, atol=1e-5 * ref.max())
    # Captum: the score drop of each channel ablated to the baseline 0 (one group per channel)
    mask = torch.arange(64).reshape(1, 64, 1, 1).expand(1, 64, 8, 8)
    drop = LayerFeatureAblation(net, net.relu4).attribute(torch.tensor(X), target=torch.tensor(classes),
                                                          layer_mask=mask, layer_baselines=0.0)
    w_captum = drop.detach().double().numpy()[:, :, 0, 0] / y[:, None]
    ref_captum = np.maximum(np.einsum("nc,nchw->nhw", w_captum, acts["relu4"]), 0)
    np.testing.assert_allclose(got.info["layer_maps"], ref_captum, rtol=1e-4, atol=1e-5 * ref.max())
    with pytest.raises(ValueError, match="ablation_cam: channel c of 'pool3' can be zeroed only"):
        A.ablation_cam(net, X, layer="pool3")


def test_eigen_smooth_is_the_first_component_of_the_weighted_activations(net):
    acts, grads, _, _ = hooked_gradients(net, X, ["relu4"])
    a, g = acts["relu4"], grads["relu4"]
    ref = np.maximum(projection(g.mean((2, 3))[:, :, None, None] * a), 0)
    got = A.grad_cam(net, X, layer="relu4", eigen_smooth=True)
    np.testing.assert_allclose(got.info["layer_maps"], ref, rtol=1e-4, atol=1e-5 * ref.max())
    assert got.info["eigen_smooth"] is True
    plain = A.grad_cam(net, X, layer="relu4")
    assert not np.allclose(plain.info["layer_maps"], got.info["layer_maps"])


def test_aug_smooth_averages_flipped_and_scaled_images_mapped_back(net):
    classes = net(torch.tensor(X)).argmax(1).numpy()
    maps = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (X[..., ::-1] if flip else X) * np.float32(factor)
            acts, grads, _, _ = hooked_gradients(net, np.ascontiguousarray(xa), ["relu4"], classes)
            m = REFS["hires_cam"](acts["relu4"], grads["relu4"])
            maps.append(m[..., ::-1] if flip else m)
    ref = np.mean(maps, axis=0)
    got = A.hires_cam(net, X, layer="relu4", aug_smooth=True)
    np.testing.assert_allclose(got.info["layer_maps"], ref, rtol=1e-4, atol=1e-5 * ref.max())
    assert len(got.info["aug_smooth"]) == 6 and (got.target == classes).all()


def test_multi_layer_cam_is_the_mean_of_scaled_layer_maps(net):
    acts, grads, _, _ = hooked_gradients(net, X, LAYERS)
    per = [up(scale(np.maximum(np.einsum("nc,nchw->nhw", grads[n].mean((2, 3)), acts[n]), 0))) for n in LAYERS]
    ref = scale(np.mean(per, axis=0))
    got = A.multi_layer_cam(net, X, layers=LAYERS)
    np.testing.assert_allclose(got.maps, ref, atol=1e-4)
    np.testing.assert_allclose(got.info["per_layer"]["relu3"], per[0], atol=1e-4)
    mx = A.multi_layer_cam(net, X, method="hires_cam", layers=LAYERS, reduce="max")
    ref_h = scale(np.max([up(scale(REFS["hires_cam"](acts[n], grads[n]))) for n in LAYERS], axis=0))
    np.testing.assert_allclose(mx.maps, ref_h, atol=1e-4)


def test_full_grad_equals_pytorch_grad_cams_definition(net):
    ref_net = out_of_place(net)
    mods = dict(ref_net.named_modules())
    layers = [n for n, m in mods.items() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    acts, grads, gx, _ = hooked_gradients(ref_net, X, layers)
    total = scale(np.abs(gx * X.astype(np.float64))).sum(1)
    for n in layers:
        m = mods[n]
        if isinstance(m, torch.nn.BatchNorm2d):  # the official implementation's inference-mode bias
            b = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)).detach().double().numpy()
        else:
            b = m.bias.detach().double().numpy()
        bg = np.abs(b[None, :, None, None] * grads[n])
        s = scale(bg.reshape(-1, *bg.shape[2:]))
        total += (up(s) if s.shape[-1] != 64 else s).reshape(len(X), -1, 64, 64).sum(1)
    ref = scale(total)
    got = A.full_grad(net, X)
    assert got.info["layers"] == layers
    np.testing.assert_allclose(got.maps, ref, atol=2e-4)
    # the same from Captum's pieces: InputXGradient, and the layer gradients dS/dz of
    # LayerGradientXActivation(multiply_by_inputs=False), times the biases
    from captum.attr import InputXGradient, LayerGradientXActivation

    xt, tt = torch.tensor(X), torch.tensor(got.target)
    total = scale(np.abs(InputXGradient(ref_net).attribute(xt.clone().requires_grad_(), target=tt)
                         .detach().double().numpy())).sum(1)
    for n in layers:
        m = mods[n]
        dz = LayerGradientXActivation(ref_net, m, multiply_by_inputs=False).attribute(xt, target=tt)
        b = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
             if isinstance(m, torch.nn.BatchNorm2d) else m.bias).detach().double().numpy()
        bg = np.abs(b[None, :, None, None] * dz.detach().double().numpy())
        s = scale(bg.reshape(-1, *bg.shape[2:]))
        total += (up(s) if s.shape[-1] != 64 else s).reshape(len(X), -1, 64, 64).sum(1)
    np.testing.assert_allclose(got.maps, scale(total), atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_other_backends_give_torchs_maps(net, kind):
    other = convscope.load(demo_model("keras") if kind == "keras" else demo_path("onnx"))
    for f, kw in [(A.hires_cam, {}), (A.xgrad_cam, {}), (A.eigen_grad_cam, {}), (A.grad_cam, {"aug_smooth": True}),
                  (A.grad_cam, {"eigen_smooth": True}), (A.full_grad, {}), (A.ablation_cam, {}),
                  (A.multi_layer_cam, {"layers": LAYERS})]:
        a, b = f(net, X, **kw).maps, f(other, X, **kw).maps
        np.testing.assert_allclose(b, a, atol=1e-4 * max(1.0, np.abs(a).max()), err_msg=f.__name__)


def test_make_cam_adds_a_variant_with_the_shared_signature(net):
    positive = A.make_cam("positive_grad_cam", lambda p: np.maximum(p.grads, 0).mean(axis=(2, 3)),
                          doc="Grad-CAM with positive gradients only.")
    acts, grads, _, _ = hooked_gradients(net, X, ["relu4"])
    ref = np.maximum(np.einsum("nc,nchw->nhw", np.maximum(grads["relu4"], 0).mean((2, 3)), acts["relu4"]), 0)
    got = positive(net, X, layer="relu4")
    np.testing.assert_allclose(got.info["layer_maps"], ref, rtol=1e-4, atol=1e-6)
    assert got.method == "positive_grad_cam"
    assert "positive_grad_cam" in A.registered_cams()
    assert A.multi_layer_cam(net, X, method="positive_grad_cam", layers=["relu4"]).maps.shape == (3, 64, 64)
    activ = A.make_cam("mean_channel_cam", lambda p: np.ones(p.acts.shape[:2], np.float32), mode="activations")
    np.testing.assert_allclose(activ(net, X, layer="relu4").info["layer_maps"], acts["relu4"].sum(1), rtol=1e-5)


def test_bad_arguments_name_the_argument(net):
    with pytest.raises(ValueError, match="'method' parameter of multi_layer_cam"):
        A.multi_layer_cam(net, X, method="nope", layers=LAYERS)
    with pytest.raises(ValueError, match="'layers' parameter of multi_layer_cam"):
        A.multi_layer_cam(net, X, layers=[])
    with pytest.raises(ValueError, match="'reduce' parameter of multi_layer_cam"):
        A.multi_layer_cam(net, X, layers=LAYERS, reduce="median")
    with pytest.raises(TypeError, match="'aug_smooth' parameter of hires_cam"):
        A.hires_cam(net, X, aug_smooth="yes")
    with pytest.raises(ValueError, match="'mode' parameter of make_cam"):
        A.make_cam("x_cam", lambda p: p.grads, mode="magic")
    with pytest.raises(TypeError, match="'weights_fn' parameter of make_cam"):
        A.make_cam("x_cam", 3)


def test_the_docs_examples_run(capsys, tmp_path, monkeypatch):
    import re
    from pathlib import Path
    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parents[1] / "docs" / "cam.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/cam.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("relu4 6 (4, 64, 64) 1.0\n(4, 64, 64)\n(4, 64, 64)\n"), out
