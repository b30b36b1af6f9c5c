"""Layer records of torch-exported ONNX graphs: what is a layer, its layout, its data flow and
its geometry, against independent references: torch's own tensors (forward hooks), the
architectures' shapes, and geometry computed by hand from the modules' arguments.

The architectures (tests/onnx_exports.py) follow MobileNetV3, ConvNeXt, ShuffleNetV2, ViT,
DenseNet, and a net with F.pad, ZeroPad2d, a crop, nn.Upsample and ConvTranspose2d."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import convscope  # noqa: E402

import onnx_exports as ox  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")

ARCHITECTURES = ["mobilenet", "convnext", "shufflenet", "vit", "densenet", "padded"]
SHAPE = (3, ox.SIZE, ox.SIZE)


@pytest.fixture(scope="module")
def built():
    """{name: (torch module, ONNX backend, {record name: record})}."""
    out = {}
    for name in ARCHITECTURES:
        module, data = ox.exported(name)
        backend = convscope.load(data, input_shape=SHAPE)
        out[name] = (module, backend, {r.name: r for r in backend.layers()}, onnx.load_from_string(data))
    return out


def images(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def hooked(module, x, submodule, fn=lambda t: t):
    """The output of ``submodule`` in torch's forward pass of ``x`` (through ``fn``)."""
    got = {}

    def keep(module, inputs, output):  # returns None: the output stays torch's
        got.setdefault("out", fn(output).detach().numpy())

    handle = submodule.register_forward_hook(keep)
    try:
        with torch.no_grad():
            module(torch.from_numpy(x))
    finally:
        handle.remove()
    return got["out"]


def cam_layer(records):
    """The default CAM layer by the rule core applies: the last channels-first map, H x W > 1."""
    return [r.name for r in records if r.layout == "chw" and len(r.shape) == 3 and r.shape[1] * r.shape[2] > 1][-1]


# --------------------------------------------------------------------------- what is a layer
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_no_constant_is_a_layer_and_every_layer_varies_with_the_image(built, name):
    _, backend, records, model = built[name]
    constants = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # Identity of a weight, Constant, shape arithmetic
        if node.op_type in ("Constant", "Shape", "ConstantOfShape") or set(node.input) <= constants | {""}:
            constants.update(node.output)
    assert not constants & set(records)
    assert all(r.shape not in ((), None) for r in records.values())
    a, b = backend.activations(images(seed=1), list(records)), backend.activations(images(seed=2), list(records))
    for layer in records:
        assert not np.allclose(a[layer], b[layer]), layer
    assert list(records)[0].endswith("Conv_output_0")  # the first record is the first conv, not a constant


def test_identity_shared_biases_no_longer_hide_the_maps(built):
    """The regression of issue 15: torch shares equal zero biases through Identity nodes."""
    _, backend, records, model = built["mobilenet"]
    shared = [n.output[0] for n in model.graph.node if n.op_type == "Identity"]
    assert shared and not set(shared) & set(records)
    x = images(4)
    found = convscope.features.top_patches(backend, x, layer=cam_layer(records.values()), channels=[0, 1], k=2)
    assert found is not None


# --------------------------------------------------------------------------- layouts
def test_convnext_permuted_blocks_are_channels_last(built):
    _, _, records, _ = built["convnext"]
    by_op = lambda op: [r for r in records.values() if r.op == op]  # noqa: E731
    assert all(r.layout == "hwc" for r in by_op("LayerNormalization"))
    assert [r.shape for r in by_op("MatMul")] == [(8, 8, 64), (8, 8, 16), (4, 4, 96), (4, 4, 24)]
    assert all(r.layout == "hwc" for r in by_op("MatMul") + by_op("Erf"))
    transposes = by_op("Transpose")
    assert [r.layout for r in transposes] == ["hwc", "chw"] * 5
    head = [r for r in by_op("LayerNormalization") if "classifier" in r.name][0]
    assert head.shape == (1, 1, 24) and not head.spatial
    assert [r.layout for r in records.values() if r.kind == "conv"] == ["chw"] * 4


def test_vit_tokens_vectors_and_attention_is_never_a_map(built):
    _, _, records, _ = built["vit"]
    assert [r.name for r in records.values() if r.layout == "chw"] == ["/patch/Conv_output_0"]
    assert records["/Reshape_output_0"].layout == "other"  # (N, D, T) before the transpose
    assert records["/Transpose_output_0"].layout == "tokens" and records["/Transpose_output_0"].shape == (64, 16)
    tokens = [r for r in records.values() if r.layout == "tokens"]
    assert all(r.shape[0] in (64, 65) for r in tokens)
    assert {r.op for r in tokens} >= {"Concat", "Add", "LayerNormalization", "MatMul"}
    attention = [r for r in records.values() if r.op in ("Softmax", "Split", "Squeeze")
                 or r.name.startswith(("/Transpose_1", "/Transpose_2", "/Transpose_3"))]
    assert attention and all(r.layout == "other" for r in attention)
    assert records["/Gather_4_output_0"].layout == "vector" and records["logits"].layout == "vector"


def test_shufflenet_chunks_and_channel_shuffle(built):
    _, _, records, _ = built["shufflenet"]
    slices = [r for r in records.values() if r.op == "Slice"]
    assert [(r.layout, r.shape, r.kernel) for r in slices] == [("chw", (8, 8, 8), None)] * 2  # channels: no geometry
    five_d = [r for r in records.values() if r.shape is not None and len(r.shape) == 4]
    assert [r.layout for r in five_d] == ["other", "other"]
    back = records["/unit/Reshape_1_output_0"]
    assert back.layout == "chw" and back.inputs == ("/unit/Concat_output_0",)  # the shuffle moves channels only
    assert records["/ReduceMean_output_0"].layout == "vector"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_layouts_match_the_shapes_torch_computes(built, name):
    """Every chw record has the (C, H, W) of a 4-d tensor; vectors are (D,); tokens (T, D)."""
    _, _, records, _ = built[name]
    rank = {"chw": 3, "hwc": 3, "tokens": 2, "vector": 1}
    for r in records.values():
        assert r.layout in convscope.backend.LAYOUTS
        if r.layout in rank:
            assert len(r.shape) == rank[r.layout], r.name
    assert records["logits"].layout == "vector" and records["logits"].shape == (5,)


# --------------------------------------------------------------------------- the default CAM layer
CAM_TENSORS = {  # architecture: (torch submodule, what of its output the CAM layer holds)
    "mobilenet": (lambda m: m.last, lambda t: t),
    "convnext": (lambda m: m.stage2, lambda t: t),
    "densenet": (lambda m: m.features, torch.relu),  # the final F.relu before the pooling
    "vit": (lambda m: m.patch, lambda t: t),  # the only map: the patch embedding
    "shufflenet": (lambda m: m.conv5, lambda t: t),
    "padded": (lambda m: m.deconv, torch.relu),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_cam_layer_is_the_tensor_torch_would_pick(built, name):
    module, backend, records, _ = built[name]
    layer = cam_layer(records.values())
    x = images(2, seed=3)
    submodule, fn = CAM_TENSORS[name]
    want = hooked(module, x, submodule(module), fn)
    got = backend.activations(x, [layer])[layer]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert records[layer].layout == "chw"


def test_densenet_cam_layer_feeds_global_average_pooling_and_the_linear_head(built):
    _, _, records, _ = built["densenet"]
    names = list(records)
    layer = cam_layer(records.values())
    pool, flat, fc = (records[n] for n in names[names.index(layer) + 1:])
    assert records[layer].op == "Relu" and pool.op == "GlobalAveragePool" and pool.kernel == (4, 4)
    assert (flat.kind, fc.kind) == ("flatten", "linear")
    assert convscope._layers.gap_linear_head(list(records.values()), layer, "cam") == "logits"


# --------------------------------------------------------------------------- data flow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_inputs_name_earlier_layers_or_the_image(built, name):
    _, _, records, _ = built[name]
    seen = {"input"}
    for r in records.values():
        assert r.inputs and set(r.inputs) <= seen, r.name
        seen.add(r.name)


def test_inputs_follow_branches_gates_and_concatenations(built):
    records = built["mobilenet"][2]
    assert records["/stem/stem.0/Conv_output_0"].inputs == ("input",)
    assert records["/block/block.6/Mul_output_0"].inputs == ("/block/block.5/HardSwish_output_0",
                                                             "/block/block.6/HardSigmoid_output_0")
    assert records["/block/block.6/HardSigmoid_output_0"].shape == (32, 1, 1)  # the gate
    assert records["/Add_output_0"].inputs == ("/stem/stem.2/HardSwish_output_0", "/block/block.7/Conv_output_0")
    dense = built["densenet"][2]
    assert dense["/features/features.5/Concat_output_0"].inputs == ("/features/features.4/Concat_output_0",
                                                                    "/features/features.5/conv/Conv_output_0")
    vit = built["vit"][2]
    assert vit["/Concat_2_output_0"].inputs == ("/Transpose_output_0",)  # the class token is a constant
    assert vit["/Add_1_output_0"].inputs == ("/Add_output_0", "/proj/Add_output_0")
    shuffle = built["shufflenet"][2]
    assert shuffle["/unit/Concat_output_0"].inputs == ("/unit/Slice_output_0", "/unit/branch/branch.6/Relu_output_0")


# --------------------------------------------------------------------------- geometry, by hand
def test_padding_cropping_upsampling_and_transposed_conv_geometry(built):
    records = built["padded"][2]
    unit = dict(kernel=(1, 1), stride=(1, 1), dilation=(1, 1))
    zero = records["/zero/Pad_output_0"]  # ZeroPad2d((left 1, right 2, top 3, bottom 0))
    assert (zero.kind, zero.shape, zero.padding) == ("pad", (8, 33, 33), (3, 1, 0, 2))
    assert (zero.kernel, zero.stride, zero.dilation) == tuple(unit.values())
    pad = records["/Pad_output_0"]  # F.pad(h, (left 2, right 2, top 1, bottom 1))
    assert (pad.kind, pad.shape, pad.padding, pad.kernel) == ("pad", (8, 18, 20), (1, 2, 1, 2), (1, 1))
    up = records["/up/Resize_output_0"]
    assert (up.kind, up.stride, up.kernel, up.shape) == ("upsample", (2, 2), None, (8, 36, 40))
    rows, cols = records["/Slice_1_output_0"], records["/Slice_2_output_0"]  # [:, :, 4:-4, 3:-9]
    assert (rows.kind, rows.padding, rows.shape) == ("crop", (-4, 0, -4, 0), (8, 28, 40))
    assert (cols.kind, cols.padding, cols.kernel) == ("crop", (0, -3, 0, -9), (1, 1))
    deconv = records["/deconv/ConvTranspose_output_0"]  # k 3, s 2, p 1, output_padding 1 off the end
    assert (deconv.kind, deconv.kernel, deconv.stride, deconv.dilation) == ("deconv", (3, 3), (2, 2), (1, 1))
    assert deconv.padding == (1, 1, 0, 0) and deconv.shape == (4, 56, 56)
    for r in (deconv,):  # out = s (in - 1) + d (k - 1) + 1 - top - bottom
        assert r.shape[1] == 2 * (28 - 1) + 2 + 1 - r.padding[0] - r.padding[2]
    mean = records["/ReduceMean_output_0"]
    assert (mean.kind, mean.op, mean.kernel, mean.stride, mean.shape) == ("pool", "ReduceMean", (56, 56), (56, 56), (4,))


def test_global_pooling_geometry_covers_the_whole_map(built):
    shuffle, mobile = built["shufflenet"][2], built["mobilenet"][2]
    assert shuffle["/ReduceMean_output_0"].kind == "pool" and shuffle["/ReduceMean_output_0"].kernel == (4, 4)
    gap = mobile["/pool/GlobalAveragePool_output_0"]
    assert (gap.kind, gap.kernel, gap.stride, gap.padding) == ("pool", (16, 16), (16, 16), (0, 0, 0, 0))
    conv = built["convnext"][2]["/stage1/dwconv/Conv_output_0"]
    assert (conv.kernel, conv.padding, conv.stride) == ((7, 7), (3, 3, 3, 3), (1, 1))


# --------------------------------------------------------------------------- receptive fields (core reads the records)
def test_receptive_field_through_pads_crops_upsampling_and_a_transposed_conv(built):
    """Rows, by hand (unit at position y sees input rows [S y + a, S y + b]): conv 3x3 (1, 0, 2);
    ZeroPad top 3 (1, -3, -1); conv 3x3/2 (2, -3, 1); F.pad top 1 (2, -5, -1); nearest x2 reads
    within one input of y / 2 (1, -7, 1); crop 4 rows (1, -3, 5); ConvTranspose k 3, s 2, p 1
    (1/2, -3.5, 5.5). Columns: (1, 0, 2), pad left 1 (1, -1, 1), (2, -1, 3), left 2 (2, -5, -1),
    (1, -7, 1), crop 3 (1, -4, 4), (1/2, -4.5, 4.5). Unit (0, 0): rows [-4, 7), columns [-5, 6)."""
    backend = built["padded"][1]
    field = convscope.features.receptive_field(backend, "/Relu_1_output_0", 0, 0, image_size=(32, 32))
    assert field.box == (-4, -5, 7, 6) and field.clipped == (0, 0, 7, 6)


def test_receptive_field_through_channels_last_blocks_and_a_channel_shuffle(built):
    """ConvNeXt: stem 4x4/4 (4, 0, 3); 7x7 pad 3 (4, -12, 15); the permuted block keeps it;
    2x2/2 (8, -12, 19); 7x7 pad 3 (8, -36, 43). ShuffleNet: 3x3/2 p1 (2, -1, 1); pool 3x3/2 p1
    (4, -3, 3); branch 3x3 p1 (4, -7, 7), the union with the identity half; 3x3/2 p1 (8, -11, 11)."""
    convnext, shuffle = built["convnext"][1], built["shufflenet"][1]
    field = convscope.features.receptive_field(convnext, "/stage2/Add_1_output_0", 1, 2)
    assert field.box == (8 - 36, 16 - 36, 8 + 43 + 1, 16 + 43 + 1)
    inside = convscope.features.receptive_field(convnext, "/stage1/pw1/MatMul_output_0", 1, 1)
    assert inside.box == (4 - 12, 4 - 12, 4 + 16, 4 + 16)
    field = convscope.features.receptive_field(shuffle, "/conv5/conv5.2/Relu_output_0", 1, 1)
    assert field.box == (8 - 11, 8 - 11, 8 + 12, 8 + 12)
    shuffled = convscope.features.receptive_field(shuffle, "/unit/Reshape_1_output_0", 0, 0)
    assert shuffled.box == (-7, -7, 8, 8)


@pytest.mark.parametrize("name", ["convnext", "shufflenet", "densenet", "padded"])
def test_top_patches_run_on_the_default_cam_layer(built, name):
    _, backend, records, _ = built[name]
    layer = cam_layer(records.values()) if name != "padded" else "/Slice_2_output_0"  # whole-pixel strides
    found = convscope.features.top_patches(backend, images(4, seed=5), layer=layer, channels=[0, 1], k=2)
    assert found is not None
