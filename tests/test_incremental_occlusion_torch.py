"""Incremental occlusion on torch (Krypton, SIGMOD 2019) against plain occlusion (every occluded
image through ``backend.forward``) and against the float64 model on hand-occluded images."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convscope  # noqa: E402
from convscope._incremental import NotIncremental, incremental_plan, window_patches  # noqa: E402
from convscope.attribution import occlusion  # noqa: E402
from convscope.attribution.occlusion import window_positions  # noqa: E402

from torch_arch_models import EfficientNetish, MobileNetV3ish, TinyViT  # noqa: E402
from torch_models import MixedReLUNet, TinyResNet, randomise_bn  # noqa: E402


class DenseNetish(nn.Module):
    """Dense blocks (BN-ReLU-conv, concatenated on channels), a transition with 2x2 average pooling."""

    def __init__(self, k=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.b2 = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 4, 3, padding=1))
        self.trans = nn.Sequential(nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.b1(x)], 1)
        x = torch.cat([x, self.b2(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(self.trans(x), 1).flatten(1))


class Geometry(nn.Module):
    """Ceil-mode max and average pools (count_include_pad=False), a dilated conv, 'same' padding
    with an even kernel (asymmetric), nearest and bilinear upsampling, a stride-3 conv."""

    def __init__(self, k=3):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 4, padding="same")
        self.p1 = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.p2 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c3 = nn.Conv2d(6, 6, 3, stride=3, padding=1)
        self.fc = nn.Linear(6, k)

    def forward(self, x):
        x = self.p1(F.relu(self.c1(x)))
        x = self.up(self.p2(torch.tanh(self.c2(x))))
        x = F.interpolate(x, scale_factor=2, mode="bilinear") + 0.5
        return self.fc(self.c3(x).amax((2, 3)))


class ViewNet(nn.Module):
    """VGG-style head on ``x.view(x.size(0), -1)``, ``x.shape[0]``; functional conv, max and
    average pools (``count_include_pad=False``)."""

    def __init__(self, k=3):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.3)
        self.fc = nn.Linear(4 * 8 * 8, k)

    def forward(self, x):
        n = x.shape[0]
        x = self.c2(F.max_pool2d(F.relu(self.c1(x)), 2))
        x = F.avg_pool2d(F.conv2d(x, self.w, None, 1, 1), 3, 1, 1, count_include_pad=False)
        return self.fc(x.view(x.size(0), -1)).reshape(n, -1)


class GlobalFirst(nn.Module):
    """Each image normalised by its own mean first: a global op before any conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = x - x.mean((2, 3), keepdim=True)
        return self.fc(self.conv(x).mean((2, 3)))


class Untraceable(TinyResNet):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 1.0
        return super().forward(x)


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return randomise_bn(cls(), seed).eval()


ARCHS = {"resnet": (TinyResNet, 24), "vgg": (MixedReLUNet, 16), "mobilenetv3": (MobileNetV3ish, 24),
         "efficientnet": (EfficientNetish, 24), "densenet": (DenseNetish, 20), "geometry": (Geometry, 30),
         "view": (ViewNet, 16)}


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _close(a, b, rel=1e-5):
    """Maps of score drops equal within ``rel`` of the scores they are differences of (a drop
    can be far smaller than the scores: float32 rounding of the scores is the floor)."""
    scale = max(np.abs(b.outputs).max(), 1e-12)
    if b.info["output"] == "probability":
        scale = 1.0
    assert np.abs(a.maps - b.maps).max() <= rel * scale, (np.abs(a.maps - b.maps).max(), scale)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_equals_plain_occlusion_on_architectures(arch):
    cls, size = ARCHS[arch]
    model = _model(cls)
    x = _images(2, size)
    kw = dict(window=(5, 7), stride=(3, 4), fill="mean", perturbations_per_eval=7)
    fast = occlusion(model, x, **kw, incremental=True)
    plain = occlusion(model, x, **kw, incremental=False)
    assert fast.info["incremental"] is True, fast.info
    assert plain.info["incremental"] is False
    _close(fast, plain)
    assert fast.info["plan"]["conv_work"] < 1.0


@pytest.mark.parametrize("fill", ["mean", "zero", "blur", 0.25, (0.1, 0.5, 0.9)])
@pytest.mark.parametrize("output", ["score", "probability"])
def test_every_fill_and_output(fill, output):
    model = _model(TinyResNet)
    x = _images(2, 20, seed=1)
    kw = dict(window=6, stride=5, fill=fill, output=output)  # 5 * 3 + 6 > 20: the last windows are cut
    _close(occlusion(model, x, **kw), occlusion(model, x, **kw, incremental=False))


def test_stride_larger_than_window_and_batching_invariance():
    model = _model(MobileNetV3ish)
    x = _images(3, 24, seed=2)
    plain = occlusion(model, x, window=4, stride=7, incremental=False)
    for per_eval in (1, 2, 3):
        got = occlusion(model, x, window=4, stride=7, perturbations_per_eval=per_eval, incremental=True)
        _close(got, plain)


def test_plan_scores_against_float64_model():
    model = _model(TinyResNet)
    x = _images(1, 20, seed=3)
    backend = convscope.load(model)
    plan = incremental_plan(backend, x, (6, 6))
    corners = np.array(window_positions((20, 20), (6, 6), (5, 5)))
    filled = np.full_like(x[0], 0.3)
    patches, starts = window_patches(x[0], filled, corners, (6, 6))
    got = plan.scores(patches, starts)
    model64 = _model(TinyResNet).double()
    images = np.repeat(x.astype(np.float64), len(corners), 0)
    for k, (y, c) in enumerate(corners):  # by hand, windows cut at the border
        images[k, :, y:y + 6, c:c + 6] = 0.3
    with torch.no_grad():
        ref = model64(torch.from_numpy(images)).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


class SoftmaxTuple(nn.Module):
    """A functional final softmax, and a tuple of outputs."""

    def __init__(self):
        super().__init__()
        self.net = _model(TinyResNet)

    def forward(self, x):
        scores = self.net(x)
        return F.softmax(scores, dim=1), scores.sum(1)


def test_final_softmax_is_cut_and_select_honoured_as_in_forward():
    x = _images(1, 20, seed=4)
    model = nn.Sequential(_model(TinyResNet), nn.Softmax(1)).eval()
    got = occlusion(model, x, window=5, stride=5, incremental=True)
    assert "output" in got.info["choices"]  # the softmax module is left out, as backend.forward does
    _close(got, occlusion(model, x, window=5, stride=5, incremental=False))
    for options in ({"select": 0}, {"select": 0, "output": "probabilities"}):
        backend = convscope.load(SoftmaxTuple().eval(), **options)
        got = occlusion(backend, x, window=5, stride=5, incremental=True)
        assert got.info["incremental"] is True
        _close(got, occlusion(backend, x, window=5, stride=5, incremental=False))
        plan = incremental_plan(backend, x, (5, 5))
        patches, starts = window_patches(x[0], np.zeros_like(x[0]), np.array([[5, 5]]), (5, 5))
        occluded = x.copy()
        occluded[:, :, 5:10, 5:10] = 0
        np.testing.assert_allclose(plan.scores(patches, starts), backend.forward(occluded), rtol=1e-5, atol=1e-7)


def test_float64_model_runs_in_float64():
    model = _model(TinyResNet).double()
    x = _images(1, 20, seed=8)
    got = occlusion(model, x, window=6, stride=4, incremental=True)
    _close(got, occlusion(model, x, window=6, stride=4, incremental=False), rel=1e-9)


@pytest.mark.parametrize("cls, why", [(GlobalFirst, "no conv works on crops"),
                                      (Untraceable, "torch.fx could not trace")])
def test_falls_back_and_says_why(cls, why):
    model = _model(cls)
    x = _images(1, 20, seed=5)
    got = occlusion(model, x, window=5, stride=5)
    assert got.info["incremental"] is False and why in got.info["incremental_why"]
    _close(got, occlusion(model, x, window=5, stride=5, incremental=False))
    approximate = occlusion(model, x, window=5, stride=5, approximate=0.5)
    assert "exact: approximate= needs the incremental path" in approximate.info["incremental_why"]
    model.train()
    with pytest.raises(ValueError, match="The 'incremental' parameter of occlusion must be False or 'auto'.*" + why):
        occlusion(model, x, window=5, stride=5, incremental=True)
    assert all(m.training for m in model.modules())  # left as it was, also after the error


def test_attention_after_patch_embedding_is_exact():
    model = _model(TinyViT)
    x = _images(1, 32, seed=6)
    got = occlusion(model, x, window=8, stride=8)
    _close(got, occlusion(model, x, window=8, stride=8, incremental=False))


def test_keras_like_backend_without_plan_falls_back():
    class NoPlan:
        name = "fake"

    with pytest.raises(NotIncremental, match="fake backend has no incremental path"):
        incremental_plan(NoPlan(), np.zeros((1, 3, 8, 8), np.float32), (2, 2))


def test_model_left_as_it_was():
    model = _model(TinyResNet).train()
    calls = []
    handle = model.layer1.conv1.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = (dict(model._forward_hooks), dict(model.layer1.conv1._forward_hooks))
    occlusion(model, _images(1, 20), window=5, stride=5, incremental=True)
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert (dict(model._forward_hooks), dict(model.layer1.conv1._forward_hooks)) == hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert calls  # the user's hook fired (on crops: a leaf module's call sees the recomputed region)
    handle.remove()
    with pytest.raises(ValueError):
        occlusion(model, _images(1, 20), window=5, target=99, incremental=True)
    assert model.training


def test_approximate_mode_reports_error():
    model = _model(TinyResNet)
    x = _images(1, 24, seed=7)
    exact = occlusion(model, x, window=4, stride=4, incremental=False)
    errors = {}
    for t in (0.3, 0.6, 1.0):
        got = occlusion(model, x, window=4, stride=4, approximate=t)
        err = got.info["approximate_error"]
        assert err["windows"] == 8 and got.info["plan"]["approximate"] == t
        errors[t] = err["max_abs"]
        if t == 1.0:
            _close(got, exact)
    assert errors[1.0] <= 1e-6 < errors[0.3] and errors[0.6] < errors[0.3]


@pytest.mark.parametrize("kw, match", [
    ({"incremental": "yes"}, "The 'incremental' parameter of occlusion must be 'auto', True or False"),
    ({"approximate": 0.0}, "The 'approximate' parameter of occlusion must be > 0.0"),
    ({"approximate": 1.5}, r"The 'approximate' parameter of occlusion must be None or a threshold in \(0, 1\]"),
    ({"approximate": 0.5, "incremental": False}, "The 'incremental' parameter of occlusion must be 'auto' or True"),
])
def test_bad_modes(kw, match):
    with pytest.raises(ValueError, match=match):
        occlusion(_model(TinyResNet), _images(1, 16), window=4, **kw)


def test_docs_example_runs_and_quotes_its_numbers():
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "attribution.md").read_text()
    section = text.split("## Occlusion: incremental and approximate")[1]
    block = section.split("```python\n")[1].split("```")[0]
    scope = {}
    exec(compile(block, "docs/attribution.md", "exec"), scope)
    quoted = float(re.search(r"# \(True, ([\d.]+)\)", block).group(1))
    assert scope["maps"].info["incremental"] is True
    assert round(scope["maps"].info["plan"]["conv_work"], 3) == quoted
    assert set(scope["fast"].info["approximate_error"]) == {"windows", "image", "max_abs", "max_relative"}


@pytest.mark.slow
def test_keras_has_no_plan_and_falls_back():
    pytest.importorskip("tensorflow")
    from convscope.data import demo_model, shapes

    x = shapes(1, seed=0).images
    got = occlusion(demo_model("keras"), x, window=16, stride=16)
    assert got.info["incremental"] is False
    assert "tensorflow backend has no incremental path" in got.info["incremental_why"]
    with pytest.raises(ValueError, match="has no incremental path"):
        occlusion(demo_model("keras"), x, window=16, stride=16, incremental=True)


def test_a_module_changed_after_tracing_is_traced_again():
    model = _model(TinyResNet)
    x = _images(1, 20, seed=9)
    occlusion(model, x, window=5, stride=5, incremental=True)  # traced and cached
    model.layer1.conv1 = nn.Conv2d(8, 8, 5, padding=2, bias=False)  # a new submodule, another kernel
    got = occlusion(model, x, window=5, stride=5, incremental=True)
    _close(got, occlusion(model, x, window=5, stride=5, incremental=False))


def test_plans_hold_no_memory_once_done():
    import gc

    from convscope.backends.torch import _incremental_ops

    model = _model(TinyResNet)
    occlusion(model, _images(1, 20, seed=10), window=5, stride=5, incremental=True)
    gc.collect()
    before = len(_incremental_ops._PIXELS)
    for seed in range(3):
        occlusion(model, _images(1, 20, seed=seed), window=5, stride=5, incremental=True)
    gc.collect()
    assert len(_incremental_ops._PIXELS) <= before


def test_auto_runs_large_windows_plain_and_says_so():
    model = _model(TinyResNet)
    x = _images(1, 20, seed=11)
    got = occlusion(model, x, window=10, stride=5)  # a quarter of the image
    assert got.info["incremental"] is False and "covers more than 1/8 of the image" in got.info["incremental_why"]
    forced = occlusion(model, x, window=10, stride=5, incremental=True)
    assert forced.info["incremental"] is True
    _close(forced, got)
