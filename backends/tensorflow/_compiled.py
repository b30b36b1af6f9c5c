"""The traced functions of the Keras backend: forward, activations and gradients.

Each builder returns a plain Python function of TensorFlow tensors that the backend wraps in
``tf.function`` with an input signature whose batch dimension is ``None`` (traced once per
cache key, never per call). ``run(x, rule)`` is the backend's pass: it returns the store of
named tensors. Everything inside is in the model's own layout (NHWC); the backend converts
to and from NCHW in NumPy at the edge, which costs less than transposes in the graph.
"""
from __future__ import annotations

import threading

import numpy as np

from convscope._validate import check_finite
from convscope.backend import OUTPUT

__all__ = ["forward_body", "activations_body", "gradient_body", "callable_gradient_body", "SeedCall"]


def _pick(store, names):
    missing = [n for n in names if n not in store]
    if missing:
        raise ValueError(f"Layers {missing} did not run in the forward pass; they cannot be recorded, seeded or "
                         "differentiated.")
    return [store[n] for n in names]


def forward_body(run):
    def forward(x):
        return run(x, "standard")[OUTPUT]
    return forward


def activations_body(run, names):
    def activations(x):
        return _pick(run(x, "standard"), names)
    return activations


def _vjp(tf, run, x, rule, seed_names, wrt, seeds_of):
    """One forward and one backward. ``seeds_of(store)`` gives the output gradients."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        store = run(x, rule)
    targets = _pick(store, seed_names)
    sources = _pick(store, wrt)
    output_gradients = seeds_of(store)
    grads = tape.gradient(targets, sources, output_gradients, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return store, grads


def gradient_body(tf, run, rule, seed_names, wrt, acts):
    """``f(x, *seeds)`` -> (outputs, [activations of ``acts``], [gradients at ``wrt``])."""
    def gradient(x, *seeds):
        store, grads = _vjp(tf, run, x, rule, seed_names, wrt, lambda store: list(seeds))
        return store[OUTPUT], [store[n] for n in acts], grads
    return gradient


def callable_gradient_body(tf, run, rule, at, wrt, acts, hook):
    """As :func:`gradient_body`, the seeds computed in the pass by ``hook`` (a ``tf.py_function``)
    from the activations of ``at``; one output gradient per ``at`` name."""
    def gradient(x):
        def seeds_of(store):
            seen = [tf.stop_gradient(t) for t in _pick(store, at)]
            seeds = tf.py_function(hook, seen, Tout=[tf.float32] * len(at))
            for s, t in zip(seeds, seen):
                s.set_shape(t.shape)
            return seeds
        store, grads = _vjp(tf, run, x, rule, at, wrt, seeds_of)
        return store[OUTPUT], [store[n] for n in acts], grads
    return gradient


class SeedCall:
    """The Python side of callable seeds: the ``tf.py_function`` that a traced gradient calls.

    Before each call, :meth:`arm` sets the user's callable and the names of ``at``; the hook
    calls it with ``{name: NCHW array}`` (``to_edge`` converts from the model's layout)
    and hands one float32 seed per ``at`` name back to the graph
    (zeros where none is given, ``to_model`` converting back). An exception raised there
    is kept and re-raised unchanged by :meth:`disarm`. ``thread`` is the id of the thread
    running the hook, so that a callable calling its own backend fails instead of deadlocking.
    """

    def __init__(self, to_edge, to_model):
        self.to_edge, self.to_model = to_edge, to_model
        self.fn, self.at, self.error, self.thread = None, (), None, None

    def arm(self, fn, at):
        self.fn, self.at, self.error = fn, tuple(at), None

    def disarm(self, failure):
        """Clear; re-raise the callable's own exception if the traced call failed because of it."""
        error, self.fn, self.error = self.error, None, None
        if error is not None and failure is not None:
            raise error.with_traceback(error.__traceback__) from None

    def __call__(self, *tensors):
        self.thread = threading.get_ident()
        try:
            acts = {n: check_finite(self.to_edge(t.numpy()), repr(n), "gradient") for n, t in zip(self.at, tensors)}
            seeds = self.fn(dict(acts))  # checked by the backend's base (names in ``at``, shapes)
            out = {n: np.zeros(a.shape, np.float32) for n, a in acts.items()}
            out.update((n, np.asarray(s, dtype=np.float32)) for n, s in seeds.items())
            return [self.to_model(out[n]) for n in self.at]
        except BaseException as err:
            self.error = err
            raise
        finally:
            self.thread = None
