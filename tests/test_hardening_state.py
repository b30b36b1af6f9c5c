"""An exception thrown in the middle of a pass (from a seed callable, or a method's target
callable) leaves torch and Keras models exactly as they were: training flags, requires_grad /
trainable, weights and buffers bit for bit, hooks, activations, gradients, global modes; and
the backend works afterwards, giving the answers it gave before."""
import numpy as np
import pytest

import convscope


class Boom(Exception):
    """Raised from inside a pass."""


def exploding(acts):
    raise Boom("seed callable failed mid-pass")


def exploding_target(outputs):
    raise Boom("target callable failed mid-pass")


def images(n=2, size=64, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _failing_calls(backend, x, k, layers):
    """Each raises Boom from the middle of a pass: after the forward, before the backward."""
    a, b = layers
    return [
        lambda: backend.gradient(x, exploding, at=["output"]),
        lambda: backend.gradient(x, exploding, at=[a, "output"], wrt=["input", b], rule="guided"),
        lambda: backend.gradient(x, exploding, at=[b], wrt=[a], rule="deconvnet"),
        lambda: convscope.attribution.saliency(backend, x, exploding_target),
        lambda: convscope.attribution.guided_backprop(backend, x, exploding_target),
        lambda: convscope.attribution.grad_cam(backend, x, exploding_target, layer=b),
        lambda: convscope.synthesis.visualize(backend, _ExplodingObjective(a), steps=2, size=x.shape[2:],
                                              progress=False),
    ]


class _ExplodingObjective(convscope.synthesis.Objective):
    def __init__(self, layer):
        self.layer, self.tensors = layer, (layer,)

    def compute(self, acts):
        raise Boom("objective failed mid-pass")


def _check_unchanged_and_working(backend, x, k, layers, snapshot, model):
    before = snapshot(model)
    seeds = np.eye(k, dtype=np.float32)[np.arange(len(x)) % k]
    want = {rule: backend.gradient(x, {"output": seeds}, wrt=["input", layers[1]], rule=rule)
            for rule in ("standard", "guided")}
    assert snapshot(model) == before  # a normal call changes nothing either
    for call in _failing_calls(backend, x, k, layers):
        with pytest.raises(Boom):
            call()
        assert snapshot(model) == before
    for rule, g in want.items():  # and the backend still gives the same answers
        again = backend.gradient(x, {"output": seeds}, wrt=["input", layers[1]], rule=rule)
        np.testing.assert_array_equal(again["input"], g["input"])
        np.testing.assert_array_equal(again[layers[1]], g[layers[1]])


# --------------------------------------------------------------------------- torch
@pytest.mark.backend("torch")
def test_torch_model_is_left_exactly_as_it_was():
    torch = pytest.importorskip("torch")
    model = convscope.data.demo_model("torch")  # in-place ReLUs, BatchNorm
    model.train()
    model.bn2.eval()  # a mixed state that model.train(flag) could not restore
    for p in model.conv3.parameters():
        p.requires_grad_(False)
    fired = []
    handles = [model.conv2.register_forward_hook(lambda m, i, o: fired.append("fwd")),
               model.relu3.register_forward_pre_hook(lambda m, i: fired.append("pre")),
               model.fc.register_full_backward_hook(lambda m, gi, go: fired.append("bwd"))]
    relu = torch.nn.functional.relu

    def snapshot(m):
        return dict(
            training=[s.training for s in m.modules()],
            requires_grad=[p.requires_grad for p in m.parameters()],
            grads=[p.grad is None for p in m.parameters()],
            state={k: v.clone().numpy().tobytes() for k, v in m.state_dict().items()},
            hooks=[(len(s._forward_hooks), len(s._forward_pre_hooks), len(s._backward_hooks),
                    len(s._backward_pre_hooks)) for s in m.modules()],
            inplace=[s.inplace for s in m.modules() if isinstance(s, torch.nn.ReLU)],
            grad_mode=torch.is_grad_enabled(),
            function_modes=len(torch.overrides._get_current_function_mode_stack()),
            relu=torch.nn.functional.relu is relu,
        )

    backend = convscope.load(model)
    try:
        with torch.no_grad():  # the caller's grad mode is part of the state
            _check_unchanged_and_working(backend, images(), 4, ("relu2", "relu4"), snapshot, model)
        fired.clear()
        model(torch.from_numpy(images(1))).sum().backward()  # the user's own hooks still fire
        assert fired == ["fwd", "pre", "bwd"]
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- Keras
@pytest.mark.backend("tensorflow")
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_keras_model_is_left_exactly_as_it_was(kind):
    pytest.importorskip("tensorflow")
    from keras_models import tiny_cnn

    model = tiny_cnn(kind, size=16)  # a ReLU layer, and a ReLU fused in conv2
    model.get_layer("bn1").trainable = False
    conv2 = model.get_layer("conv2")
    activation = conv2.activation

    def snapshot(m):
        return dict(
            trainable=[(layer.name, layer.trainable) for layer in m.layers],
            weights=[w.numpy().tobytes() for w in m.weights],
            trainable_weights=len(m.trainable_weights),
            activation=conv2.activation is activation,
            losses=len(m.losses),
            nodes=[len(getattr(layer, "_inbound_nodes", ())) for layer in m.layers],
            attrs=sorted(vars(conv2)),
        )

    backend = convscope.load(model, input_shape=(3, 16, 16))
    _check_unchanged_and_working(backend, images(3, 16), 4, ("relu1", "conv2"), snapshot, model)
    assert backend._seed_call.fn is None  # nothing of the failed call is held
