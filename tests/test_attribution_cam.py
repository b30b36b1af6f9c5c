"""The CAM family on the torch demo model, against Captum and against the published formulas
written out here in torch on the module itself (hooks, autograd, F.interpolate)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
F = torch.nn.functional

import convscope
from convscope import attribution as A
from convscope.app.bench_peers import captum_ready
from torch_models import MixedReLUNet, TinyResNet

from _assertions import assert_close  # noqa: E402

pytestmark = pytest.mark.backend("torch")




@pytest.fixture(scope="module")
def demo():
    return captum_ready(convscope.data.demo_model("torch"))  # out-of-place ReLUs, for Captum and the references


@pytest.fixture(scope="module")
def batch():
    data = convscope.data.shapes(3, seed=21)
    return data.images, data.labels


def _acts_and_grads(model, layer, x, y):
    """Activations of ``layer`` and d score_y / d activations, by a forward hook and autograd."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(torch.from_numpy(x))
    finally:
        handle.remove()
    a = store["a"]
    g = torch.autograd.grad(out[torch.arange(len(y)), torch.from_numpy(y)].sum(), a)[0]
    return a.detach(), g.detach(), out.detach()


def _up(cam, size=(64, 64)):
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def test_grad_cam_matches_captum(demo, batch):
    x, y = batch
    got = A.grad_cam(demo, x, y)
    assert got.info["layer"] == "relu4"  # the default: last layer with a spatial output
    lgc = captum_attr.LayerGradCam(demo, demo.relu4)
    want = lgc.attribute(torch.from_numpy(x), target=torch.from_numpy(y), relu_attributions=True)
    assert_close(got.info["layer_maps"], want[:, 0].detach().numpy())
    assert_close(got.maps, captum_attr.LayerAttribution.interpolate(want, (64, 64), "bilinear")[:, 0].detach().numpy())
    mid = A.grad_cam(demo, x, y, layer="conv3", clip=False)
    want = lgc.__class__(demo, demo.conv3).attribute(torch.from_numpy(x), target=torch.from_numpy(y))
    assert_close(mid.info["layer_maps"], want[:, 0].detach().numpy())
    assert mid.signed


def test_guided_grad_cam_matches_captum(demo, batch):
    x, y = batch
    want = captum_attr.GuidedGradCam(demo, demo.relu4).attribute(
        torch.from_numpy(x), target=torch.from_numpy(y), interpolate_mode="bilinear").detach().numpy()
    got = A.guided_grad_cam(demo, x, y)
    assert_close(got.attributions, want)
    assert_close(got.maps, np.abs(want).max(axis=1))


def test_cam_is_the_class_weights_on_the_last_maps(demo, batch):
    x, y = batch
    a, _, _ = _acts_and_grads(demo, demo.relu4, x, y)
    w = demo.fc.weight.detach()[torch.from_numpy(y)]
    want = torch.relu(torch.einsum("nc,nchw->nhw", w, a))
    got = A.cam(demo, x, y)
    assert_close(got.info["layer_maps"], want.numpy())
    assert_close(got.maps, _up(want))
    # with GAP + linear, dS/dA = W / (h w): Grad-CAM is CAM / 64
    assert_close(A.grad_cam(demo, x, y).info["layer_maps"] * 64, got.info["layer_maps"])


def test_grad_cam_pp_and_layer_cam_follow_their_formulas(demo, batch):
    x, y = batch
    a, g, _ = _acts_and_grads(demo, demo.conv4, x, y)
    a, g = a.double(), g.double()
    # Grad-CAM++ (pytorch-grad-cam's closed form)
    g2, g3 = g ** 2, g ** 3
    aij = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-30)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    w = (torch.relu(g) * aij).sum(dim=(2, 3))
    want = torch.relu((w[:, :, None, None] * a).sum(dim=1)).float()
    got = A.grad_cam_pp(demo, x, y, layer="conv4")
    assert_close(got.info["layer_maps"], want.numpy(), 1e-4)
    assert_close(got.maps, _up(want), 1e-4)
    # LayerCAM
    want = torch.relu((torch.relu(g) * a).sum(dim=1)).float()
    assert_close(A.layer_cam(demo, x, y, layer="conv4").info["layer_maps"], want.numpy())


def _score_cam_reference(model, layer, x, y):
    """Score-CAM written out: each channel upsampled, min-max scaled, multiplied into the image."""
    a, _, _ = _acts_and_grads(model, layer, x, y)
    cams = []
    with torch.no_grad():
        for i in range(len(x)):
            up = F.interpolate(a[i:i + 1], size=x.shape[2:], mode="bilinear", align_corners=False)[0]
            lo = up.amin(dim=(1, 2), keepdim=True)
            hi = up.amax(dim=(1, 2), keepdim=True)
            varies = (a[i].amax(dim=(1, 2)) > a[i].amin(dim=(1, 2)))[:, None, None]  # judged before upsampling,
            masks = torch.where(varies, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))  # whose rounding
            # would otherwise blow a constant map's last-bit noise up to a full-range mask
            probs = torch.softmax(model(torch.from_numpy(x[i])[None] * masks[:, None]), dim=1)[:, int(y[i])]
            cams.append(torch.relu((probs[:, None, None] * a[i]).sum(dim=0)))
    return torch.stack(cams)


def test_score_cam_matches_the_written_out_algorithm(demo, batch):
    x, y = batch
    want = _score_cam_reference(demo, demo.relu4, x[:2], y[:2])
    got = A.score_cam(demo, x[:2], y[:2], batch_size=50, output="probability")
    assert_close(got.info["layer_maps"], want.numpy(), 1e-4)
    assert_close(A.score_cam(demo, x[:2], y[:2], batch_size=7, output="probability").maps, got.maps, 1e-5)


def test_score_cam_constant_maps_give_no_nan(demo, batch):
    x, y = batch
    dead = copy.deepcopy(demo)
    with torch.no_grad():
        dead.conv4.weight[:40] = 0  # those channels become constant maps (bias through BN and ReLU)
    got = A.score_cam(dead, x[:2], y[:2], output="probability")
    assert np.isfinite(got.maps).all() and np.isfinite(got.info["layer_maps"]).all()
    assert_close(got.info["layer_maps"], _score_cam_reference(dead, dead.relu4, x[:2], y[:2]).numpy(), 1e-4)


def test_eigen_cam_projects_on_the_first_principal_component(demo, batch):
    x, y = batch
    a, _, _ = _acts_and_grads(demo, demo.relu4, x, y)
    got = A.eigen_cam(demo, x, clip=False)
    for i in range(len(x)):
        m = a[i].reshape(64, -1).T.double().numpy()
        m = m - m.mean(axis=0)
        vals, vecs = np.linalg.eigh(m.T @ m)  # the top eigenvector of the channel covariance
        proj = m @ vecs[:, -1]
        total = a[i].sum(dim=0).flatten().double().numpy()
        proj *= np.sign(np.dot(proj, total - total.mean()))
        assert_close(got.info["layer_maps"][i].ravel(), proj, 1e-4)
    assert got.target is None


def test_default_layer_is_the_last_spatial_block():
    net = TinyResNet().eval()
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    assert A.grad_cam(net, x, 0).info["layer"] == "layer2"
    assert A.cam(net, x, 0).maps.shape == (2, 16, 16)


@pytest.mark.parametrize("call, match", [
    (lambda m, x: A.grad_cam(m, x, 0, layer="fc"), r"'layer' parameter of grad_cam must be a layer with a spatial"),
    (lambda m, x: A.score_cam(m, x, 0, layer="gap"),
     r"'layer' parameter of score_cam must be a layer with a spatial .* 'gap' with output shape \(64, 1, 1\)"),
    (lambda m, x: A.grad_cam_pp(m, x, 0, layer="relu44"),
     r"'layer' parameter of grad_cam_pp must be a known layer name.*closest: relu4"),
    (lambda m, x: A.grad_cam(m, x, 9), r"'target' parameter of grad_cam must be a class index in \[0, 3\]"),
    (lambda m, x: A.cam(m, x, 0, layer="relu3"),
     r"cam .* here the layer after 'relu3' is 'pool3' \(pool MaxPool2d\), not a global average pool"),
    (lambda m, x: A.score_cam(m, x, 0, output="logits"), r"'output' parameter of score_cam must be one of"),
    (lambda m, x: A.score_cam(m, x, 0, batch_size=0), r"'batch_size' parameter of score_cam must be >= 1"),
])
def test_bad_input_is_refused_with_the_argument_named(demo, batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(demo, batch[0])


def test_cam_explains_why_other_heads_do_not_qualify():
    net = MixedReLUNet().eval()
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=r"needs the layer to feed global average pooling .* Use grad_cam"):
        A.cam(net, x, 0)
    assert np.isfinite(A.grad_cam(net, x, 0).maps).all()
