"""aug_smooth and eigen_smooth on every CAM: Eigen-CAM, Guided Grad-CAM (its Grad-CAM factor),
Eigen-Grad-CAM, the multi-layer CAM and FullGrad, against written-out references of
pytorch-grad-cam's definitions (``BaseCAM.forward_augmentation_smoothing``: horizontal flip x
``Multiply([0.9, 1, 1.1])``, each map mapped back and averaged; ``get_2d_projection``: the
centred (h w, C) matrix projected on its first right singular vector), from activations and
gradients torch autograd computes here (hooks) and Captum's GuidedBackprop; bad flags raise
before any pass."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convscope
from convscope import attribution as A
from convscope.data import demo_model, shapes
from _assertions import batch_sizes

X = shapes(3, seed=4).images.astype(np.float32)
AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)]  # pytorch-grad-cam's


@pytest.fixture(scope="module")
def net():
    return demo_model("torch").eval()


def autograd(net, x, layer, classes):
    """Activations of ``layer`` and the gradient of the scores of ``classes`` there (float64)."""
    store = {}

    def hook(module, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = dict(net.named_modules())[layer].register_forward_hook(hook)
    try:
        out = net(torch.tensor(np.ascontiguousarray(x)))
        out[np.arange(len(x)), classes].sum().backward()
    finally:
        handle.remove()
    return store["a"].detach().double().numpy(), store["a"].grad.double().numpy()


def projection(wa):
    """get_2d_projection one image at a time; the sign turned to correlate with the channel sum."""
    out = []
    for a in wa:
        r = a.reshape(a.shape[0], -1).T
        r = r - r.mean(axis=0)
        _, _, vt = np.linalg.svd(r, full_matrices=True)
        p = (r @ vt[0]).reshape(a.shape[1:])
        ref = a.sum(axis=0).ravel()
        out.append(p if p.ravel() @ (ref - ref.mean()) >= 0 else -p)
    return np.array(out)


def augmented_mean(x, layer_map):
    """The mean over the six augmentations of ``layer_map(augmented x)``, each flipped back."""
    maps = []
    for flip, factor in AUGMENTATIONS:
        m = layer_map((x[..., ::-1] if flip else x) * np.float32(factor))
        maps.append(m[..., ::-1] if flip else m)
    return np.mean(maps, axis=0)


def up(m, size=64):
    return F.interpolate(torch.tensor(m)[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def classes_of(net, x):
    with torch.no_grad():
        return net(torch.tensor(x)).argmax(1).numpy()


def close(got, ref):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_eigen_cam_aug_smooth_is_the_mean_of_the_augmented_first_components(net):
    classes = classes_of(net, X)
    ref = augmented_mean(X, lambda xa: np.maximum(projection(autograd(net, xa, "relu4", classes)[0]), 0))
    got = A.eigen_cam(net, X, layer="relu4", aug_smooth=True)
    close(got.info["layer_maps"], ref)
    assert len(got.info["aug_smooth"]) == 6
    plain = A.eigen_cam(net, X, layer="relu4")
    assert not np.allclose(plain.info["layer_maps"], got.info["layer_maps"])
    close(plain.info["layer_maps"], np.maximum(projection(autograd(net, X, "relu4", classes)[0]), 0))
    # eigen_smooth: already the first component, as pytorch-grad-cam's EigenCAM ignores it
    np.testing.assert_array_equal(A.eigen_cam(net, X, layer="relu4", eigen_smooth=True).maps, plain.maps)


def grad_cam_factor(net, x, classes, eigen):
    a, g = autograd(net, x, "relu4", classes)
    wa = g.mean(axis=(2, 3))[:, :, None, None] * a
    return np.maximum(projection(wa) if eigen else wa.sum(axis=1), 0)


@pytest.mark.parametrize("eigen", [False, True])
def test_guided_grad_cam_smooths_its_grad_cam_factor(net, eigen):
    from captum.attr import GuidedBackprop

    classes = classes_of(net, X)
    factor = up(augmented_mean(X, lambda xa: grad_cam_factor(net, xa, classes, eigen)))
    guided = GuidedBackprop(net).attribute(torch.tensor(X), target=torch.tensor(classes)).detach().double().numpy()
    ref = guided * factor[:, None]
    got = A.guided_grad_cam(net, X, layer="relu4", aug_smooth=True, eigen_smooth=eigen)
    close(got.info["grad_cam"], factor)
    close(got.attributions, ref)
    close(got.maps, np.abs(ref).max(axis=1))
    assert len(got.info["aug_smooth"]) == 6 and got.info.get("eigen_smooth", False) is eigen
    assert (got.target == classes).all()
    if eigen:  # eigen_smooth alone, no augmentation
        alone = A.guided_grad_cam(net, X, layer="relu4", eigen_smooth=True)
        close(alone.info["grad_cam"], up(grad_cam_factor(net, X, classes, True)))
        assert "aug_smooth" not in alone.info


def test_eigen_grad_cam_takes_eigen_smooth_and_is_unchanged(net):
    a = A.eigen_grad_cam(net, X, layer="relu4")
    b = A.eigen_grad_cam(net, X, layer="relu4", eigen_smooth=True)
    np.testing.assert_array_equal(a.maps, b.maps)


CAMS = ["cam", "grad_cam", "grad_cam_pp", "layer_cam", "score_cam", "eigen_cam", "guided_grad_cam", "hires_cam",
        "xgrad_cam", "eigen_grad_cam", "ablation_cam"]


@pytest.mark.parametrize("name", CAMS)
def test_every_cam_takes_both_flags_and_refuses_a_bad_one_before_any_pass(net, name):
    f = getattr(A, name)
    params = inspect.signature(f).parameters
    assert params["aug_smooth"].default is False and params["eigen_smooth"].default is False
    backend = convscope.load(net)
    for flag in ("aug_smooth", "eigen_smooth"):
        with batch_sizes(backend, "_forward") as fw, batch_sizes(backend, "_activations") as ac, \
                batch_sizes(backend, "_gradient") as gr:
            with pytest.raises(TypeError, match=f"'{flag}' parameter of {name}"):
                f(backend, X, **{flag: "yes"})
        assert fw == ac == gr == [], (flag, fw, ac, gr)
