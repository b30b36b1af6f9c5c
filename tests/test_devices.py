"""Devices on every backend: ONNX Runtime's providers (names, fallbacks, I/O binding), the torch
device (kept, never moved), and the memory ceiling of automatic batch sizes (Keras and
``--device`` on the command line: test_devices_keras_cli.py).

No GPU is needed: ONNX Runtime's provider list and session constructor are monkeypatched to
stand for a machine with CUDA, the I/O-binding path is run bound to the CPU (the same code as on
CUDA) against the plain path, and the CUDA memory ceiling is checked against its formula
computed by hand from a fake free-memory figure.
"""
import math
import warnings

import numpy as np
import pytest

import convscope
from convscope import _batching
from convscope.data import demo_path, shapes

from _assertions import batch_sizes

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from convscope.backends.onnxruntime import OnnxBackend  # noqa: E402
from convscope.backends.onnxruntime._session import CPU, CUDA, resolve_providers  # noqa: E402

X = shapes(3, seed=1).images.astype(np.float32)


def _gradients(backend, layer="bn3"):
    """Input and layer gradients with seeds from the pass's own activations (the split path)."""
    def seeds(values):
        return {"output": values["output"] * 2.0, layer: np.sign(values[layer])}
    return backend.gradient(X, seeds, wrt=["input", layer], at=["output", layer])


@pytest.fixture(scope="module")
def plain():
    backend = OnnxBackend(demo_path("onnx"))
    return backend, backend.forward(X), _gradients(backend)


# ----------------------------------------------------------------------------- ONNX providers
@pytest.mark.parametrize("providers, message", [
    ("WarpDriveExecutionProvider", r"a provider onnxruntime knows; available here: .*CPUExecutionProvider.* "
                                   r"Got 'WarpDriveExecutionProvider' instead"),
    (["cpu", "nonsense"], r"a provider onnxruntime knows; available here: .*CPUExecutionProvider.*Got 'nonsense'"),
])
def test_an_unknown_provider_lists_the_available_ones(providers, message):
    with pytest.raises(ValueError, match=r"The 'providers' parameter of convscope.load must be " + message):
        convscope.load(demo_path("onnx"), providers=providers)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="CUDA is installed here")
def test_a_provider_onnxruntime_knows_but_lacks_here_says_what_to_install():
    with pytest.raises(ValueError, match=r"installed in this onnxruntime .*Got 'cuda', which is not installed "
                                         r"\(it needs onnxruntime-gpu"):
        OnnxBackend(demo_path("onnx"), providers="cuda")


@pytest.mark.parametrize("providers", [5, [], [("CPUExecutionProvider", 3)], [["cpu", {}, 1]]])
def test_providers_of_the_wrong_kind(providers):
    with pytest.raises(TypeError, match="The 'providers' parameter of convscope.load must be"):
        OnnxBackend(demo_path("onnx"), providers=providers)


def test_names_pairs_and_short_names_resolve_as_onnxruntime_takes_them():
    assert resolve_providers(None, ort) == ([(CPU, {})] if CUDA not in ort.get_available_providers()
                                            else [(CUDA, {}), (CPU, {})], True)
    assert resolve_providers("cpu", ort) == ([(CPU, {})], False)
    assert resolve_providers([("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})], ort) == (
        [(CPU, {"arena_extend_strategy": "kSameAsRequested"})], False)
    assert resolve_providers((CPU, {}), ort) == ([(CPU, {})], False)  # one (name, options) pair


def test_the_cpu_provider_gives_the_default_results(plain):
    backend, scores, _ = plain
    on_cpu = convscope.load(demo_path("onnx"), providers=["cpu"])  # a list option is memoised by content
    assert on_cpu.providers == [CPU] and on_cpu.choices == {}
    np.testing.assert_array_equal(on_cpu.forward(X), scores)
    assert convscope.load(demo_path("onnx"), providers=["cpu"]) is on_cpu


@pytest.fixture
def cuda_listed(monkeypatch):
    """ONNX Runtime as on a machine with onnxruntime-gpu installed: CUDA is listed (the real
    session, on this CPU build, then leaves it out of what it runs)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    warnings.filterwarnings("ignore", "Specified provider", UserWarning)  # ONNX Runtime's own notice


def test_a_provider_left_out_of_the_session_falls_back_to_the_cpu_with_one_warning(cuda_listed, plain):
    _, scores, grads = plain
    backend = OnnxBackend(demo_path("onnx"))  # default: CUDA, as it is listed
    assert backend._sessions.providers == [CUDA, CPU] and backend._sessions.device == ("cuda", 0)
    assert "CUDAExecutionProvider (onnxruntime-gpu and a GPU were found)" in backend.choices["providers"]
    with pytest.warns(RuntimeWarning, match="ONNX Runtime could not start CUDAExecutionProvider "
                                            r"\(ONNX Runtime left it out of the session\); convscope runs the model "
                                            "on CPUExecutionProvider") as caught:
        got = backend.forward(X)
        again = _gradients(backend)  # two more sessions: no second warning
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert backend.providers == [CPU] and backend._sessions.device is None
    assert "CUDAExecutionProvider did not start" in backend.choices["providers"]
    from convscope.attribution import saliency

    assert "CUDAExecutionProvider did not start" in saliency(backend, X, 1).info["choices"]["providers"]
    np.testing.assert_array_equal(got, scores)
    np.testing.assert_array_equal(again.grads["input"], grads.grads["input"])


def test_a_provider_that_fails_to_start_falls_back_to_the_cpu(monkeypatch, cuda_listed, plain):
    real, asked = ort.InferenceSession, []

    class Failing(real):
        def __init__(self, source, options=None, providers=None, **kwargs):
            asked.append(list(providers))
            if CUDA in providers:
                raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\nmore lines")
            super().__init__(source, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Failing)
    backend = OnnxBackend(demo_path("onnx"), providers=["cuda", "cpu"])
    with pytest.warns(RuntimeWarning, match="could not start CUDAExecutionProvider \\(CUDA failure 100: no "
                                            "CUDA-capable device is detected\\)"):
        assert backend.providers == [CPU]
    np.testing.assert_array_equal(backend.forward(X), plain[1])
    assert asked[0] == [CUDA, CPU] and all(a == [CPU] for a in asked[1:])  # CUDA tried once, then never again


def test_a_provider_that_starts_is_kept_with_its_options(monkeypatch, cuda_listed, plain):
    """A session that reports CUDA among its providers (a real CPU session standing in) keeps it:
    no warning, the options reach ONNX Runtime, and the split path binds to that CUDA device."""
    real, calls = ort.InferenceSession, []

    class Started(real):
        def __init__(self, source, options=None, providers=None, provider_options=None, **kwargs):
            calls.append((list(providers), provider_options))
            super().__init__(source, options, providers=[CPU], **kwargs)

        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(ort, "InferenceSession", Started)
    backend = OnnxBackend(demo_path("onnx"), providers=[("cuda", {"device_id": 1})])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        np.testing.assert_array_equal(backend.forward(X), plain[1])
    assert backend.providers == [CUDA, CPU] and backend._sessions.device == ("cuda", 1)
    assert calls == [([CUDA, CPU], [{"device_id": 1}, {}])] and "providers" not in backend.choices


def test_a_model_that_fails_on_every_provider_raises_its_own_error(monkeypatch, cuda_listed):
    class Broken(ort.InferenceSession):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Invalid model: bad attribute")

    monkeypatch.setattr(ort, "InferenceSession", Broken)
    backend = OnnxBackend(demo_path("onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning: the CPU failed too
        with pytest.raises(ValueError, match=r"ONNX Runtime cannot load the model \(Invalid model: bad attribute\)"):
            backend.forward(X)


def test_a_twin_backend_keeps_the_providers(plain):
    backend = OnnxBackend(demo_path("onnx"), providers=[(CPU, {"arena_extend_strategy": "kSameAsRequested"})])
    twin = backend._with_weights({})
    assert twin._sessions.provider_list == [(CPU, {"arena_extend_strategy": "kSameAsRequested"})]


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_io_binding_bound_to_the_cpu_equals_the_plain_path(monkeypatch, plain, fixed_batch):
    """The CUDA code path (OrtValues kept between the forward and backward sessions, seeds and
    gradients through the host) bound to ("cpu", 0); with a fixed batch of 1, one binding per image."""
    import onnx

    _, _, want = plain
    model = onnx.load(demo_path("onnx"))
    if fixed_batch:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    bindings = []
    real = ort.InferenceSession.io_binding
    monkeypatch.setattr(ort.InferenceSession, "io_binding", lambda self: bindings.append(1) or real(self))
    backend = OnnxBackend(model)
    backend._sessions.device = ("cpu", 0)
    got = _gradients(backend)
    assert len(bindings) == 2 * (len(X) if fixed_batch else 1)
    for name in ("input", "bn3"):
        scale = np.abs(want.grads[name]).max()
        np.testing.assert_allclose(got.grads[name], want.grads[name], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(got.activations["bn3"], want.activations["bn3"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.outputs, want.outputs, rtol=1e-5, atol=1e-5)


def test_the_onnx_memory_ceiling_follows_the_free_memory_of_the_device(plain):
    backend = OnnxBackend(demo_path("onnx"))
    assert backend.memory_ceiling(64, 64) is None  # the CPU: the pixel rule alone
    backend._sessions.free_bytes = lambda: 40 * 2 ** 20
    shapes_at = backend._shapes_for((3, 64, 64))[0]
    elements = sum(math.prod(d[1:]) for d in shapes_at.values() if d and None not in d[1:])
    per_image = 3 * elements * 4 + 3 * 64 * 64 * 4  # three copies of every tensor, float32, and the image
    assert backend.memory_ceiling(64, 64) == max(1, int(0.5 * 40 * 2 ** 20) // per_image)


# ----------------------------------------------------------------------------- torch
torch = pytest.importorskip("torch")


def _net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()


@pytest.mark.parametrize("device, message", [
    ("cuda:3", r"a device this machine has \((no cuda device|cuda:0.*)"),
    ("nonsense", "a torch device such as 'cpu', 'cuda' or 'cuda:1'"),
    ("meta", r"the device the model is on, cpu \(convscope never moves a model: call model.to\('meta'\) first\)"),
])
def test_torch_device_errors(device, message):
    model = _net()
    before = {k: (v.device, v.requires_grad) for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match=r"The 'device' parameter of convscope.load must be " + message):
        convscope.load(model, device=device)
    assert {k: (v.device, v.requires_grad) for k, v in model.named_parameters()} == before and not model.training


def test_torch_runs_where_the_model_is_and_copies_nothing_on_the_cpu():
    model = _net()
    backend = convscope.load(model, device=torch.device("cpu"))
    assert backend.device == torch.device("cpu") and convscope.load(model, device="cpu").device.type == "cpu"
    seen = []
    hook = model[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].data_ptr()))
    try:
        x = np.ascontiguousarray(X[:, :, :16, :16])
        out = backend.forward(x)
        backend.gradient(x, {"output": np.ones_like(out)})
    finally:
        hook.remove()
    assert seen == [x.ctypes.data] * len(seen) and len(seen) >= 2  # the images' own memory, no copy
    # (a batch of 4 or more is copied once, to channels-last: tests/test_torch_layout.py)
    assert len(x) < 4
    assert backend.memory_ceiling(16, 16) is None


def test_torch_keeps_the_meta_device_of_a_model_and_moves_nothing():
    model = _net().to("meta")
    backend = convscope.load(model)
    assert backend.device.type == "meta" and backend._tensor(X).device.type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())
    free = torch.nn.Sequential(torch.nn.ReLU())  # no parameters or buffers: the device given is taken
    assert convscope.load(free, device="meta").device.type == "meta"
    assert convscope.load(free).device.type == "cpu"


def test_the_torch_memory_ceiling_on_cuda_is_free_memory_over_the_bytes_of_a_pass(monkeypatch):
    from convscope.backends.torch._device import device_ceiling

    backend = convscope.load(_net())
    records = backend._probed((3, 32, 32))[0]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2 ** 20, 80 * 2 ** 30))
    got = device_ceiling(torch, torch.device("cuda", 0), torch.float32, lambda chw: backend._probed(chw)[0],
                         (3, 32, 32))
    elements = sum(math.prod(r.shape) for r in records if r.shape)
    assert got == int(0.5 * 10 * 2 ** 20) // (3 * 4 * elements + 3 * 4 * 32 * 32)


# ----------------------------------------------------------------------------- batch sizes
def test_auto_batch_sizes_respect_a_backend_memory_ceiling():
    class Backend:
        def __init__(self, limit):
            self.memory_ceiling = lambda h, w: limit

    assert _batching.auto_batch_size(64, 64) == 64
    assert _batching.auto_batch_size(64, 64, backend=Backend(3)) == 3
    assert _batching.auto_batch_size(64, 64, backend=Backend(0)) == 1
    assert _batching.auto_batch_size(64, 64, backend=Backend(10 ** 6)) == 64  # a ceiling never raises the rule
    assert _batching.auto_batch_size(64, 64, backend=Backend(None)) == 64
    assert _batching.batch_size_for(None, (64, 64), "f", backend=Backend(5)) == 5
    assert _batching.batch_size_for(7, (64, 64), "f", backend=Backend(5)) == 7  # a size asked for is kept


def test_a_small_memory_ceiling_gives_integrated_gradients_smaller_batches():
    from convscope.attribution import integrated_gradients
    from convscope.data import demo_model

    backend = convscope.load(demo_model("torch"))
    with batch_sizes(backend, "_gradient") as free:
        want = integrated_gradients(backend, X[:2], target=1, steps=8)
    backend.memory_ceiling = lambda h, w: 3
    try:
        with batch_sizes(backend, "_gradient") as limited:
            got = integrated_gradients(backend, X[:2], target=1, steps=8)
    finally:
        del backend.memory_ceiling
    assert max(free) == 16 and max(limited) == 3 and sum(limited) == sum(free)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6 * np.abs(np.asarray(want)).max())


def test_a_preprocessed_backend_keeps_the_memory_ceiling_of_the_model():
    from convscope.data import demo_model

    backend = convscope.load(demo_model("torch"), preprocess="imagenet")
    assert backend.memory_ceiling(64, 64) is None  # the CPU
    backend.inner.memory_ceiling = lambda h, w: 2
    try:
        assert _batching.auto_batch_size(64, 64, backend=backend) == 2
    finally:
        del backend.inner.memory_ceiling
