"""noise_tunnel against Captum's NoiseTunnel on the same model and the same noise, the written-out
statistics, batching invariance, and bad input."""
import numpy as np
import pytest

import convscope as cs
from convscope.attribution import noise_tunnel, saliency, smoothgrad

from _assertions import assert_close as close, batch_sizes
from _box_muller import box_muller

torch = pytest.importorskip("torch")
from torch_models import scaled_small_net  # noqa: E402
captum_attr = pytest.importorskip("captum.attr")


small_net = scaled_small_net


def assert_close(got, ref, tol=1e-5):
    """Agreement within ``tol`` of the reference's largest magnitude (and that magnitude is not tiny)."""
    close(got, ref, tol, min_scale=1e-6)


@pytest.fixture(scope="module")
def setup():
    net = small_net()
    x = np.random.default_rng(1).random((3, 3, 12, 12), dtype=np.float32)
    target = net(torch.from_numpy(x)).argmax(1).numpy()
    return net, x, target


def captum_with_its_noise(monkeypatch, attribution, x, target, kind, samples, stdev, **kwargs):
    """Captum's NoiseTunnel result and the noise it drew, as (samples, N, C, H, W)."""
    drawn = []
    original = torch.normal

    def recording_normal(*args, **kw):
        out = original(*args, **kw)
        drawn.append(out.detach().numpy().copy())
        return out

    monkeypatch.setattr(torch, "normal", recording_normal)
    torch.manual_seed(0)
    nt = captum_attr.NoiseTunnel(attribution)
    ref = nt.attribute(torch.from_numpy(x), nt_type=kind, nt_samples=samples, stdevs=stdev,
                       target=torch.from_numpy(target), **kwargs).detach().numpy()
    monkeypatch.setattr(torch, "normal", original)
    (noise,) = drawn  # one partition: rows are (image, draw), repeat-interleaved
    n = len(x)
    return ref, noise.reshape(n, samples, *x.shape[1:]).transpose(1, 0, 2, 3, 4)


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_saliency_tunnel_equals_captum(monkeypatch, setup, kind):
    net, x, target = setup
    ref, noise = captum_with_its_noise(monkeypatch, captum_attr.Saliency(net), x, target, kind, 6, 0.2)
    assert np.abs(noise).max() > 0.05  # the noise is real
    for per in (1, 2, 4):
        got = noise_tunnel(net, x, target, method="saliency", kind=kind, noise=noise, perturbations_per_eval=per)
        assert_close(got.attributions, ref)
    plain = saliency(net, x, target).attributions
    assert np.abs(ref - (plain if kind == "smoothgrad" else plain ** 2)).max() > 1e-2 * np.abs(ref).max()  # the noise changed it


def test_integrated_gradients_tunnel_equals_captum(monkeypatch, setup):
    net, x, target = setup
    ig = captum_attr.IntegratedGradients(net)
    ref, noise = captum_with_its_noise(monkeypatch, ig, x, target, "smoothgrad", 4, 0.1, n_steps=16,
                                       method="gausslegendre")
    got = noise_tunnel(net, x, target, method=("integrated_gradients", {"steps": 16, "method": "gausslegendre"}),
                       noise=noise, perturbations_per_eval=3)
    assert_close(got.attributions, ref)
    assert got.info["method"] == "integrated_gradients" and got.signed


def test_statistics_written_out_and_maps_are_the_methods_maps(setup):
    """The tunnel's maps and attributions are the mean / mean square / variance of the method
    on x + noise_i, each computed here by calling saliency once per draw."""
    net, x, target = setup
    noise = np.random.default_rng(3).normal(0, 0.1, (5, *x.shape)).astype(np.float32)
    draws = [saliency(net, x + e, target) for e in noise]
    a = np.stack([d.attributions for d in draws]).astype(np.float64)
    m = np.stack([d.maps for d in draws]).astype(np.float64)
    expected = {"smoothgrad": lambda v: v.mean(0), "smoothgrad_sq": lambda v: (v ** 2).mean(0),
                "vargrad": lambda v: v.var(0)}
    for kind, stat in expected.items():
        got = noise_tunnel(net, x, target, kind=kind, noise=noise, perturbations_per_eval=2)
        assert_close(got.attributions, stat(a), 1e-6)
        assert_close(got.maps, stat(m), 1e-6)


def test_drawn_noise_is_a_fraction_of_the_range_and_seeded(setup):
    net, x, target = setup
    sigma = 0.15 * (x.reshape(3, -1).max(1) - x.reshape(3, -1).min(1))
    noise = np.stack([box_muller([7, i], x.shape).astype(np.float32)
                      * sigma.astype(np.float32)[:, None, None, None] for i in range(4)])
    by_hand = noise_tunnel(net, x, target, noise=noise)
    drawn = [noise_tunnel(net, x, target, samples=4, seed=7, perturbations_per_eval=p) for p in (1, 3)]
    for d in drawn:
        assert_close(d.attributions, by_hand.attributions, 1e-6)
    assert np.abs(noise_tunnel(net, x, target, samples=4, seed=8).attributions - by_hand.attributions).max() > 1e-3 * np.abs(by_hand.attributions).max()


def test_gradient_method_is_one_backend_call_per_chunk(setup):
    net, x, target = setup
    backend = cs.load(net)
    with batch_sizes(backend, "_gradient") as calls:
        noise_tunnel(backend, x, target, samples=7, perturbations_per_eval=3)
    assert calls == [9, 9, 3]


def test_smoothgrad_kept_and_equal_to_tunnel_of_raw_gradient(setup):
    """smoothgrad keeps its behaviour (mean gradient, then the saliency reduction); the tunnel of
    the raw gradient with the same noise gives that mean gradient."""
    net, x, target = setup
    sg = smoothgrad(net, x, target, noise=0.15, samples=4, seed=2, variant="raw")
    nt = noise_tunnel(net, x, target, method=("saliency", {"variant": "raw"}), samples=4, seed=2, stdev=0.15)
    assert_close(nt.attributions, sg.attributions, 1e-6)


def test_callable_and_forward_only_methods(setup):
    """A callable method gets the noisy batch; occlusion (forward only) inside the tunnel equals
    occlusion of each noisy copy averaged by hand."""
    net, x, target = setup
    noise = np.random.default_rng(5).normal(0, 0.1, (3, *x.shape)).astype(np.float32)
    seen = []

    def method(model, images, t):
        seen.append(len(images))
        return saliency(model, images, t)

    got = noise_tunnel(net, x, target, method=method, noise=noise, perturbations_per_eval=2)
    assert seen == [6, 3] and got.info["method"] == "method"
    assert_close(got.maps, noise_tunnel(net, x, target, noise=noise).maps, 1e-6)
    from convscope.attribution import occlusion
    occ = noise_tunnel(net, x, target, method=("occlusion", {"window": 4}), noise=noise, kind="smoothgrad_sq")
    by_hand = np.mean([occlusion(net, x + e, target, window=4).maps.astype(np.float64) ** 2 for e in noise], axis=0)
    assert_close(occ.maps, by_hand, 1e-6)


def test_model_left_as_it_was(setup):
    net, x, target = setup
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    noise_tunnel(net, x, target, samples=2)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters()) and not net._forward_hooks
    net.eval()


@pytest.mark.parametrize("kwargs, param", [
    ({"kind": "smoothgrad_squared"}, "kind"), ({"method": "no_such_method"}, "method"), ({"method": 3}, "method"),
    ({"samples": 0}, "samples"), ({"stdev": -1.0}, "stdev"), ({"perturbations_per_eval": 0}, "perturbations_per_eval"),
    ({"noise": np.zeros((2, 1, 3, 12, 12), np.float32)}, "noise"), ({"target": 9}, "target"),
    ({"method": lambda model, x, target: x}, "method")])
def test_bad_input_names_the_argument(setup, kwargs, param):
    net, x, _ = setup
    with pytest.raises((ValueError, TypeError), match=f"'{param}' parameter of noise_tunnel"):
        noise_tunnel(net, x, **kwargs)
