"""Metrics that compare attribution methods and models.

- :func:`pointing_game`: is a map's peak on the object (Zhang et al. 2016)?
- :func:`deletion` and :func:`insertion`: how fast the score falls as the most important
  pixels are removed, or rises as they are put back (Petsiuk et al. 2018, RISE).
"""
from .curves import PerturbationCurve, deletion, insertion
from .pointing import pointing_game

__all__ = ["pointing_game", "deletion", "insertion", "PerturbationCurve"]
