"""The documented noise of the noise tunnels (convscope._noise.gaussian), written out in float64
from its definition: Box-Muller on ``default_rng(seed).random(2 m, float32)``."""
import numpy as np


def box_muller(seed, shape):
    n = int(np.prod(shape))
    m = (n + 1) // 2
    u = np.random.default_rng(seed).random(2 * m, dtype=np.float32).astype(np.float64)
    radius = np.sqrt(-2.0 * np.log1p(-u[:m]))
    angle = 2.0 * np.pi * u[m:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n].reshape(shape)
