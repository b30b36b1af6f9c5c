"""One backend object used from several threads at once gives the answers it gives from one
thread (torch, ONNX Runtime, Keras): forward, activations, fixed and callable seeds, the ReLU
rules, and methods on top. Each task has its own input, so answers handed to the wrong
thread, or a rule left active by another thread, would show."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convscope

FRAMEWORKS = {"torch": "torch", "onnxruntime": "onnx", "tensorflow": "keras"}


@pytest.fixture
def one_torch_thread():
    """torch's OpenMP pool of two spinning threads slows 50-fold when another process holds a
    core of this two-core machine; one intra-op thread keeps the test short. Restored after."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tasks(backend):
    seeds = np.eye(4, dtype=np.float32)[[0, 1, 2]]

    def callable_seeds(acts):
        a = acts["relu3"]
        return {"relu3": a / max(float(np.abs(a).max()), 1e-6)}  # depends on this pass's own activations

    return {
        "forward": lambda x: backend.forward(x),
        "activations": lambda x: backend.activations(x, ["relu2", "relu4"])["relu2"],
        "gradient": lambda x: backend.gradient(x, {"output": seeds}, wrt=["input", "relu3"])["relu3"],
        "guided": lambda x: backend.gradient(x, {"output": seeds}, rule="guided")["input"],
        "deconvnet": lambda x: backend.gradient(x, {"output": seeds}, rule="deconvnet")["input"],
        "callable": lambda x: backend.gradient(x, callable_seeds, at=["relu3"], wrt=["input"])["input"],
        "saliency": lambda x: convscope.attribution.saliency(backend, x).maps,
        "grad_cam": lambda x: convscope.attribution.grad_cam(backend, x, layer="relu4").maps,
    }


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.backend(n)) for n in FRAMEWORKS])
def test_one_backend_shared_by_threads_gives_the_same_answers(name, request):
    pytest.importorskip({"torch": "torch", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow"}[name])
    if name == "torch":
        request.getfixturevalue("one_torch_thread")
    backend = convscope.load(convscope.data.demo_model(FRAMEWORKS[name]))
    data = convscope.data.shapes(24, seed=9).images
    inputs = [data[i:i + 3] for i in range(0, 24, 3)]  # 8 different batches of 3
    tasks = _tasks(backend)
    jobs = [(task, i) for task in tasks for i in range(len(inputs))]
    want = {(task, i): tasks[task](inputs[i]) for task, i in jobs}  # one thread
    order = np.random.default_rng(0).permutation(len(jobs))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda j: tasks[jobs[j][0]](inputs[jobs[j][1]]), order))
    for j, value in zip(order, got):
        np.testing.assert_allclose(value, want[jobs[j]], rtol=1e-5, atol=1e-6, err_msg=str(jobs[j]))
    # the rules were scoped to their own calls: a standard gradient after all that is still standard
    seeds = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    plain = backend.gradient(inputs[0], {"output": seeds})["input"]
    guided = tasks["guided"](inputs[0])
    assert not np.allclose(plain, guided)


@pytest.mark.backend("tensorflow")
def test_keras_seed_callable_calling_its_own_backend_is_refused_not_deadlocked():
    pytest.importorskip("tensorflow")
    backend = convscope.load(convscope.data.demo_model("keras"))
    x = convscope.data.shapes(2, seed=1).images
    with pytest.raises(RuntimeError, match="cannot call the backend whose gradient it is seeding"):
        backend.gradient(x, lambda acts: {"output": backend.forward(x)})
    assert backend.forward(x).shape == (2, 4)  # and the lock was released
