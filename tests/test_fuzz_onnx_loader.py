"""Fuzzing the ONNX loader: mutated models (the shipped demo file and small graphs built with
onnx.helper; truncated or flipped bytes, wrong types, missing inputs, dangling inputs, cycles,
huge dims, bad external data entries) make ``convscope.load`` and a first ``forward`` raise
ModelReadError, ValueError or TypeError, or succeed; never another exception, a crash or a hang.

The per-tensor limit is lowered to 64 MiB while fuzzing, so a case that passes every check
still cannot allocate gigabytes, and each case runs under an alarm.
"""
import contextlib
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import convscope  # noqa: E402
from convscope.backends.onnxruntime import RuntimeFailure, _limits  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")

#: what a refused model may raise: ModelReadError and ValueError (RuntimeFailure, convscope's
#: error for a graph ONNX Runtime refuses when it builds a session, is a ValueError too), TypeError;
#: FloatingPointError is forward's own refusal of non-finite scores, which a flipped weight byte
#: (an exponent turned to inf) gives: the file loads, the model it holds computes NaN.
ALLOWED = (ValueError, TypeError, FloatingPointError)
assert issubclass(RuntimeFailure, ValueError)
CASE_SECONDS = 20
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def small_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    big = rng.standard_normal((3, 144)).astype(np.float32)  # 1.7 KB: read by the raw scan
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="gemm", transB=1),
             helper.make_node("Constant", [], ["unused"], name="k", value=numpy_helper.from_array(big[0], "k"))]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(big[:, :4].copy(), "g"),
             numpy_helper.from_array(np.array([1, 3, 6, 6], np.int64), "shape"), numpy_helper.from_array(big, "unused_big")]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits,
                              value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 6, 6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


SMALL = small_model()
SMALL_BYTES = SMALL.SerializeToString()
DEMO_BYTES = Path(convscope.data.demo_path("onnx")).read_bytes()
BASES = {"small": (SMALL_BYTES, (4, 6, 6)), "demo": (DEMO_BYTES, (3, 64, 64))}
HUGE = [0, -1, 1 << 31, 1 << 40, 1 << 62, (1 << 63) - 1]
LOCATIONS = ["w.bin", "../outside.bin", "sub/../../outside.bin", "/etc/passwd", "", "missing.bin", "dir", "sub",
             "link.bin", "C:\\w.bin", "w.bin\0x"]


@contextlib.contextmanager
def alarm(seconds):
    def timeout(*_):
        raise TimeoutError(f"a fuzz case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def attempt(model, chw):
    """Load and run one forward; only the allowed errors may come out (anything else fails the test)."""
    with pytest.MonkeyPatch.context() as mp, alarm(CASE_SECONDS):
        mp.setattr(_limits, "MAX_TENSOR_BYTES", 64 << 20)
        try:
            backend = convscope.load(model)
            backend.forward(np.random.default_rng(0).random((2, *chw), dtype=np.float32))
        except ALLOWED:
            pass


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_truncated_and_flipped_bytes(base, data):
    raw, chw = BASES[base]
    raw = bytearray(raw)
    if data.draw(st.booleans(), "truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), "length")]
    for _ in range(data.draw(st.integers(1, 8), "flips")):
        if raw:
            at = data.draw(st.integers(0, len(raw) - 1), "at")
            raw[at] ^= data.draw(st.integers(1, 255), "xor")
    attempt(bytes(raw), chw)


def mutate(proto, data):
    """One structural mutation of a ModelProto, drawn by hypothesis."""
    g = proto.graph
    kind = data.draw(st.sampled_from(["dtype", "dim", "drop_input", "dangling", "cycle", "value_info", "graph_input",
                                      "drop_node", "duplicate", "constant_dims", "attribute", "output"]), "kind")
    nodes = list(g.node)
    if kind == "dtype" and g.initializer:
        t = data.draw(st.sampled_from(list(g.initializer)), "tensor")
        t.data_type = data.draw(st.sampled_from([0, 2, 6, 7, 8, 10, 11, 16, 21, 22, 31, 999]), "data_type")
    elif kind == "dim" and g.initializer:
        t = data.draw(st.sampled_from(list(g.initializer)), "tensor")
        dims = list(t.dims) or [1]
        dims[data.draw(st.integers(0, len(dims) - 1), "axis")] = data.draw(st.sampled_from(HUGE), "size")
        del t.dims[:]
        t.dims.extend(dims)
    elif kind == "drop_input" and nodes:
        node = data.draw(st.sampled_from(nodes), "node")
        if node.input:
            del node.input[data.draw(st.integers(0, len(node.input) - 1), "which")]
    elif kind == "dangling" and nodes:
        node = data.draw(st.sampled_from(nodes), "node")
        node.input.append("ghost")
    elif kind == "cycle" and len(nodes) > 1:
        i = data.draw(st.integers(0, len(nodes) - 2), "early")
        j = data.draw(st.integers(i + 1, len(nodes) - 1), "late")
        if nodes[j].output:
            nodes[i].input.append(nodes[j].output[0])
    elif kind == "value_info":
        v = g.value_info.add() if not g.value_info else g.value_info[0]
        v.CopyFrom(helper.make_tensor_value_info(nodes[0].output[0] if nodes else "c", TensorProto.FLOAT,
                                                 [data.draw(st.sampled_from(HUGE[2:]), "size"), 4, 1 << 16]))
    elif kind == "graph_input":
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            dims[data.draw(st.integers(0, len(dims) - 1), "axis")].dim_value = data.draw(st.sampled_from(HUGE), "size")
        else:
            del g.input[:]
    elif kind == "drop_node" and nodes:
        del g.node[data.draw(st.integers(0, len(nodes) - 1), "which")]
    elif kind == "duplicate" and nodes:
        g.node.append(data.draw(st.sampled_from(nodes), "node"))
    elif kind == "constant_dims":
        value = next((a.t for n in g.node for a in n.attribute if a.HasField("t")), None)
        if value is not None:
            value.dims.append(data.draw(st.sampled_from(HUGE), "size"))
    elif kind == "attribute" and nodes:
        node = data.draw(st.sampled_from(nodes), "node")
        if node.attribute:
            attr = node.attribute[0]
            attr.type = data.draw(st.sampled_from(list(range(0, 15))), "type")
    elif kind == "output":
        g.output[0].name = data.draw(st.sampled_from(["ghost", "x", "", g.output[0].name]), "name")
    return proto


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_mutated_fields(base, data):
    raw, chw = BASES[base]
    proto = onnx.load_model_from_string(raw)
    for _ in range(data.draw(st.integers(1, 3), "mutations")):
        proto = mutate(proto, data)
    try:
        blob = proto.SerializeToString()
    except Exception:  # a mutation protobuf itself will not serialise is not a model anyone can send
        return
    attempt(blob, chw)
    if data.draw(st.booleans(), "as ModelProto"):
        attempt(proto, chw)


@FUZZ
@given(data=st.data())
def test_bad_external_data_entries(data):
    proto = onnx.ModelProto()
    proto.CopyFrom(SMALL)
    t = proto.graph.initializer[0]
    payload = t.raw_data
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    location = data.draw(st.sampled_from(LOCATIONS), "location")
    entries = [("location", location)]
    if data.draw(st.booleans(), "has offset"):
        entries.append(("offset", data.draw(st.sampled_from(["0", "8", "-1", "abc", str(1 << 62), "576"]), "offset")))
    if data.draw(st.booleans(), "has length"):
        entries.append(("length", data.draw(st.sampled_from(["0", "576", "577", "-5", "1e3", str(1 << 40)]), "length")))
    if data.draw(st.booleans(), "drop location"):
        entries = entries[1:]
    for key, value in entries:
        e = t.external_data.add()
        e.key, e.value = key, value
    if data.draw(st.booleans(), "dims"):
        t.dims[0] = data.draw(st.sampled_from(HUGE), "size")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "model"
        (folder / "sub").mkdir(parents=True)
        (folder / "dir").mkdir()
        (folder / "w.bin").write_bytes(payload)
        (root / "outside.bin").write_bytes(payload)
        (folder / "link.bin").symlink_to(root / "outside.bin")
        path = folder / "m.onnx"
        try:
            path.write_bytes(proto.SerializeToString())
        except Exception:
            return
        attempt(path, (4, 6, 6))
