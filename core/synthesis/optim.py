"""Optimisers in NumPy. Both *ascend*: ``step(params, grad)`` moves along ``+grad``.

- :class:`SGD`: ``v = momentum v + g``; ``t = t + lr v``.
- :class:`Adam` (Kingma and Ba 2015): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
  ``t = t + lr m_hat / (sqrt(v_hat) + eps * rms(sqrt(v_hat)))`` with the bias-corrected
  ``m_hat``, ``v_hat``. The epsilon is relative (to the root mean square of ``sqrt(v_hat)``
  over the whole array), so the step does not depend on the gradient's scale: a network
  whose gradients are 1e-18 moves as one whose gradients are 1, where an absolute 1e-8 would
  swallow them. The default 1e-5 equals the former absolute 1e-8 at the typical gradient
  RMS of 1e-3 (the demo model's), so ordinary runs keep their trajectories. (The moments are kept in float64, where ``g^2`` of such gradients still fits.)
  A zero gradient gives a zero step.

They hold no random state, so a run is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_number, describe, param_error

__all__ = ["SGD", "Adam", "make_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


def _fraction(value, param, owner):
    """A number in [0, 1): a momentum or a decay rate."""
    value = check_number(value, param, owner, low=0)
    if value >= 1:
        raise param_error(param, owner, "< 1", str(value))
    return value


class SGD:
    """Gradient ascent with optional momentum."""

    def __init__(self, lr: float = 1.0, *, momentum: float = 0.0):
        self.lr = check_number(lr, "lr", "SGD", low=0, strict=True)
        self.momentum = _fraction(momentum, "momentum", "SGD")
        self._velocity = None

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self.momentum:
            self._velocity = grad if self._velocity is None else self.momentum * self._velocity + grad
            grad = self._velocity
        return (params + self.lr * grad).astype(np.float32, copy=False)


class Adam:
    """Adam, ascending."""

    def __init__(self, lr: float = 0.05, *, betas=(0.9, 0.999), eps: float = 1e-5):
        self.lr = check_number(lr, "lr", "Adam", low=0, strict=True)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise param_error("betas", "Adam", "a pair (b1, b2) in [0, 1)", describe(betas), TypeError)
        self.b1, self.b2 = (_fraction(b, "betas", "Adam") for b in betas)
        self.eps = check_number(eps, "eps", "Adam", low=0, strict=True)
        self._m = self._v = None
        self._k = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self._m is None or self._m.shape != grad.shape:
            self._m = np.zeros_like(grad, dtype=np.float64)  # float64: g^2 of a 1e-18 gradient is
            self._v = np.zeros_like(grad, dtype=np.float64)  # below float32's range
            self._k = 0
        self._k += 1
        grad = grad.astype(np.float64)
        self._m *= self.b1
        self._m += (1 - self.b1) * grad
        self._v *= self.b2
        self._v += (1 - self.b2) * grad * grad
        m_hat = self._m / (1 - self.b1 ** self._k)
        v_hat = self._v / (1 - self.b2 ** self._k)
        root = np.sqrt(v_hat)
        floor = max(self.eps * float(np.sqrt(np.mean(np.square(root, dtype=np.float64)))), np.finfo(np.float32).tiny)
        return (params + self.lr * m_hat / (root + floor)).astype(np.float32, copy=False)


def make_optimizer(name, lr, owner):
    """``name`` is "adam", "sgd" or an object with ``step(params, grad)``."""
    if hasattr(name, "step"):
        return name
    check_choice(name, OPTIMIZERS, "optimizer", owner)
    lr = check_number(lr, "lr", owner, low=0, strict=True)
    return Adam(lr) if name == "adam" else SGD(lr)
