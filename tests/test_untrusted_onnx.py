"""An ONNX file someone downloaded is untrusted: convscope reads external data only from the
model's folder (as onnx does since CVE-2024-27318/27319), and refuses oversized, inconsistent,
cyclic or too deeply nested graphs before it allocates anything, with a ModelReadError that
says what and which limit. Every malicious file is made under tmp_path."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import convscope  # noqa: E402
from convscope.backends.onnxruntime import ModelReadError  # noqa: E402
from convscope.backends.onnxruntime import _limits  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")

W = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)  # 576 bytes
X = np.random.default_rng(1).random((2, 4, 6, 6), dtype=np.float32)


def tensor(name, dims, raw=None, floats=None, data_type=TensorProto.FLOAT):
    """A TensorProto built by hand: onnx.helper refuses the inconsistent ones these tests need."""
    t = TensorProto(name=name, data_type=data_type, dims=list(dims))
    if raw is not None:
        t.raw_data = raw
    if floats is not None:
        t.float_data.extend(floats)
    return t


def model(nodes=None, inits=None, x_dims=("N", 4, 6, 6), value_info=(), outputs=("y",), functions=()):
    """x -> Conv(w) -> c -> Flatten -> y, or the nodes given."""
    if nodes is None:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Flatten", ["c"], ["y"], name="flatten")]
    inits = [numpy_helper.from_array(W, "w")] if inits is None else inits
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              inits, value_info=list(value_info))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=list(functions))


def external(proto, location, offset=None, length=None):
    """The model with its weight 'w' marked as stored in ``location``."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
    return m


@pytest.fixture
def folder(tmp_path):
    """tmp_path/models holds the model; tmp_path/secret.bin lies outside it (the '/etc/passwd')."""
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "models" / "w.bin").write_bytes(W.tobytes())
    return tmp_path / "models"


def save(folder, proto, name="m.onnx"):
    path = folder / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_in_the_models_folder_is_read(folder):
    want = convscope.load(model()).forward(X)
    np.testing.assert_array_equal(convscope.load(save(folder, external(model(), "w.bin"))).forward(X), want)
    (folder / "sub").mkdir()
    (folder / "sub" / "w.bin").write_bytes(b"\0" * 16 + W.tobytes())
    got = convscope.load(save(folder, external(model(), "sub/w.bin", 16, W.nbytes), "n.onnx")).forward(X)
    np.testing.assert_array_equal(got, want)


def test_a_location_with_dotdot_is_refused(folder):
    path = save(folder, external(model(), "../secret.bin"))
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' has its weights in the external file '\.\./secret\.bin', "
                                             r"which convscope refuses: it has a '\.\.' component; external data must "
                                             r"lie in the model's folder\.$"):
        convscope.load(path)
    for sneaky in ("sub/../../secret.bin", "..\\secret.bin"):
        with pytest.raises(ModelReadError, match=r"it has a '\.\.' component"):
            convscope.load(save(folder, external(model(), sneaky), "s.onnx"))


def test_an_absolute_location_is_refused(folder):
    secret = str(folder.parent / "secret.bin")
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' has its weights in the external file '.*secret\.bin', "
                                             r"which convscope refuses: it is an absolute path; external data must lie "
                                             r"in the model's folder\.$"):
        convscope.load(save(folder, external(model(), secret)))
    for absolute in ("C:\\secret.bin", "\\\\server\\share\\secret.bin"):
        with pytest.raises(ModelReadError, match=r"it is an absolute path"):
            convscope.load(save(folder, external(model(), absolute), "a.onnx"))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this system")
def test_a_symlink_that_leaves_the_folder_is_refused(folder):
    (folder / "link.bin").symlink_to(folder.parent / "secret.bin")
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' has its weights in the external file 'link\.bin', which "
                                             r"convscope refuses: it resolves \(through a symlink\) to '.*secret\.bin', "
                                             r"outside the model's folder '.*models'\.$"):
        convscope.load(save(folder, external(model(), "link.bin")))
    (folder / "inside.bin").symlink_to(folder / "w.bin")  # a symlink within the folder is fine
    convscope.load(save(folder, external(model(), "inside.bin"), "i.onnx")).forward(X)


def test_a_location_that_is_not_a_regular_file_is_refused(folder):
    (folder / "dir").mkdir()
    with pytest.raises(ModelReadError, match=r"external file 'dir', which convscope refuses: it is not a regular file\.$"):
        convscope.load(save(folder, external(model(), "dir")))
    if hasattr(os, "mkfifo"):  # reading a FIFO would block for ever
        os.mkfifo(folder / "fifo")
        with pytest.raises(ModelReadError, match=r"external file 'fifo', which convscope refuses: it is not a regular"):
            convscope.load(save(folder, external(model(), "fifo"), "f.onnx"))


def test_offsets_and_lengths_must_fit_the_file_and_the_dims(folder):
    with pytest.raises(ModelReadError, match=r"external file 'w\.bin', which convscope refuses: its offset 8 and length "
                                             r"576 reach beyond the end of the file \(576 bytes\)\.$"):
        convscope.load(save(folder, external(model(), "w.bin", offset=8)))
    with pytest.raises(ModelReadError, match=r"refuses: its length 7 disagrees with the shape \(4, 4, 3, 3\) of float32, "
                                             r"which needs 576 bytes\.$"):
        convscope.load(save(folder, external(model(), "w.bin", length=7), "l.onnx"))
    with pytest.raises(ModelReadError, match=r"refuses: its offset 'abc' is not an integer\.$"):
        convscope.load(save(folder, external(model(), "w.bin", offset="abc"), "o.onnx"))
    with pytest.raises(ModelReadError, match=r"refuses: its offset -4 is negative\.$"):
        convscope.load(save(folder, external(model(), "w.bin", offset=-4), "n.onnx"))
    with pytest.raises(ModelReadError, match=r"external file 'gone\.bin', which convscope refuses: it cannot be opened in"):
        convscope.load(save(folder, external(model(), "gone.bin"), "g.onnx"))


def test_external_data_outside_the_main_initializers_is_refused(folder):
    value = numpy_helper.from_array(W, "cw")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=value),
             helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"], name="flatten")]
    with pytest.raises(ModelReadError, match=r"^The tensor in attribute 'value' of node 'const' \(Constant\) is stored in "
                                             r"an external file 'w\.bin'; convscope reads external data only for the "
                                             r"main graph's initializers\.$"):
        convscope.load(save(folder, model(nodes, inits=[])))


def test_terabyte_dims_are_refused_before_allocating():
    for raw in (b"\0" * 16, b"\0" * 4096):  # inline (small) and scanned (large) raw data
        huge = tensor("w", [1 << 20, 1 << 20, 4], raw)
        with pytest.raises(ModelReadError, match=r"^Initializer 'w' declares the shape \(1048576, 1048576, 4\), 16\.0 TiB, "
                                                 r"beyond convscope's limit of 4\.0 GiB per tensor \(convscope\.backends\."
                                                 r"onnxruntime\._limits\.MAX_TENSOR_BYTES\); the file is damaged"):
            convscope.load(model(inits=[huge]).SerializeToString())
    floats = tensor("w", [1 << 40], floats=[0.0] * 300)
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' declares the shape \(1099511627776,\), 4\.0 TiB"):
        convscope.load(model(inits=[floats]))  # a ModelProto: checked before numpy_helper sees it


def test_declared_input_and_value_info_shapes_are_bounded():
    with pytest.raises(ModelReadError, match=r"^The graph input 'x' declares the shape \(1, 4, 1048576, 1048576\), "
                                             r"16\.0 TiB, beyond convscope's limit of 4\.0 GiB per tensor"):
        convscope.load(model(x_dims=(1, 4, 1 << 20, 1 << 20)).SerializeToString())
    info = helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 1 << 30, 1 << 10, 6])
    with pytest.raises(ModelReadError, match=r"^The tensor 'c' declares the shape \('\?', 1073741824, 1024, 6\), "
                                             r"24\.0 TiB, beyond"):
        convscope.load(model(value_info=[info]).SerializeToString())
    deep = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1] * 40)
    with pytest.raises(ModelReadError, match=r"^The tensor 'c' has rank 40, above convscope's limit of 32"):
        convscope.load(model(value_info=[deep]))


def test_a_constant_shape_of_terabytes_is_refused():
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 1 << 10], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"], name="flatten")]
    with pytest.raises(ModelReadError, match=r"^Node 'fill' \(ConstantOfShape\) declares the shape \(1048576, 1048576, "
                                             r"1024\), 4096\.0 TiB, beyond convscope's limit"):
        convscope.load(model(nodes, inits=[numpy_helper.from_array(W, "w"), shape]).SerializeToString())


def test_data_that_disagrees_with_dims_is_refused():
    short = tensor("w", [4, 4, 3, 3], W.tobytes()[:500])
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' holds 500 bytes, but its shape \(4, 4, 3, 3\) of float32 "
                                             r"needs 576; the file is damaged\.$"):
        convscope.load(model(inits=[short]).SerializeToString())
    long = tensor("w", [4, 4, 3, 3], W.tobytes() * 4)
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' holds 2304 bytes, but its shape \(4, 4, 3, 3\)"):
        convscope.load(model(inits=[long]).SerializeToString())
    few = tensor("w", [4, 4, 3, 3], floats=[0.5] * 10)
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' holds 10 values in float_data, but its shape "
                                             r"\(4, 4, 3, 3\) needs 144; the file is damaged\.$"):
        convscope.load(model(inits=[few]))
    odd = numpy_helper.from_array(W, "w")
    odd.data_type = 999
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' has the element type 999, which ONNX does not define\.$"):
        convscope.load(model(inits=[odd]).SerializeToString())
    negative = tensor("w", [4, -4, 3, 3])
    with pytest.raises(ModelReadError, match=r"^Initializer 'w' has a negative dimension in its shape \(4, -4, 3, 3\)\.$"):
        convscope.load(model(inits=[negative]))


def test_a_cycle_a_dangling_input_or_output_and_a_double_producer_are_refused():
    cycle = [helper.make_node("Relu", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Flatten", ["a"], ["y"], name="flatten")]
    with pytest.raises(ModelReadError, match=r"^The nodes of the ONNX graph in the given bytes form a cycle \(among "
                                             r"'first' \(Relu\), 'second' \(Relu\), 'flatten' \(Flatten\)\); a model's "
                                             r"graph must be acyclic\.$"):
        convscope.load(model(cycle, inits=[]).SerializeToString())
    ghost = [helper.make_node("Add", ["x", "ghost"], ["a"], name="add"), helper.make_node("Flatten", ["a"], ["y"], name="f")]
    with pytest.raises(ModelReadError, match=r"^Node 'add' \(Add\) in the given bytes reads the tensor 'ghost', which no "
                                             r"node, graph input or initializer produces; the graph is broken\.$"):
        convscope.load(model(ghost, inits=[]).SerializeToString())
    with pytest.raises(ModelReadError, match=r"^The graph output 'z' in the ModelProto is not produced by any node"):
        convscope.load(model(outputs=("y", "z")))
    twice = [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Relu", ["x"], ["a"], name="r2"),
             helper.make_node("Flatten", ["a"], ["y"], name="f")]
    with pytest.raises(ModelReadError, match=r"^The tensor 'a' in the ModelProto is produced twice \(by node 'r2' \(Relu\)"):
        convscope.load(model(twice, inits=[]))


def nested_if(depth):
    """A graph whose Relu sits inside ``depth`` nested If bodies."""
    inner = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "body0", [],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    plain = inner
    for level in range(1, depth + 1):  # then: one level deeper; else: the plain Relu (no doubling per level)
        node = helper.make_node("If", ["cond"], [f"o{level}"], name=f"if{level}", then_branch=inner, else_branch=plain)
        inner = helper.make_graph([node], f"body{level}", [],
                                  [helper.make_tensor_value_info(f"o{level}", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model([*inner.node, helper.make_node("Flatten", [f"o{depth}"], ["y"], name="flatten")], inits=[cond])


def test_subgraphs_nested_too_deep_are_refused(monkeypatch):
    convscope.load(nested_if(2)).forward(X)
    monkeypatch.setattr(_limits, "MAX_SUBGRAPH_DEPTH", 2)
    with pytest.raises(ModelReadError, match=r"^The ONNX model in the given bytes nests subgraphs \(If/Loop/Scan bodies\) "
                                             r"deeper than 2 levels, convscope's limit \(convscope\.backends\.onnxruntime"
                                             r"\._limits\.MAX_SUBGRAPH_DEPTH\), at node 'if1' \(If\)\.$"):
        convscope.load(nested_if(3).SerializeToString())
    monkeypatch.undo()
    with pytest.raises(ModelReadError, match=r"deeper than 16 levels, convscope's limit"):
        convscope.load(nested_if(17).SerializeToString())


def test_a_node_count_beyond_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(_limits, "MAX_NODES", 1)
    with pytest.raises(ModelReadError, match=r"^The ONNX model in the ModelProto has more than 1 nodes, convscope's limit "
                                             r"\(convscope\.backends\.onnxruntime\._limits\.MAX_NODES\)\.$"):
        convscope.load(model())


def test_a_local_function_that_calls_itself_is_refused():
    loop = helper.make_function("local", "Loop", ["a"], ["b"], [helper.make_node("Loop", ["a"], ["b"], domain="local")],
                                [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    nodes = [helper.make_node("Loop", ["x"], ["a"], name="call", domain="local"),
             helper.make_node("Flatten", ["a"], ["y"], name="flatten")]
    with pytest.raises(ModelReadError, match=r"^The ONNX model in the given bytes has a local function 'Loop' that calls "
                                             r"itself \(directly or through other functions\); its inlining would not end"):
        convscope.load(model(nodes, inits=[], functions=[loop]).SerializeToString())


def test_the_demo_file_still_loads():
    backend = convscope.load(convscope.data.demo_path("onnx"))
    assert backend.forward(np.zeros((1, 3, 64, 64), np.float32)).shape[0] == 1


def test_attributes_of_an_undefined_or_mismatched_type_are_refused():
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(W, "k")),
             helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"], name="flatten")]
    broken = model(nodes, inits=[])
    broken.graph.node[0].attribute[0].type = 0
    with pytest.raises(ModelReadError, match=r"^The attribute 'value' of node 'const' \(Constant\) has the type 0, which "
                                             r"ONNX does not define; the file is damaged\.$"):
        convscope.load(broken.SerializeToString())
    broken.graph.node[0].attribute[0].type = onnx.AttributeProto.GRAPH
    with pytest.raises(ModelReadError, match=r"^The attribute 'value' of node 'const' \(Constant\) is declared GRAPH but "
                                             r"holds no such value"):
        convscope.load(broken)
    broken.graph.node[0].attribute[0].type = onnx.AttributeProto.INTS
    with pytest.raises(ModelReadError, match=r"^The attribute 'value' of the Constant node 'const' is declared INTS, not "
                                             r"TENSOR; the file is damaged\.$"):
        convscope.load(broken)
