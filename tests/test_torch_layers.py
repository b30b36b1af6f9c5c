"""Torch layer records on modern architectures: the data flow of containers whose output is
not their last child's, the layout of each record, tensors not computed from the input,
fixed-size models. Expected values are written out by hand from the architectures in
tests/torch_arch_models.py."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convscope  # noqa: E402
from convscope.features.receptive_field import field_geometry  # noqa: E402

from torch_arch_models import ConvNeXtish, EfficientNetish, MobileNetV3ish, TinyViT  # noqa: E402


def records(model, shape=(3, 32, 32)):
    return {r.name: r for r in convscope.load(model.eval(), input_shape=shape).layers()}


def test_squeeze_excitation_block_names_the_branch_and_the_gate():
    recs = records(MobileNetV3ish())
    se = recs["features.1.block.2"]
    assert se.kind == "block" and se.shape == (16, 16, 16) and se.layout == "chw"
    assert set(se.inputs) == {"features.1.block.1", "features.1.block.2.gate"}  # x * gate
    assert recs["features.1.block.2.gate"].shape == (16, 1, 1)
    # the residual block returns x + block(x): its input's producer and the block's last layer
    assert set(recs["features.1"].inputs) == {"features.0", "features.1.block"}
    # a block returning its last child's output names that child
    assert recs["features.1.block.3"].inputs == ("features.1.block.3.1",)
    # without a residual (stride 2) the block is its child's output
    assert recs["features.2"].inputs == ("features.2.block",)


def test_strides_after_a_squeeze_excitation_block_are_the_convs_strides():
    """Stem stride 2, the second block's depthwise conv stride 2: every layer after them has
    a jump of 4 input pixels (not the 32 of the global pool inside the SE gate)."""
    recs = convscope.load(MobileNetV3ish().eval(), input_shape=(3, 32, 32)).layers()
    geo = field_geometry(recs)
    assert geo["features.1.block.3.0"][0][0] == 2
    assert geo["features.3.0"][0][0] == 4 and geo["features"][1][0] == 4
    eff = field_geometry(convscope.load(EfficientNetish().eval(), input_shape=(3, 32, 32)).layers())
    assert eff["head"][0][0] == 2 and eff["blocks.1.project.0"][0][0] == 2


def test_mbconv_with_silu_and_sigmoid_gate():
    recs = records(EfficientNetish())
    assert set(recs["blocks.0.se"].inputs) == {"blocks.0.dw", "blocks.0.se.gate"}
    assert set(recs["blocks.0"].inputs) == {"stem", "blocks.0.project"}
    assert recs["blocks.1"].shape == (8, 16, 16) and recs["blocks.1"].layout == "chw"
    assert recs["blocks.0.se.gate"].kind == "activation" and recs["fc"].layout == "vector"


def test_convnext_block_between_permutes_is_channels_last():
    recs = records(ConvNeXtish())
    assert recs["stem"].layout == "chw" and recs["stem"].shape == (8, 8, 8)
    assert recs["stage.0.dwconv"].layout == "chw"
    for name, shape in [("norm", (8, 8, 8)), ("pwconv1", (8, 8, 32)), ("act", (8, 8, 32)), ("pwconv2", (8, 8, 8))]:
        r = recs[f"stage.0.{name}"]
        assert (r.layout, r.shape) == ("hwc", shape), name
        assert not r.spatial  # a channels-last map is not a (C, H, W) map
    block = recs["stage.0"]  # x + permute(gamma * y) back to channels first
    assert block.layout == "chw" and block.shape == (8, 8, 8) and block.spatial
    assert set(block.inputs) == {"stem", "stage.0.pwconv2"}
    assert recs["head"].layout == "vector" and recs["head"].shape == (4,)


def test_vit_tokens_class_token_and_positional_embedding():
    recs = records(TinyViT())
    assert recs["patch_embed"].layout == "chw" and recs["patch_embed"].shape == (16, 2, 2)
    for name in ("encoder.0.ln1", "encoder.0.attn.qkv", "encoder.0.attn", "encoder.0", "encoder", "norm"):
        assert recs[name].layout == "tokens", name
        assert recs[name].shape[0] == 5  # 4 patches and the class token
    assert "pos_embed" not in recs  # returns a parameter: not computed from the input
    assert recs["head"].layout == "vector" and recs["head"].shape == (3,)
    assert set(recs["encoder.0"].inputs) == {"patch_embed", "encoder.0.attn", "encoder.0.mlp"}


def test_a_module_of_a_constant_is_not_a_layer():
    class WithConstants(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bias_map = torch.nn.Identity()  # of a parameter
            self.expanded = torch.nn.Identity()  # of a parameter's view
            self.w = torch.nn.Parameter(torch.ones(1, 4, 1, 1))
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x) * self.bias_map(self.w) + self.expanded(self.w.expand(1, 4, 8, 8))
            return self.fc(y.mean((2, 3)))

    recs = records(WithConstants(), (3, 8, 8))
    assert set(recs) == {"conv", "fc"}
    assert recs["fc"].inputs == ("conv",)


def test_fixed_size_model_is_probed_at_its_size_and_refuses_others():
    vit = TinyViT().eval()
    backend = convscope.load(vit)
    assert backend.fixed_size == (32, 32)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(backend.forward(x), vit(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"The 'x' parameter of forward must be images of size \(32, 32\)"):
        backend.forward(np.zeros((1, 3, 48, 48), np.float32))
    assert all(not m.training for m in vit.modules())  # left as it was (eval)


def test_a_declared_size_without_an_assertion_stays_size_free():
    class Declared(MobileNetV3ish):
        input_shape = (3, 32, 32)

    assert convscope.load(Declared().eval()).fixed_size is None
    from convscope.data import demo_model

    demo = convscope.load(demo_model("torch"))
    assert demo.fixed_size is None
    demo.forward(np.zeros((1, 3, 40, 40), np.float32))


def test_every_record_has_a_layout():
    for model in (MobileNetV3ish(), EfficientNetish(), ConvNeXtish(), TinyViT()):
        for r in convscope.load(model.eval(), input_shape=(3, 32, 32)).layers():
            assert r.layout in ("chw", "hwc", "tokens", "vector", "other"), r
