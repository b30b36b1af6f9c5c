"""Preprocessing declared once: the model sees the preprocessed tensor, users work in theirs."""
import numpy as np
import pytest

import convscope
from convscope import Preprocess
from convscope.preprocess import PRESETS, fit_image, keras_mode

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _net(normalise_inside: bool):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

        def forward(self, x):
            return self.body((x - self.mean) / self.std if normalise_inside else x)

    return Net().eval()


def test_presets_by_hand(rng):
    x = rng.random((2, 3, 4, 5), dtype=np.float32)
    np.testing.assert_allclose(PRESETS["imagenet"].apply(x), (x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(PRESETS["tf"].apply(x), 2 * x - 1, atol=1e-6)
    caffe = x[:, ::-1] * 255 - np.array([103.939, 116.779, 123.68])[:, None, None]
    np.testing.assert_allclose(PRESETS["caffe"].apply(x), caffe, rtol=1e-5, atol=1e-4)
    for p in PRESETS.values():
        np.testing.assert_allclose(p.invert(p.apply(x)), x, atol=1e-5)


def test_a_declared_preprocessing_equals_the_model_doing_it_itself(rng):
    """The same weights with torchvision's normalisation inside the model (an independent
    reference: autograd differentiates it) and declared to convscope instead."""
    x = rng.random((3, 3, 16, 16), dtype=np.float32)
    inside, declared = _net(True), convscope.load(_net(False), preprocess="imagenet")
    np.testing.assert_allclose(declared.forward(x), convscope.load(inside).forward(x), rtol=1e-5, atol=1e-6)
    for method in (convscope.saliency, convscope.integrated_gradients, convscope.grad_cam):
        want, got = method(inside, x, 1).maps, method(declared, x, 1).maps
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    g = declared.gradient(x, {"output": np.eye(4, dtype=np.float32)[[0, 1, 2]]}, wrt=["input", "body.0"])
    assert np.array_equal(g.activations["input"], x)  # the input is the user's image


def test_images_as_users_hold_them(rng):
    from PIL import Image

    backend = convscope.load(_net(False), preprocess="imagenet")
    u8 = (rng.random((2, 3, 16, 16)) * 255).astype(np.uint8)
    want = convscope.saliency(backend, u8.astype(np.float32) / 255).maps
    np.testing.assert_allclose(convscope.saliency(backend, u8).maps, want, rtol=1e-6)
    pil = [Image.fromarray(np.ascontiguousarray(u8[i].transpose(1, 2, 0))) for i in range(2)]
    np.testing.assert_allclose(convscope.saliency(backend, pil).maps, want, rtol=1e-6)
    one = convscope.saliency(backend, u8[0].transpose(1, 2, 0))  # one (H, W, C) image
    np.testing.assert_allclose(one.maps[0], want[0], rtol=1e-6)
    stacked = np.ascontiguousarray(u8.transpose(0, 2, 3, 1))  # photos stacked as they load: (N, H, W, C)
    np.testing.assert_allclose(convscope.saliency(backend, stacked).maps, want, rtol=1e-6)
    nhwc = convscope.load(_net(False), preprocess=Preprocess(mean=MEAN, std=STD, layout="NHWC"))
    np.testing.assert_allclose(convscope.saliency(nhwc, u8.transpose(0, 2, 3, 1)).maps, want, rtol=1e-6)


def test_synthesis_stays_in_the_users_range(rng):
    backend = convscope.load(_net(False), preprocess="caffe")
    dream = convscope.synthesis.deepdream(backend, rng.random((1, 3, 16, 16), dtype=np.float32), "body.1",
                                          octaves=1, steps=3, step_size=0.1, progress=False)
    assert 0 <= dream.image.min() and dream.image.max() <= 1 and backend.value_range == (0.0, 1.0)


def test_keras_application_modes_equal_keras_own_preprocess_input(rng):
    keras = pytest.importorskip("keras")
    apps = keras.applications
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    for name, module in (("resnet50", apps.resnet), ("vgg16", apps.vgg16), ("mobilenetv2_1.00_224", apps.mobilenet_v2),
                         ("inception_v3", apps.inception_v3), ("densenet121", apps.densenet),
                         ("efficientnetb0", apps.efficientnet), ("resnet50v2", apps.resnet_v2),
                         ("MobileNetV3Small", apps.mobilenet_v3), ("convnext_tiny", apps.convnext)):
        preset, note = keras_mode(type("M", (), {"name": name})())
        want = np.asarray(module.preprocess_input(x.transpose(0, 2, 3, 1) * 255.0)).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(PRESETS[preset].apply(x), want, rtol=1e-4, atol=1e-3, err_msg=name)
        assert preset in note


def test_fit_image_keeps_the_aspect_and_composites_alpha():
    from PIL import Image

    a = np.zeros((100, 200, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 100:] = (0, 0, 255)
    crop, notes = fit_image(Image.fromarray(a), (32, 32), "crop")  # 64 x 32 after resizing the short side
    assert crop.shape == (3, 32, 32) and notes == ["resized from 200x100 (crop)"]
    assert (crop[0, :, :15] > 0.99).all() and (crop[2, :, 17:] > 0.99).all()
    pad, _ = fit_image(Image.fromarray(a), (32, 32), "pad")  # 32 x 16 band in grey
    assert np.allclose(pad[:, :7], 128 / 255) and np.allclose(pad[:, 25:], 128 / 255) and pad[0, 16, 2] > 0.99
    stretch, _ = fit_image(Image.fromarray(a), (32, 32), "stretch")
    assert (stretch[0, :, :15] > 0.99).all() and (stretch[2, :, 17:] > 0.99).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (0, 0, 0, 255)  # opaque black top, transparent bottom
    out, notes = fit_image(Image.fromarray(rgba, "RGBA"), (8, 8))
    assert "alpha composited on white" in notes and out[:, :4].max() == 0 and out[:, 4:].min() == 1


def test_bad_preprocessing_is_refused():
    with pytest.raises(ValueError, match=r"'preprocess' parameter of convscope.load must be a preset name .* Got "
                                         r"'imagenett' instead; presets: imagenet"):
        convscope.load(_net(False), preprocess="imagenett")
    with pytest.raises(ValueError, match=r"'preprocess' parameter of convscope.load must be a mean of 1 or 3 values"):
        convscope.load(_net(False), preprocess=Preprocess(mean=(0.5, 0.5)))
    with pytest.raises(ValueError, match=r"'std' parameter of Preprocess must be as many values as mean \(3\)"):
        Preprocess(mean=MEAN, std=(1, 2))
    with pytest.raises(ValueError, match=r"'order' parameter of Preprocess must be one of 'RGB', 'BGR'"):
        Preprocess(order="GBR")
    with pytest.raises(ValueError, match=r"'preprocess' parameter of convscope.load is 'keras'"):
        convscope.load(_net(False), preprocess="keras")
