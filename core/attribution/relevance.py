"""Layer-wise relevance propagation (Bach et al. 2015; the rules of Montavon et al. 2019).

:func:`lrp` resolves a composite (Zennit's names and layer maps) to one :class:`Rule` per conv
and linear layer of the backend, by kind and depth, and runs one forward and one modified
backward pass on the backend (``gradient(..., rule=RelevanceRules(...))``): the semantics of
every rule and operator are in :mod:`convscope._relevance`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._relevance import LRP_RULES, RelevanceRules, Rule
from .._targets import check_target, output_seeds, prepare, with_choices
from .._validate import check_choice, check_number, describe, param_error
from ..backend import INPUT, OUTPUT
from .result import AttributionMaps

__all__ = ["lrp", "COMPOSITES", "LRP_RULES"]

#: Zennit's composites: (rule of conv layers, rule of linear (dense) layers, rule of the first
#: conv/linear layer on the data path or None). EpsilonPlus: ZPlus convs, Epsilon dense;
#: EpsilonGammaBox: ZBox first conv, Gamma convs; ...Flat: Flat first layer.
COMPOSITES = {
    "EpsilonPlus": ("zplus", "epsilon", None),
    "EpsilonGammaBox": ("gamma", "epsilon", "zbox"),
    "EpsilonPlusFlat": ("zplus", "epsilon", "flat"),
    "EpsilonAlpha2Beta1": ("alpha2beta1", "epsilon", None),
    "EpsilonAlpha2Beta1Flat": ("alpha2beta1", "epsilon", "flat"),
}
_WEIGHTED = ("conv", "deconv", "linear")
_OWNER = "lrp"


def _rule(name, where, epsilon, gamma, alpha, beta, low, high, stabilizer, zero_bias):
    if isinstance(name, Rule):
        check_choice(name.name, LRP_RULES, "rules", _OWNER)
        return name
    if name == "alpha2beta1":  # Zennit's composites' AlphaBeta(alpha=2, beta=1)
        return Rule("alphabeta", alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_bias=zero_bias)
    if not isinstance(name, str) or name not in LRP_RULES:
        raise param_error(where, _OWNER, "one of " + ", ".join(repr(r) for r in LRP_RULES) + " or a Rule",
                          repr(name) if isinstance(name, str) else describe(name))
    return Rule(name, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high,
                stabilizer=stabilizer, zero_bias=zero_bias)


def _bounds(backend, low, high, choices):
    """(low, high) of the first layer's input for z^B: given, else the backend's value range
    (through its preprocessing, per channel, when it declares one)."""
    if low is not None and high is not None:
        return low, high
    lo, hi = getattr(backend, "value_range", (0.0, 1.0))
    p = getattr(backend, "preprocess", None)
    said = f"the backend's value range ({lo}, {hi})"
    if p is not None and getattr(backend, "channels", None):
        c = backend.channels
        edges = p.apply(np.stack([np.full((c, 1, 1), lo), np.full((c, 1, 1), hi)]).astype(np.float32))[:, :, 0, 0]
        lo_c, hi_c = np.minimum(edges[0], edges[1]), np.maximum(edges[0], edges[1])
        lo, hi = tuple(float(v) for v in lo_c), tuple(float(v) for v in hi_c)
        said += " through the model's preprocessing, per channel"
    choices["zbox bounds"] = f"low={lo}, high={hi}: {said}"
    return (lo if low is None else low), (hi if high is None else high)


def resolve_rules(backend, composite, rules, params):
    """``({layer: Rule}, {layer: kind})`` for every conv/linear layer; errors before any pass."""
    layers = [r for r in backend.layers() if r.kind in _WEIGHTED]  # probed at the images' size (noted)
    if composite in COMPOSITES:
        conv, dense, first = COMPOSITES[composite]
    elif composite in LRP_RULES or composite == "alpha2beta1":
        conv, dense, first = composite, composite, None
    elif composite is None:
        conv = dense = first = None
    else:
        raise param_error("composite", _OWNER, "one of " + ", ".join(repr(c) for c in [*COMPOSITES, *LRP_RULES])
                          + " or None", repr(composite))
    if rules is not None and not isinstance(rules, Mapping):
        raise param_error("rules", _OWNER, "a mapping from layer names, kinds or 'first' to rules",
                          describe(rules), TypeError)
    rules = dict(rules or {})
    names = {r.name for r in layers}
    for key in rules:
        if key not in names and key not in (*_WEIGHTED, "first"):
            raise param_error("rules", _OWNER, "keyed by conv/linear layer names, 'conv', 'linear' or 'first' "
                              f"(layers: {sorted(names)[:8]})", repr(key))
    resolved = {}
    for i, rec in enumerate(layers):
        kind = "conv" if rec.kind in ("conv", "deconv") else "linear"
        chosen = conv if kind == "conv" else dense
        if i == 0 and first is not None and (first != "zbox" or kind == "conv"):
            chosen = first
        chosen = rules.get(kind, chosen)
        if i == 0:
            chosen = rules.get("first", chosen)
        chosen = rules.get(rec.name, chosen)
        if chosen is None:
            raise param_error("rules", _OWNER, f"a rule for every conv/linear layer (composite={composite!r})",
                              f"none for the {kind} layer {rec.name!r}")
        resolved[rec.name] = _rule(chosen, "rules", *params)
    return resolved, {r.name: r.kind for r in layers}


def lrp(model, x, target=None, *, composite="EpsilonPlus", rules=None, epsilon=1e-6, gamma=0.25, alpha=2.0,
        beta=1.0, low=None, high=None, stabilizer=1e-6, zero_bias=False, canonize=True,
        sum_stabilizer=1e-6) -> AttributionMaps:
    """Layer-wise relevance propagation: the explained score redistributed to the pixels.

    ``composite``: Zennit's ``"EpsilonPlus"`` (z+ on convs, epsilon on dense layers),
    ``"EpsilonGammaBox"`` (z^B on the first conv, gamma on the others), ``"EpsilonPlusFlat"``,
    ``"EpsilonAlpha2Beta1"``, ``"EpsilonAlpha2Beta1Flat"`` (flat on the first layer), or one rule
    name of ``LRP_RULES`` for every conv/linear layer. ``rules`` overrides it: ``{layer name,
    "conv", "linear" or "first": rule name or Rule}``. Rule parameters (Zennit's defaults):
    ``epsilon`` (epsilon rule), ``gamma``, ``alpha``/``beta`` (the ``"alphabeta"`` rule),
    ``low``/``high`` (z^B; None: the backend's value range, through its preprocessing),
    ``stabilizer`` (every other rule's divisor), ``zero_bias``. ``canonize`` merges a BatchNorm
    into the conv/linear layer before it; ``sum_stabilizer`` stabilises pools and additions.

    The seed is the target's score, so ``attributions`` (N, C, H, W) sum to it for conservative
    rules (``info["conservation"]``: the scores and the input relevance sums); ``maps`` is the
    sum over channels (signed). ``info["rules"]`` gives the rule of every layer.
    """
    backend, x = prepare(model, x, _OWNER)
    target = check_target(target, len(x), _OWNER)
    for value, param in ((epsilon, "epsilon"), (gamma, "gamma"), (alpha, "alpha"), (beta, "beta"),
                         (stabilizer, "stabilizer"), (sum_stabilizer, "sum_stabilizer")):
        check_number(value, param, _OWNER, low=0.0)
    if abs(alpha - beta - 1.0) > 1e-12:  # as Zennit's AlphaBeta: the rule is conservative only then
        raise param_error("beta", _OWNER, f"alpha - 1 = {alpha - 1.0} (alpha - beta = 1)", repr(beta))
    if RelevanceRules not in tuple(getattr(backend, "rule_sets", ())):
        raise param_error("model", _OWNER, "a model on a backend with LRP rules",
                          f"the {getattr(backend, 'name', type(backend).__name__)} backend, which has none")
    note = getattr(backend, "_note_input", None)
    if note is not None:  # the layer records (and their depth order) at the images' own size
        note(x)
    choices = {}
    lo, hi = _bounds(backend, low, high, choices) if _needs_box(composite, rules) else (0.0, 1.0)
    params = (epsilon, gamma, alpha, beta, lo, hi, stabilizer, zero_bias)
    resolved, kinds = resolve_rules(backend, composite, rules, params)
    rule_set = RelevanceRules(layers=tuple(resolved.items()), default=None, canonize=bool(canonize),
                              sum_stabilizer=float(sum_stabilizer))
    # The classes and scores from a forward pass first: every rule is linear in the output
    # relevance, and every backend takes seeds as a mapping with a rule set.
    outputs = backend.forward(x)
    onehot, index = output_seeds(target, outputs, _OWNER)
    scores = (onehot * outputs).sum(axis=1)
    g = backend.gradient(x, {OUTPUT: onehot * outputs}, wrt=[INPUT], rule=rule_set)
    a = g.grads[INPUT]
    info = {"composite": composite, "rules": {n: _describe(r) for n, r in resolved.items()},
            "conservation": {"scores": scores, "relevance": a.sum(axis=(1, 2, 3))},
            "canonize": bool(canonize)}
    if choices:
        info["choices"] = choices
    return AttributionMaps(a.sum(axis=1), x, "lrp", index, signed=True, attributions=a, outputs=g.outputs,
                           info=with_choices(info, backend))


def _needs_box(composite, rules):
    named = [composite, *(dict(rules).values() if isinstance(rules, Mapping) else ())]
    return any(r in ("zbox", "EpsilonGammaBox") for r in named if isinstance(r, str))  # a Rule has its own


def _describe(rule):
    keep = {"epsilon": ("epsilon",), "zero": (), "gamma": ("gamma", "stabilizer"),
            "alphabeta": ("alpha", "beta", "stabilizer"), "zplus": ("stabilizer",), "wsquare": ("stabilizer",),
            "flat": ("stabilizer",), "zbox": ("low", "high", "stabilizer")}[rule.name]
    extra = ", ".join(f"{k}={getattr(rule, k)}" for k in keep)
    bias = ", zero_bias" if rule.zero_bias else ""
    return f"{rule.name}({extra}{bias})"
