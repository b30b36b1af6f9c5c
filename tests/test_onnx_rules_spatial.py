"""The ONNX backend's gradient rules for spatial and shape operators: selecting, repeating,
padding, resizing, transposed convolution (cases in tests/onnx_rule_cases.py), each against
float64 finite differences of the reference evaluator (tests/onnx_rule_helpers.py); what the
reference cannot check (cropping pads, integer side paths, operators without a rule);
torch-exported modules against torch autograd; and the rules at the oldest opset kept.
Pointwise operators are in test_onnx_rules_pointwise.py.
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402

import convscope  # noqa: E402
from onnx_exports import export  # noqa: E402

import onnx_models as om  # noqa: E402
from onnx_rule_cases import CASES, SPATIAL, case_model  # noqa: E402
from onnx_rule_helpers import F32, SHAPE, build_model, check_gradient, i64, rel_l2  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")


@pytest.mark.parametrize("name", SPATIAL)
def test_rule_matches_float64_finite_differences(name):
    model, shape = case_model(name)
    check_gradient(model, shape=shape, seed=sorted(CASES).index(name))


# --------------------------------------------------------------------------- beyond the reference
def test_pad_with_negative_pads_crops_and_the_crop_gets_no_gradient():
    """The reference evaluator cannot crop with Pad; the rule is checked against the slicing it means."""
    g = om.Graph()
    model = build_model(g, g.op("Pad", ["x", g.const(i64(0, 1, -1, 2, 0, 0, 2, -2))]))
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(F32)
    backend = convscope.load(model)
    out = backend.forward(x)
    assert out.shape == (2, 4 * 5 * 5)
    seed = np.random.default_rng(1).standard_normal(out.shape).astype(F32)
    got = backend.gradient(x, {"output": seed})["input"]
    dy = seed.reshape(2, 4, 5, 5)  # channels: 1 padded before; H: 1 cut, 2 padded at the end; W: 2 before, 2 cut
    want = np.zeros_like(x)
    want[:, :, 1:, :3] = dy[:, 1:, :3, 2:]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_nonzero_on_the_side_carries_no_adjoint():
    """y = x * (number of positive elements of a weight-free tensor) / 1000: the count is an
    integer path (NonZero -> Shape -> Gather -> Cast) and only the factor reaches x."""
    g = om.Graph()
    found = g.op("NonZero", [g.op("Greater", ["x", g.const(F32(0))])])
    count = g.op("Cast", [g.op("Gather", [g.op("Shape", [found]), g.const(np.int64(1))])], to=TensorProto.FLOAT)
    model = build_model(g, g.op("Mul", ["x", g.op("Mul", [count, g.const(F32(1e-3))])]))
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(F32)
    seed = np.random.default_rng(1).standard_normal((1, x.size)).astype(F32)
    got = convscope.load(model).gradient(x, {"output": seed})["input"]
    np.testing.assert_allclose(got, seed.reshape(x.shape) * (x > 0).sum() * 1e-3, rtol=1e-5)


def test_operators_without_a_rule_are_all_named_and_gradient_free_methods_still_run():
    g = om.Graph()
    hard = g.op("Hardmax", [g.op("Reshape", ["x", g.const(i64(0, -1))])], axis=1)
    values = g.nodes[-1].output[0]
    top = g.op("TopK", ["x", g.const(i64(2))], ["top_values", "top_indices"], axis=3)
    out = g.op("Add", [g.op("Flatten", [top]), g.op("Slice", [values, g.const(i64(0)), g.const(i64(24)),
                                                               g.const(i64(1))])])
    model = build_model(g, out)
    assert hard == values
    backend = convscope.load(model)
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(F32)
    assert backend.forward(x).shape == (2, 24)
    with pytest.raises(convscope.backends.onnxruntime.UnsupportedOperatorError,
                       match=r"No gradient rule for 2 operator\(s\) on the gradient path \(Hardmax, TopK\): "
                             r"Hardmax \(node 'hardmax_\d+'.*TopK \(node 'topk_\d+' with output 'top_values'\).*"
                             r"gradient-free methods .* still work"):
        backend.gradient(x, {"output": np.ones((2, 24), F32)})
    assert "Hardmax" not in convscope.backends.onnxruntime.adjoint.supported_operators()
    np.testing.assert_array_equal(backend.activations(x, ["top_values"])["top_values"].shape, (2, 3, 4, 2))


# --------------------------------------------------------------------------- torch-exported models
def _torch_modules():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Activations(nn.Module):
        """MobileNetV3-style: Hardswish, a squeeze-excite gate with Hardsigmoid on x.mean((2, 3)),
        GELU (both forms), SiLU, ELU, Softplus, LeakyReLU, PReLU and ReLU6."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.squeeze, self.excite = nn.Linear(8, 4), nn.Linear(4, 8)
            self.mix = nn.Conv2d(8, 8, 1)
            self.prelu = nn.PReLU(8, 0.2)
            self.head = nn.Linear(8 * 36, 5)

        def forward(self, x):
            h = nn.functional.hardswish(self.conv(x))
            gate = F.hardsigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3))))))
            h = h * gate[:, :, None, None]
            h = F.gelu(h) + F.gelu(self.mix(h), approximate="tanh") + F.silu(h) - F.elu(h, 0.5) + F.softplus(h)
            h = F.relu6(self.prelu(F.leaky_relu(h, 0.1)) * 3)
            return self.head(h.flatten(1))

    class Shapes(nn.Module):
        """LayerNorm over channels through a permute, torch.chunk, a channel shuffle, reflect and
        replicate padding, nearest and bilinear upsampling, and a grouped, dilated ConvTranspose2d."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
            self.dilated = nn.ConvTranspose2d(4, 4, 2, stride=1, padding=1, dilation=2)
            self.group_norm = nn.GroupNorm(2, 8)
            self.instance_norm = nn.InstanceNorm2d(4, affine=True)
            self.head = nn.Linear(4 * 8 * 8 + 8, 5)

        def forward(self, x):
            h = self.conv(x)
            h = self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            a, b = torch.chunk(h, 2, dim=1)
            h = torch.cat([torch.tanh(a), b * 2], dim=1)
            n, c, hh, ww = h.shape
            h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)  # channel shuffle
            h = self.group_norm(F.pad(h, (1, 2, 2, 1), mode="reflect"))[:, :, 1:-2, 2:-1]
            pooled = h.amax((2, 3))
            h = F.interpolate(h, scale_factor=2, mode="nearest")  # 12 x 12
            h = F.interpolate(h, size=(6, 6), mode="bilinear", align_corners=False)
            h = self.instance_norm(self.dilated(self.up(h)))  # 12 x 12 -> 10 x 10
            h = F.interpolate(F.pad(h, (1, 1, 0, 0), mode="replicate"), size=(8, 8), mode="bilinear",
                              align_corners=True)
            return self.head(torch.cat([h.flatten(1), pooled], 1))

    class TinyViT(nn.Module):
        """Patch embedding, class token concatenated in front, position embedding, pre-norm
        multi-head attention and a GELU MLP, the class token read as x[:, 0]."""

        def __init__(self, dim=8):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 2, stride=2)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 10, dim) * 0.1)
            self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
            self.head = nn.Linear(dim, 5)

        def attend(self, h, heads=2):  # as timm writes it
            n, t, d = h.shape
            q, k, v = self.qkv(h).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
            weights = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 9, dim)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
            t = t + self.attend(self.norm1(t))
            t = t + self.mlp(self.norm2(t))
            return self.head(self.norm3(t)[:, 0])

    return {"activations": Activations, "shapes": Shapes, "vit": TinyViT}


@pytest.mark.parametrize("name", ["activations", "shapes", "vit"])
def test_torch_exported_models_match_torch_autograd(name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = _torch_modules()[name]().eval()
    shape = (3, 6, 6)
    backend = convscope.load(export(module, shape=shape))
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(F32)
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(F32)
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        y = module(xt)
        (want,) = torch.autograd.grad(y, xt, torch.from_numpy(seed))
    assert rel_l2(backend.forward(x), y.detach().numpy()) < 1e-5
    got = backend.gradient(x, {"output": seed})["input"]
    assert rel_l2(got, want.numpy()) < 1e-4


AT_OPSET_16 = ["Slice_strided_two_axes", "Slice_computed_starts", "Gather_2d_indices", "Gather_many_runs",
               "GatherElements_argmax", "Pad_edge", "Resize_nearest_torch", "Resize_cubic", "MatMul_vector_varies",
               "ReduceMax_attr", "ReduceMean_attr", "Tile", "Split_input_sizes", "Where_both_values",
               "Pow_varying_exponent", "DepthToSpace_CRD", "CumSum_reverse_exclusive", "ConvTranspose_stride_pads_output_padding"]


@pytest.mark.parametrize("name", AT_OPSET_16)
def test_rules_emit_what_the_oldest_opset_served_runs(name):
    """A model at opset 16 (the oldest the backend keeps) gets backward nodes valid at opset 16."""
    model, shape = case_model(name)
    model.opset_import[0].version = 16
    onnx.checker.check_model(model)
    check_gradient(model, shape=shape, seed=1)
