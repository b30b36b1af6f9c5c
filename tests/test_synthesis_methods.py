"""DeepDream, feature inversion, Gram textures and style transfer, Efros-Leung and fooling
images on the torch demo model, each checked by independent forward passes."""
import numpy as np
import pytest

from test_synthesis import Counting

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def demo():
    import convscope
    from convscope.data import demo_model, shapes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny passes: one thread is faster and steadier on a shared machine
    backend = convscope.load(demo_model("torch"))
    backend.layers()
    yield backend, shapes(8, seed=3)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- DeepDream
def test_deepdream_amplifies_the_layer(demo):
    from convscope.synthesis import deepdream, evaluate, layer_l2

    backend, data = demo
    image = data.images[:1]
    counting = Counting(backend)
    dream = deepdream(counting, image, "relu2", octaves=3, steps=4, step_size=0.02, progress=False)
    assert counting.calls["gradient"] == 12 and counting.calls["forward"] == counting.calls["activations"] == 0
    assert dream.image.shape == image.shape and dream.image.min() >= 0 and dream.image.max() <= 1
    before, after = evaluate(backend, layer_l2("relu2"), np.concatenate([image, dream.image]))
    assert after > 2 * before
    assert np.abs(dream.image - image).mean() > 0.02
    assert dream.to_rgb().shape[1] > 2 * 64


def test_deepdream_on_a_fixed_size_model_enlarges_the_small_octaves(demo):
    from convscope.synthesis import deepdream

    backend, data = demo
    seen = []

    class FixedSize(Counting):
        fixed_size = (64, 64)

        def gradient(self, x, seeds, **kw):
            seen.append(x.shape[2:])
            return super().gradient(x, seeds, **kw)

    dream = deepdream(FixedSize(backend), data.images[:1], "relu3", octaves=2, steps=2, progress=False)
    assert seen == [(64, 64)] * 4 and dream.image.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"'x' parameter of deepdream must be images of size \(64, 64\)"):
        deepdream(FixedSize(backend), data.images[:1, :, :48, :48], "relu3", progress=False)


# ----------------------------------------------------------------------------- inversion
def test_inversion_early_layer_is_close_deep_layer_keeps_features_only(demo):
    """relu1 reconstructs the image above 25 dB PSNR; relu4's reconstruction keeps its
    features within 10 % relative error while its PSNR is at least 10 dB lower."""
    from convscope.synthesis import invert, psnr

    backend, data = demo
    image = data.images[1:2]
    counting = Counting(backend)
    result = invert(counting, image, ["relu1", "relu4"], steps=80, progress=False)
    assert counting.calls["gradient"] == 80 and counting.calls["activations"] == 1  # the targets, once
    early, deep = result.reconstructions
    for layer, rec in zip(result.layers, result.reconstructions):
        target = backend.activations(image, [layer])[layer]
        got = backend.activations(rec[None], [layer])[layer]
        assert np.sum((got - target) ** 2) / np.sum(target ** 2) < 0.1
    assert psnr(early, image[0]) > 25
    assert psnr(deep, image[0]) < psnr(early, image[0]) - 10
    assert result.psnr[0] == pytest.approx(psnr(early, image[0]))
    assert result.to_rgb().shape[1] > 3 * 64


# ----------------------------------------------------------------------------- texture, style
def test_texture_gram_loss_falls_tenfold(demo):
    from convscope.synthesis import style_loss, texture

    backend, data = demo
    layers = ["relu1", "relu2", "relu3"]
    result = texture(backend, data.images[0:1], layers, steps=100, progress=False)
    noise = np.random.default_rng(0).uniform(0.3, 0.7, (1, 3, 64, 64)).astype(np.float32)
    start, end = style_loss(backend, np.concatenate([noise, result.image]), data.images[0:1], layers)
    assert end < start / 10, (start, end)
    assert result.loss < result.initial_loss / 10
    assert result.history.shape == (100,)


def test_style_transfer_moves_style_and_keeps_content(demo):
    """The style loss falls at least fivefold while the content loss stays below 0.5
    (relative squared error of the content layer's features)."""
    from convscope.synthesis import style_loss, style_transfer

    backend, data = demo
    content, style = data.images[2:3], data.images[5:6]
    result = style_transfer(backend, content, style, steps=60, progress=False)
    layers = ["relu1", "relu2", "relu3", "relu4"]
    before, after = style_loss(backend, np.concatenate([content, result.image]), style, layers)
    assert after < before / 5
    f0 = backend.activations(content, ["relu3"])["relu3"]
    f = backend.activations(result.image, ["relu3"])["relu3"]
    assert np.sum((f - f0) ** 2) / np.sum(f0 ** 2) < 0.5
    only_content = style_transfer(backend, content, style, style_weight=0.0, steps=10, progress=False)
    assert only_content.content_history.max() < 0.05 < result.content_history[-1]  # the weights decide


def test_efros_leung_copies_exemplar_pixels(demo):
    from convscope.synthesis import efros_leung

    _, data = demo
    exemplar = data.images[5][:, 20:52, 20:52]
    a = efros_leung(exemplar, (20, 20), window=7, seed=1, progress=False)
    b = efros_leung(exemplar, (20, 20), window=7, seed=1, progress=False)
    assert np.array_equal(a.image, b.image) and a.image.shape == (1, 3, 20, 20)
    colours = {tuple(c) for c in exemplar.reshape(3, -1).T}
    assert all(tuple(c) in colours for c in a.image[0].reshape(3, -1).T)
    with pytest.raises(ValueError, match=r"'window' parameter of efros_leung must be odd"):
        efros_leung(exemplar, 10, window=6)


# ----------------------------------------------------------------------------- fooling
def test_pgd_fools_the_demo_model_within_the_budget(demo):
    from convscope.synthesis import fool

    backend, data = demo
    x, y = data.images[:4], data.labels[:4]
    target = (y + 1) % 4
    eps = 12 / 255
    result = fool(backend, x, target, epsilon=eps, steps=30, confidence=0.9, progress=False)
    p = backend.forward(result.adversarial)
    p = np.exp(p - p.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert result.success.all()
    assert (p.argmax(1) == target).all() and (p[np.arange(4), target] >= 0.9).all()
    delta = (result.adversarial - x).reshape(4, -1)
    assert (np.abs(delta).max(1) <= eps + 1e-6).all()
    np.testing.assert_allclose(result.linf, np.abs(delta).max(1), rtol=1e-6)
    np.testing.assert_allclose(result.l2, np.linalg.norm(delta.astype(np.float64), axis=1), rtol=1e-5)
    assert (result.steps_taken < 30).all()  # stopped at the target confidence


def test_fgsm_is_one_signed_step(demo):
    from convscope.synthesis import fool

    backend, data = demo
    x, target = data.images[:2], np.array([1, 2])
    counting = Counting(backend)
    result = fool(counting, x, target, method="fgsm", epsilon=0.01, progress=False)
    assert counting.calls["gradient"] == 1
    z = backend.forward(x)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    seed = -p
    seed[np.arange(2), target] += 1
    g = backend.gradient(x, {"output": seed}).grads["input"]
    np.testing.assert_allclose(result.adversarial, np.clip(x + 0.01 * np.sign(g), 0, 1), atol=1e-6)


def test_fooling_images_from_noise(demo):
    from convscope.synthesis import fool

    backend, _ = demo
    noise = np.random.default_rng(0).uniform(0.3, 0.7, (4, 3, 64, 64)).astype(np.float32)
    result = fool(backend, noise, [0, 1, 2, 3], epsilon=None, confidence=0.99, steps=100, progress=False)
    assert result.success.all() and (result.probabilities.max(1) >= 0.99).all()


def test_bad_input_of_the_methods(demo):
    from convscope.synthesis import deepdream, fool, invert, style_transfer, texture

    backend, data = demo
    x = data.images[:1]
    with pytest.raises(ValueError, match=r"'target' parameter of fool must be a class index < 4"):
        fool(backend, x, 7, progress=False)
    with pytest.raises(ValueError, match=r"'epsilon' parameter of fool must be > 0"):
        fool(backend, x, 1, epsilon=-0.1)
    with pytest.raises(ValueError, match=r"'layers' parameter of invert must be a known layer name\. Got 'conv7'"):
        invert(backend, x, ["relu1", "conv7"])
    with pytest.raises(ValueError, match=r"'steps' parameter of invert must be >= 1\. Got -5"):
        invert(backend, x, "relu1", steps=-5)
    with pytest.raises(ValueError, match=r"'style_weight' parameter of style_transfer must be >= 0"):
        style_transfer(backend, x, x, style_weight=-1.0)
    with pytest.raises(ValueError, match=r"'layer_weights' parameter of texture must be >= 0"):
        texture(backend, x, ["relu1", "relu2"], layer_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"'steps' parameter of deepdream must be >= 1"):
        deepdream(backend, x, "relu2", steps=0)
    with pytest.raises(ValueError, match=r"'layer' parameter of deepdream must be a known layer name"):
        deepdream(backend, x, "relu_2")
