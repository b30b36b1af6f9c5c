"""The metrics by name: what each needs and which way is better, so one table can run them all.

A metric module registers its public function with :func:`register_metric`. A registered
function takes the arguments it needs by these keyword names: ``model`` (anything
:func:`convscope.load` takes), ``x`` (N, C, H, W) images, ``maps`` (N, H, W) maps or an
AttributionMaps, ``target`` (N,) classes, ``masks`` (N, H, W) bool ground truth, ``method``
(the explanation method: an attribution function's name or a callable
``method(model, x, target) -> AttributionMaps``), and returns a :class:`MetricScores`.
`evaluate_metric` calls any metric by name with whatever of these the caller has, passing
only what it needs; :func:`convscope.metrics.compare` is built on it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from .._validate import param_error

__all__ = ["MetricSpec", "METRICS", "FAMILIES", "NEEDS", "register_metric", "get_metric", "evaluate_metric",
           "as_method"]

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "axiomatic", "randomisation")
NEEDS = frozenset({"model", "x", "maps", "target", "masks", "method"})


@dataclass(frozen=True)
class MetricSpec:
    name: str
    family: str
    fn: Callable
    higher_is_better: bool
    needs: frozenset
    doc: str = ""


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, family: str, *, higher_is_better: bool, needs):
    """Decorator: list ``fn`` under ``name`` (a metric's public function)."""
    needs = frozenset(needs)
    if family not in FAMILIES:
        raise param_error("family", "register_metric", f"one of {list(FAMILIES)}", repr(family))
    if not needs <= NEEDS:
        raise param_error("needs", "register_metric", f"names among {sorted(NEEDS)} (what evaluate_metric passes)",
                          repr(sorted(needs - NEEDS)))

    def wrap(fn):
        METRICS[name] = MetricSpec(name, family, fn, higher_is_better, needs,
                                   (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def get_metric(name, owner: str = "compare", param: str = "metrics") -> MetricSpec:
    """The registered metric ``name``; an unknown name lists the close matches."""
    if isinstance(name, MetricSpec):
        return name
    if not isinstance(name, str) or name not in METRICS:
        close = difflib.get_close_matches(str(name), METRICS, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise param_error(param, owner, f"a metric name, one of {sorted(METRICS)}", f"{name!r}{hint}")
    return METRICS[name]


def evaluate_metric(name, **available):
    """Run metric ``name`` with the arguments it needs from ``available`` (model, x, maps,
    target, masks, method), plus ``options`` (a dict of its own keyword arguments)."""
    spec = get_metric(name, "evaluate_metric", "name")
    options = dict(available.pop("options", None) or {})
    missing = [k for k in spec.needs if available.get(k) is None and k != "target"]
    if missing:
        raise param_error(missing[0], f"metric {spec.name!r}", "given (the metric needs it)", "None")
    kwargs = {k: available.get(k) for k in spec.needs}
    return spec.fn(**kwargs, **options)


def as_method(method, owner: str, param: str = "method") -> Callable:
    """A callable ``(model, x, target) -> AttributionMaps`` from an attribution function's
    name (``"grad_cam"``), a ``(name, {options})`` pair, or a callable."""
    from .. import attribution

    options = {}
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], dict):
        method, options = method
    if isinstance(method, str):
        names = [n for n in attribution.__all__ if n != "AttributionMaps"]
        if method not in names:
            close = difflib.get_close_matches(method, names, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise param_error(param, owner, f"an attribution method, one of {names}", f"{method!r}{hint}")
        fn = getattr(attribution, method)
        return lambda model, x, target=None: fn(model, x, target, **options)
    if callable(method):
        return method if not options else (lambda model, x, target=None: method(model, x, target, **options))
    raise param_error(param, owner, "an attribution method's name or a callable (model, x, target) -> maps",
                      repr(method)[:60], TypeError)
