"""Rule sets for the modified backward passes of LRP and DeepLift, as backends receive them.

A backend's ``gradient(x, seeds, wrt=..., rule=...)`` takes, besides the ReLU rules
(``"standard"``, ``"guided"``, ``"deconvnet"``), one of the two objects defined here. They are
data only: which rule each layer gets, with its parameters. :mod:`convscope.attribution`
builds them (composites resolve to per-layer rules by the backend's own layer names) and each
backend applies them inside its own gradient machinery, so one call stays one forward and one
modified backward pass. A backend says what it supports in ``rule_sets`` (a tuple of the
classes below).

:class:`RelevanceRules` (layer-wise relevance propagation; Bach et al. 2015, the rules as in
Montavon et al. 2019 and named as in Zennit). The seeds are the relevance put at the seeded
tensors (the explained score times a one-hot for LRP) and the backward pass carries
relevance, not gradient: ``grads[name]`` is the relevance of that tensor, shaped like it.
With a layer of weights ``W``, bias ``b``, input ``a``, output ``z = W a + b`` and output
relevance ``R``, every rule has the form ``R_in = a' * (W'^T (R / z'))`` with ``z'`` from
modified inputs, weights and bias:

===============  ==========================================================================
``epsilon``      W, b; z' = z + epsilon * sign(z) (sign(0) = 1)
``zero``         epsilon with epsilon = 0 (LRP-0; a zero z' gives zero relevance, not NaN)
``gamma``        W + gamma W+, b + gamma b+ on every output (Montavon et al. 2019; Captum's
                 GammaRule; Zennit's newer Gamma differs where z < 0)
``alphabeta``    alpha * [a+ W+ and a- W- part] - beta * [a+ W- and a- W+ part], each part
                 normalised by its own z' (+ stabilizer); bias in the parts by sign
``zplus``        the alphabeta rule with alpha = 1, beta = 0
``wsquare``      R_in = (W^2)^T (R / z'), z' = W^2 applied to an input of ones (zero padding
                 counts as input 0, so a border unit sums fewer weights); no bias (Zennit)
``flat``         as wsquare with every weight 1 (Zennit's Flat)
``zbox``         bounded input [low, high]: z' = (W a + b) - (W+ L + b+) - (W- H + b-), the
                 bias cancelling as in Zennit; L, H inputs filled with low, high (zero padding
                 stays 0), R_in = a W^T s - L W+^T s - H W-^T s with s = R / z'; ``low`` and
                 ``high`` are numbers or one per input channel (a tuple)
===============  ==========================================================================

``stabilizer`` (default 1e-6) is added to every divisor's magnitude, keeping its sign, as
Zennit's ``stabilizer``; ``zero_bias`` sets b' = 0. Layers and operators without weights:

* elementwise activations (ReLU and its kin, sigmoid, GELU, ...), dropout, identity, and
  elementwise ops with one data-path operand and constants (the normalisation ``(x - m) / s``
  at the input, a scale): relevance passes unchanged (Zennit's Pass);
* a BatchNorm right after a conv or linear layer (its only consumer) is merged into it when
  ``canonize`` is true (W' = W gamma / sigma, b' = (b - mu) gamma / sigma + beta) and its rule
  is that layer's; any other BatchNorm gets the epsilon rule of its own affine map with
  ``epsilon = sum_stabilizer`` (as Captum's; Zennit passes it);
* average pools (also global and adaptive) and the mean over the spatial axes: the epsilon
  rule with the pool's weights and ``epsilon = sum_stabilizer`` (Zennit's Norm);
  max pools: winner takes all (the plain gradient);
* additions of two or more data-path tensors (residuals): R_i = x_i R / (sum_j x_j), the
  divisor stabilised by ``sum_stabilizer`` (Zennit's Norm on its Sum module);
* concatenation, slicing, reshapes, flatten, transposes, padding, nearest and bilinear
  resizes: the plain adjoint (relevance is routed);
* anything else on the relevance path (a product of two data-path tensors as in
  squeeze-excitation gates, layer norm, attention, a softmax inside the model): the call
  raises ``ValueError`` naming the layer and the operator.

A conv or linear layer (kinds ``"conv"``, ``"deconv"``, ``"linear"``) with no rule in
``layers`` gets ``default``; when ``default`` is None the call raises ``ValueError`` naming
the layer (the core checks this before the pass).

:class:`DeepLiftRules` (DeepLift's rescale rule; Shrikumar et al. 2017, as Captum's
``DeepLift``): the backend runs the reference ``baseline`` forward beside ``x`` and replaces
the derivative of every elementwise nonlinearity y = f(u) by the multiplier
``(f(u) - f(u0)) / (u - u0)`` where ``|u - u0| > eps`` (else ``f'(u)``); max pools take
Captum's rule (the multiplier of the pooled difference, routed to the arg-max of ``x`` and of
the baseline); linear operators keep their gradient. ``grads[name]`` are the multipliers;
the attribution is ``(x - baseline) * grads["input"]`` (computed by the core).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LRP_RULES", "Rule", "RelevanceRules", "DeepLiftRules", "rule_set_name"]

#: LRP rule names (Zennit's, lower-cased)
LRP_RULES = ("epsilon", "zero", "gamma", "alphabeta", "zplus", "wsquare", "flat", "zbox")


@dataclass(frozen=True)
class Rule:
    """One LRP rule with its parameters (see the module docstring for the formulas)."""

    name: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 1.0
    beta: float = 0.0
    low: float = 0.0
    high: float = 1.0
    stabilizer: float = 1e-6
    zero_bias: bool = False


@dataclass(frozen=True)
class RelevanceRules:
    """Per-layer LRP rules, keyed by the backend's own layer names."""

    layers: tuple = ()  # ((layer name, Rule), ...)
    default: Rule | None = None
    canonize: bool = True
    sum_stabilizer: float = 1e-6

    def rule_for(self, name: str) -> Rule | None:
        """The rule of a conv or linear layer: its own, else ``default`` (None: not covered)."""
        return dict(self.layers).get(name, self.default)


@dataclass(frozen=True, eq=False)
class DeepLiftRules:
    """The rescale rule with a reference input: ``baseline`` (N, C, H, W) float32, one per image."""

    baseline: np.ndarray = field(repr=False)
    eps: float = 1e-10


def rule_set_name(rule) -> str:
    """A short name of a rule or rule set, for error messages."""
    if isinstance(rule, str):
        return repr(rule)
    return type(rule).__name__
