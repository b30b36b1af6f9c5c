"""Metrics that compare attribution methods and models.

Every metric is registered by name (:data:`METRICS`, :func:`evaluate_metric`) with its family and
direction, and returns a :class:`MetricScores` (one score per image) when called by name.

- localisation: :func:`pointing_game` (Zhang et al. 2016)
- faithfulness: :func:`deletion` and :func:`insertion`: how fast the score falls as the most
  important pixels are removed, or rises as they are put back (Petsiuk et al. 2018, RISE)
"""
from .curves import PerturbationCurve, deletion, insertion
from .pointing import pointing_game
from .registry import FAMILIES, METRICS, evaluate_metric, get_metric, register_metric
from .result import MetricScores
from . import axiomatic, complexity as _complexity, faithfulness, localisation, robustness, sanity, compare as _compare
from .axiomatic import *  # noqa: F401,F403
from .complexity import *  # noqa: F401,F403
from .faithfulness import *  # noqa: F401,F403
from .localisation import *  # noqa: F401,F403
from .robustness import *  # noqa: F401,F403
from .sanity import *  # noqa: F401,F403
from .compare import *  # noqa: F401,F403

__all__ = ["pointing_game", "deletion", "insertion", "PerturbationCurve", "MetricScores", "METRICS", "FAMILIES",
           "evaluate_metric", "get_metric", "register_metric"]
for _family in (axiomatic, _complexity, faithfulness, localisation, robustness, sanity, _compare):
    __all__ += _family.__all__
