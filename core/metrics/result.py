"""What every metric returns: one score per image, with its direction and details."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MetricScores", "interval"]


def interval(scores, level: float = 0.95, *, resamples: int = 2000) -> tuple[float, float]:
    """A percentile-bootstrap confidence interval of the mean of ``scores`` over images
    (NaNs left out; seeded, so the same scores give the same interval). With one finite
    score the interval is that score; with none, (nan, nan)."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return float("nan"), float("nan")
    if len(s) == 1 or np.all(s == s[0]):
        return float(s[0]), float(s[0])
    rng = np.random.default_rng(0)
    means = s[rng.integers(0, len(s), (resamples, len(s)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass
class MetricScores:
    """Scores of one metric for a batch of maps.

    ``scores`` (N,) float64, NaN where the metric is undefined for an image (``info`` says
    why); ``higher_is_better`` the direction; ``info`` the settings and any choices made.
    """

    metric: str
    scores: np.ndarray
    higher_is_better: bool
    info: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """The mean over the images where the score is defined."""
        s = np.asarray(self.scores, np.float64)
        s = s[np.isfinite(s)]
        return float(s.mean()) if len(s) else float("nan")

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Bootstrap confidence interval of :attr:`mean` (see :func:`interval`)."""
        return interval(self.scores, level)

    def __float__(self):
        return self.mean

    def __len__(self):
        return len(self.scores)

    def __repr__(self):
        arrow = "higher" if self.higher_is_better else "lower"
        return f"MetricScores({self.metric}: mean {self.mean:.4g} over {len(self.scores)} images, {arrow} is better)"
