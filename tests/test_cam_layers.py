"""The layer a CAM reads: one rule on every backend, token models reshaped to their grid."""
import numpy as np
import pytest

from convscope._layers import default_candidates
from convscope.backend import Layer

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import convscope  # noqa: E402


def L(name, shape, inputs, layout="chw", kind="other"):
    return Layer(name, kind, shape, inputs=tuple(inputs), layout=layout)


def test_the_default_is_the_last_map_on_the_data_path_into_the_outputs():
    # an auxiliary branch runs after the last map of the trunk but does not feed the outputs
    recs = [L("stem", (8, 16, 16), ["input"]), L("block", (16, 8, 8), ["stem"]), L("relu", (16, 8, 8), ["block"]),
            L("aux", (4, 4, 4), ["block"]), L("gap", (16, 1, 1), ["relu"], kind="pool"),
            L("fc", (10,), ["gap"], layout="vector")]
    recs.insert(4, recs.pop(3))
    assert default_candidates(recs) == ("map", ["relu"])


def test_channels_last_and_one_by_one_maps_are_passed_over():
    # ConvNeXt: stage output, global pool, LayerNorm on (1, 1, C) channels-last, linear
    recs = [L("stage", (32, 4, 4), ["input"]), L("pool", (32, 1, 1), ["stage"], kind="pool"),
            L("norm", (1, 1, 32), ["pool"], layout="hwc"), L("head", (10,), ["norm"], layout="vector")]
    assert default_candidates(recs) == ("map", ["stage"])


def test_token_models_offer_their_token_layers_last_first():
    recs = [L("patch", (8, 4, 4), ["input"]), L("tokens", (17, 8), ["patch"], layout="tokens"),
            L("norm1", (17, 8), ["tokens"], layout="tokens"), L("attn", (17, 8), ["norm1", "tokens"], layout="tokens"),
            L("norm", (17, 8), ["attn"], layout="tokens"), L("cls", (8,), ["norm"], layout="vector"),
            L("head", (10,), ["cls"], layout="vector")]
    assert default_candidates(recs) == ("tokens", ["norm", "attn", "norm1", "tokens"])


def test_without_data_flow_the_last_map_in_execution_order():
    recs = [Layer("a", "conv", (8, 8, 8)), Layer("b", "conv", (8, 4, 4)), Layer("c", "pool", (8, 1, 1)),
            Layer("d", "linear", (3,))]
    assert default_candidates(recs) == ("map", ["b"])


class TinyViT(nn.Module):
    """Patch embedding, a class token, one pre-norm attention block, the head on x[:, 0]."""

    def __init__(self, dim=16, patch=8, size=32, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.1)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1) + self.pos
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.norm(t)[:, 0])


def grid_of(a):
    """(N, 17, D) tokens -> (N, D, 4, 4) patch maps, the class token dropped."""
    return a[:, 1:].reshape(len(a), 4, 4, -1).transpose(0, 3, 1, 2)


def _grad_cam_by_hand(model, x, layer, target):
    store = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(torch.from_numpy(x))
    finally:
        handle.remove()
    a = store["a"]
    g = torch.autograd.grad(out[torch.arange(len(x)), torch.as_tensor(target)].sum(), a)[0]
    a, g = grid_of(a.detach().numpy()), grid_of(g.numpy())
    return np.maximum(np.einsum("nc,nchw->nhw", g.mean(axis=(2, 3)), a), 0)


def test_a_vit_layer_with_reshape_gives_the_written_out_grad_cam(rng):
    model = TinyViT().eval()
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    got = convscope.grad_cam(model, x, [1, 3], layer="norm1", reshape=grid_of)
    want = _grad_cam_by_hand(model, x, "norm1", [1, 3])
    np.testing.assert_allclose(got.info["layer_maps"], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert got.maps.shape == (2, 32, 32)


def test_a_bad_reshape_is_refused(rng):
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    with pytest.raises(TypeError, match=r"The 'reshape' parameter of grad_cam must be None or a function"):
        convscope.grad_cam(TinyViT().eval(), x, layer="norm1", reshape="grid")
    with pytest.raises(ValueError, match=r"The 'reshape' parameter of grad_cam must be a function returning \(N, C, h, w\)"):
        convscope.grad_cam(TinyViT().eval(), x, layer="norm1", reshape=lambda a: a)
