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
from _torch_reference import hooked_gradients, out_of_place

X = shapes(3, seed=4).images.astype(np.float32)
AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)]  # pytorch-grad-cam's


@pytest.fixture(scope="module")
def net():
    return demo_model("torch").eval()


def autograd(net, x, layer, classes):
    """Activations of ``layer`` and the gradient of the scores of ``classes`` there (float64)."""
    acts, grads, _, _ = hooked_gradients(net, x, [layer], classes)
    return acts[layer], grads[layer]


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


def grad_cam_factor(net, x, classes, eigen, layer="relu4"):
    a, g = autograd(net, x, layer, classes)
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


def scale(m):
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))


def test_multi_layer_cam_smooths_each_layer_map_before_scaling(net):
    classes = classes_of(net, X)
    layers = ["relu3", "relu4"]
    raw = [augmented_mean(X, lambda xa, n=n: grad_cam_factor(net, xa, classes, False, n)) for n in layers]
    per = [up(scale(m)) for m in raw]
    got = A.multi_layer_cam(net, X, layers=layers, aug_smooth=True)
    np.testing.assert_allclose(got.info["per_layer"]["relu3"], per[0], atol=1e-4)
    np.testing.assert_allclose(got.maps, scale(np.mean(per, axis=0)), atol=1e-4)
    assert len(got.info["aug_smooth"]) == 6
    eigen = A.multi_layer_cam(net, X, layers=layers, eigen_smooth=True, aug_smooth=True)
    per = [up(scale(augmented_mean(X, lambda xa, n=n: grad_cam_factor(net, xa, classes, True, n)))) for n in layers]
    np.testing.assert_allclose(eigen.maps, scale(np.mean(per, axis=0)), atol=1e-4)


def fullgrad_terms(net, x, classes):
    """pytorch-grad-cam's FullGrad terms: scale(|dS/dx x|) per input channel, then per conv/norm
    layer the sum over channels of up(scale(|b_c dS/dz_c|)) (the inference-mode norm offset)."""
    ref_net = out_of_place(net)
    mods = dict(ref_net.named_modules())
    layers = [n for n, m in mods.items() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    _, grads, gx, _ = hooked_gradients(ref_net, x, layers, classes)
    terms = list(scale(np.abs(gx * np.asarray(x, np.float64))).transpose(1, 0, 2, 3))
    for n in layers:
        m = mods[n]
        b = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
             if isinstance(m, torch.nn.BatchNorm2d) else m.bias).detach().double().numpy()
        s = scale(np.abs(b[None, :, None, None] * grads[n]))
        terms.append(np.stack([up(c) if c.shape[-1] != 64 else c for c in s.transpose(1, 0, 2, 3)]).sum(0))
    return np.stack(terms, axis=1)


def test_full_grad_eigen_smooth_is_pytorch_grad_cams(net):
    classes = classes_of(net, X)
    terms = fullgrad_terms(net, X, classes)
    small = F.interpolate(torch.tensor(scale(terms)), size=(8, 8), mode="bilinear", align_corners=False).numpy()
    ref = scale(up(scale(projection(small))))
    got = A.full_grad(net, X, eigen_smooth=True)
    np.testing.assert_allclose(got.maps, ref, atol=2e-4)
    assert got.info["eigen_smooth"] is True
    assert not np.allclose(got.maps, A.full_grad(net, X).maps, atol=1e-2)


def test_full_grad_aug_smooth_is_the_mean_of_the_augmented_maps(net):
    classes = classes_of(net, X)
    ref = augmented_mean(X, lambda xa: scale(fullgrad_terms(net, xa, classes).sum(axis=1)))
    got = A.full_grad(net, X, aug_smooth=True)
    np.testing.assert_allclose(got.maps, ref, atol=2e-4)
    assert len(got.info["aug_smooth"]) == 6 and (got.target == classes).all()


CAMS = ["cam", "grad_cam", "grad_cam_pp", "layer_cam", "score_cam", "eigen_cam", "guided_grad_cam", "hires_cam",
        "xgrad_cam", "eigen_grad_cam", "ablation_cam", "multi_layer_cam", "full_grad"]


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_other_backends_smooth_as_torch(net, kind):
    from convscope.data import demo_path

    other = convscope.load(demo_model("keras") if kind == "keras" else demo_path("onnx"))
    for f, kw in [(A.eigen_cam, {"aug_smooth": True}), (A.guided_grad_cam, {"aug_smooth": True, "eigen_smooth": True}),
                  (A.full_grad, {"eigen_smooth": True}), (A.multi_layer_cam, {"layers": ["relu3", "relu4"],
                                                                               "aug_smooth": True})]:
        a, b = f(net, X, **kw).maps, f(other, X, **kw).maps
        np.testing.assert_allclose(b, a, atol=1e-4 * max(1.0, np.abs(a).max()), err_msg=f.__name__)
