"""The Backend protocol: what every framework adapter offers the NumPy core.

A backend wraps one model and speaks NumPy at its edge: float32, batch first, channels
first (NCHW) for images and activations. Tensors are named by strings: ``"input"`` is
the model input, ``"output"`` its scores (N, K), any other name a layer the backend
lists in :meth:`Backend.layers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence, Union, runtime_checkable

import numpy as np

__all__ = ["Backend", "Layer", "Gradients", "Seeds", "RELU_RULES", "INPUT", "OUTPUT"]

INPUT = "input"
OUTPUT = "output"
RELU_RULES = ("standard", "guided", "deconvnet")

#: Seeds for a vector-Jacobian product: arrays keyed by tensor name, each shaped like
#: that tensor, or a callable that receives the activations of the pass itself
#: ``{name: array}`` (for the names given as ``at``) and returns such a mapping.
Seeds = Union[Mapping[str, np.ndarray], Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class Layer:
    """One layer (or tensor) a backend can report on.

    ``shape`` is the output shape without the batch axis, channels first; ``None`` where
    the backend cannot know it. ``kernel``, ``stride``, ``dilation`` are (h, w) and
    ``padding`` is (top, left, bottom, right), set for conv and pool layers so that
    receptive fields can be computed. ``inputs`` names the layers whose outputs feed this
    one, where the backend knows the data flow.
    """

    name: str
    kind: str
    shape: tuple | None = None
    kernel: tuple | None = None
    stride: tuple | None = None
    padding: tuple | None = None
    dilation: tuple | None = None
    inputs: tuple = ()
    op: str = ""

    @property
    def spatial(self) -> bool:
        """True when the output is a (C, H, W) map."""
        return self.shape is not None and len(self.shape) == 3


@dataclass
class Gradients:
    """The result of one :meth:`Backend.gradient` call.

    ``grads`` maps each ``wrt`` name to its gradient (same shape as the tensor);
    ``activations`` holds the forward values of the seed and ``wrt`` layers;
    ``outputs`` the model scores of the same pass.
    """

    grads: dict
    activations: dict = field(default_factory=dict)
    outputs: np.ndarray | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.grads[name]


@runtime_checkable
class Backend(Protocol):
    """What convscope needs from a model, in NumPy.

    Optional attribute: ``fixed_size``, the (H, W) a model requires, or None when it takes
    any size; methods that make images (synthesis) read it with ``getattr``.
    """

    name: str

    def layers(self) -> list[Layer]:
        """Layer records in execution order."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Model scores for a batch, shape (N, K)."""

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict:
        """``{name: array}`` for the asked layers, from one forward pass."""

    def gradient(
        self,
        x: np.ndarray,
        seeds: Seeds,
        *,
        wrt: Sequence[str] = (INPUT,),
        at: Sequence[str] | None = None,
        relu: str = "standard",
    ) -> Gradients:
        """Vector-Jacobian products in one forward and one backward pass.

        ``seeds`` are placed at ``"output"`` or at named layers; gradients are returned
        for every name in ``wrt`` (``"input"`` and/or layers). When ``seeds`` is a
        callable, ``at`` names the tensors whose activations it receives. ``relu`` picks
        the backward rule of every ReLU: ``"standard"``, ``"guided"`` (Springenberg) or
        ``"deconvnet"`` (Zeiler and Fergus).
        """

    def weights(self, layer: str) -> dict:
        """Parameters of a layer as arrays, e.g. ``{"weight": (O, I, kh, kw), "bias": (O,)}``."""
