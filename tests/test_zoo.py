"""Every capability on a zoo of well-known architectures (tests/zoo_models.py), each as a torch
module and as its ONNX export, and torch and ONNX agreeing on them.

Images are the generated shapes at 32 px with 10% uniform noise mixed in: the flat regions of
the shapes give exactly equal conv outputs side by side in torch, and one ulp apart in ONNX
Runtime (each convolution rounds in its own order), so a max pool over them would route its
gradient to different, equally valid elements in the two frameworks; with noise no two values
of a pool window are equal (zeros are: both send nothing back through the ReLU before it).

A case that fails because of work in progress in the library carries a strict xfail mark with
the error it gives today (``XFAIL``), so that it fails once the fix lands and the mark is due
to be removed.
"""
import copy
import functools
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from convscope import synthesis  # noqa: E402
from convscope.features import top_patches  # noqa: E402
from zoo_models import SIZE, ZOO, SqueezeExcitation, build, export  # noqa: E402

ARCHS = list(ZOO)
BACKENDS = ("torch", "onnx")
N = 2

METHODS = {
    "saliency": {}, "smoothgrad": {"samples": 3, "noise": 0.1}, "integrated_gradients": {"steps": 6},
    "input_x_gradient": {}, "guided_backprop": {}, "deconvnet": {}, "occlusion": {"window": 8, "stride": 8},
    "grad_cam": {}, "grad_cam_pp": {}, "layer_cam": {}, "score_cam": {}, "eigen_cam": {}, "guided_grad_cam": {},
}
CAMS = {"grad_cam", "grad_cam_pp", "layer_cam", "score_cam", "eigen_cam", "guided_grad_cam"}
AGREE = ("saliency", "guided_backprop", "integrated_gradients", "grad_cam")

# A spatial layer in the middle of each net, after an SE block where the net has one, named
# as each backend names it: torch by module, ONNX by the exporter's tensor name.
MIDDLE = {
    "resnet": ("layer1.1", "/layer1/layer1.1/relu_2/Relu_output_0"),
    "densenet": ("features.transition1.conv", "/features/transition1/conv/Conv_output_0"),
    "inception": ("inception3a", "/inception3a/Concat_output_0"),
    "mobilenet_v3": ("features.3.block.2", "/features/features.3/block/block.2/Mul_output_0"),
    "efficientnet": ("features.2.block.2", "/features/features.2/block/block.2/Mul_output_0"),
    "convnext": ("features.1.0", "/features/features.1/features.1.0/Add_output_0"),
    "shufflenet_v2": ("stage2.0", "/stage2/stage2.0/Reshape_1_output_0"),
    "regnet": ("trunk_output.0.0.f.se", "/trunk_output/trunk_output.0/trunk_output.0.0/f/se/Mul_output_0"),
    "vit": ("conv_proj", "/conv_proj/Conv_output_0"),
}

# What fails today because of work in progress in the library: {reason: {test: case ids}}
REASONS = {
}
XFAIL = {
}


def cases(test, *axes):
    """pytest params for the product of ``axes`` (lists of ids), each with its strict xfail mark from ``XFAIL``."""
    marked = {case: REASONS[why] for why, tests in XFAIL.items() for case in tests.get(test, ())}
    out = []
    for combo in itertools.product(*axes):
        case = "-".join(combo)
        marks = [pytest.mark.xfail(strict=True, reason=marked[case])] if case in marked else []
        out.append(pytest.param(*combo, marks=marks, id=case))
    return out


@functools.lru_cache(maxsize=None)
def models(arch):
    """(torch module, ONNX bytes) of one architecture."""
    module = build(arch)
    return module, export(module)


@functools.lru_cache(maxsize=None)
def backend(arch, kind):
    module, onnx_bytes = models(arch)
    return convscope.load(module if kind == "torch" else onnx_bytes, input_shape=(3, SIZE, SIZE))


def middle(arch, kind):
    return MIDDLE[arch][BACKENDS.index(kind)]


@functools.lru_cache(maxsize=None)
def images(n=N, seed=3):
    x = convscope.data.shapes(n, size=SIZE, seed=seed).images
    noise = np.random.default_rng(seed).random(x.shape)
    return (0.9 * x + 0.1 * noise).astype(np.float32)


def record(b, name):
    return next(r for r in b.layers() if r.name == name)


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# --------------------------------------------------------------------------- 1. every method runs
@pytest.mark.parametrize("arch, kind, method", cases("methods", ARCHS, BACKENDS, list(METHODS)))
def test_every_method_runs(arch, kind, method):
    b, x = backend(arch, kind), images()
    maps = getattr(convscope, method)(b, x, **METHODS[method])
    assert maps.maps.shape == (N, SIZE, SIZE)
    assert np.isfinite(maps.maps).all()
    if method in CAMS:  # the final ReLU may clear a random net's map
        assert maps.info["layer"] in [r.name for r in b.layers()]
    else:
        assert np.abs(maps.maps).max() > 0, f"{method} gave all-zero maps"


@pytest.mark.parametrize("arch, kind", cases("vit_cam", ["vit"], BACKENDS))
def test_vit_cam_reads_the_token_grid(arch, kind):
    """Grad-CAM on a ViT with no options: the default layer is a token sequence after the
    attention blocks, reshaped to the 8 x 8 patch grid (the class token left out)."""
    b = backend(arch, kind)
    maps = convscope.grad_cam(b, images())
    assert record(b, maps.info["layer"]).layout == "tokens", record(b, maps.info["layer"])
    assert maps.info["layer_maps"].shape == (N, SIZE // 4, SIZE // 4)
    assert maps.maps.shape == (N, SIZE, SIZE) and np.isfinite(maps.maps).all()


# --------------------------------------------------------------------------- 2. torch and ONNX agree
@pytest.mark.parametrize("arch, method", cases("agree", ARCHS, list(AGREE)))
def test_torch_and_onnx_agree(arch, method):
    x = images()
    want = getattr(convscope, method)(backend(arch, "torch"), x, **METHODS[method])
    got = getattr(convscope, method)(backend(arch, "onnx"), x, **METHODS[method])
    assert rel_l2(got.maps, want.maps) < 1e-4, rel_l2(got.maps, want.maps)


@pytest.mark.parametrize("arch", cases("default_layer", ARCHS))
def test_same_default_cam_layer(arch):
    """Both backends read the same logical tensor by default: same shape, same values."""
    x = images()
    acts = []
    for kind in BACKENDS:
        b = backend(arch, kind)
        layer = convscope.grad_cam(b, x).info["layer"]
        acts.append(b.activations(x, [layer])[layer])
    assert acts[0].shape == acts[1].shape, (acts[0].shape, acts[1].shape)
    assert rel_l2(acts[1], acts[0]) < 1e-4


# --------------------------------------------------------------------------- 3. finite differences
@pytest.mark.parametrize("arch, kind", cases("finite_differences", ARCHS, BACKENDS))
def test_input_gradient_matches_finite_differences(arch, kind):
    """The backend's input gradient of the predicted class score (on the float32 model)
    against central differences of a float64 copy along random unit directions."""
    x = images()
    module64 = copy.deepcopy(models(arch)[0]).double()
    with torch.no_grad():
        scores = module64(torch.from_numpy(x).double()).numpy()
    classes = scores.argmax(1)
    grad = backend(arch, kind).gradient(x, {"output": np.eye(scores.shape[1], dtype=np.float32)[classes]})["input"]
    rng, h = np.random.default_rng(0), 1e-5
    for i in range(N):
        g = grad[i].astype(np.float64)
        for _ in range(3):
            d = rng.standard_normal(x[i].shape)
            d /= np.linalg.norm(d)
            z = torch.from_numpy(np.stack([x[i] + h * d, x[i] - h * d]))
            with torch.no_grad():
                up, down = module64(z)[:, classes[i]].numpy()
            fd = (up - down) / (2 * h)
            assert abs(fd - (g * d).sum()) <= 1e-3 * np.linalg.norm(g), (fd, (g * d).sum(), np.linalg.norm(g))


# --------------------------------------------------------------------------- 4. top patches
def padding_reach(arch):
    """Input pixels a unit of the middle layer can see beyond the image edge at most: the
    padding of every conv and pool run before that layer's output, in input pixels (each
    layer's padding times the jump of its input), summed over all of them."""
    module = models(arch)[0]
    target = dict(module.named_modules())[middle(arch, "torch")]
    reach, done = [0.0], [False]

    def pad_hook(m, inputs, _):
        if not done[0]:
            p = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
            reach[0] += max(p) * SIZE / inputs[0].shape[-1]

    def stop(*_):
        done[0] = True

    kinds = (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)
    hooks = [m.register_forward_hook(pad_hook) for m in module.modules() if isinstance(m, kinds)]
    hooks.append(target.register_forward_hook(stop))
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        for hook in hooks:
            hook.remove()
    return reach[0]


def unit_gradient(arch, kind, image, channel, y, x):
    """Where the input gradient of one unit of the middle layer is nonzero, (rows, cols).

    A squeeze-excitation gate is a (C, 1, 1) factor computed from the whole map; by the
    receptive-field convention (DESIGN.md) it does not widen the field, so the gradient that
    a box must hold is the one with the gates held at their values: computed on the torch
    module (the same weights and the same logical unit for both backends) with each gate's
    output detached. Without gates, the backend's own ``gradient``."""
    module = models(arch)[0]
    gates = [m.scale_activation for m in module.modules() if isinstance(m, SqueezeExcitation)]
    if not gates:
        b, layer = backend(arch, kind), middle(arch, kind)
        seed = np.zeros((1, *b.activations(image[None], [layer])[layer].shape[1:]), np.float32)
        seed[0, channel, y, x] = 1
        grad = b.gradient(image[None], {layer: seed}, wrt=["input"])["input"][0]
        return np.nonzero(np.abs(grad).max(0) > 0)
    units = []
    hooks = [g.register_forward_hook(lambda m, i, out: out.detach()) for g in gates]
    hooks.append(dict(module.named_modules())[middle(arch, "torch")].register_forward_hook(
        lambda m, i, out: units.append(out[0, channel, y, x])))
    z = torch.from_numpy(image[None].copy()).requires_grad_()
    try:
        module(z)
    finally:
        for hook in hooks:
            hook.remove()
    units[0].backward()
    return np.nonzero(z.grad[0].abs().amax(0).numpy() > 0)


@pytest.mark.parametrize("arch, kind", cases("top_patches", ARCHS, BACKENDS))
def test_top_patch_boxes_hold_the_unit_gradient(arch, kind):
    """The box of each kept unit contains every pixel its input gradient reaches (gates held,
    see :func:`unit_gradient`), and lies within the image and the padding the net adds around it."""
    b, layer, data = backend(arch, kind), middle(arch, kind), images(6, seed=11)
    with warnings.catch_warnings():  # units after a gate change value when shown their patch alone
        warnings.simplefilter("ignore")
        result = top_patches(b, data, layer, channels=[0, 1], k=2, rule="guided", progress=False)
    reach, reached = padding_reach(arch), 0
    for i, channel in enumerate(result.channels):
        for j in range(result.k):
            (y, x), (top, left, bottom, right) = result.locations[i, j], result.boxes[i, j]
            assert -reach <= top < bottom <= SIZE + reach and -reach <= left < right <= SIZE + reach, \
                (result.boxes[i, j], reach)
            ys, xs = unit_gradient(arch, kind, data[result.indices[i, j]], channel, y, x)
            if not len(ys):  # a dead ReLU unit (its channel is zero on every image)
                continue
            reached += 1
            assert top <= ys.min() and ys.max() < bottom and left <= xs.min() and xs.max() < right, \
                f"unit {channel, y, x}: gradient in rows {ys.min()}..{ys.max()}, cols {xs.min()}..{xs.max()}, " \
                f"box {result.boxes[i, j]}"
    assert reached, "every kept unit has a zero gradient"


# --------------------------------------------------------------------------- 5. synthesis
@pytest.mark.parametrize("arch, kind", cases("synthesis", ARCHS, BACKENDS))
def test_deepdream_and_visualize_change_the_image(arch, kind):
    b, layer, x = backend(arch, kind), middle(arch, kind), images()[:1]
    dream = synthesis.deepdream(b, x, layer, octaves=1, steps=1, progress=False)
    assert dream.image.shape == x.shape and np.isfinite(dream.image).all()
    assert np.abs(dream.image - x).max() > 1e-4
    # channel 0 of a random net's ReLU layer may be dead on every image: take the liveliest
    live = int(b.activations(images(), [layer])[layer].mean(axis=(0, 2, 3)).argmax())
    objective = synthesis.channel(layer, live)
    one, two = (synthesis.visualize(b, objective, steps=s, size=SIZE, progress=False) for s in (1, 2))
    assert one.images.shape == (1, 3, SIZE, SIZE) and np.isfinite(one.images).all()
    assert np.abs(two.images - one.images).max() > 1e-4, "a visualisation step left the image as it was"
