"""How many images go into one backend call when the caller leaves it open.

On the CPU the rule is a number of pixels per call (:data:`PIXELS_PER_CALL`). A backend on a
device with its own memory (torch or ONNX Runtime on CUDA) also states a ceiling, the images
per call that fit (``backend.memory_ceiling(height, width)``, None for no ceiling), and the
automatic size never goes above it. :func:`memory_ceiling` is the estimate the backends use:
the device's free memory times :data:`SAFETY` over the bytes one image's pass holds.
"""
from __future__ import annotations

import math

__all__ = ["auto_batch_size", "batch_size_for", "memory_ceiling", "bytes_per_image", "PIXELS_PER_CALL",
           "SAFETY", "PASS_COPIES"]

#: Pixels per backend call when the batch size is left to choose: 64 images of 64 x 64, 5 of
#: 224 x 224. Measured on 2 CPU cores, forward throughput peaks there: the demo model runs
#: 16-64 images a call 1.7x faster than 256 (whose activations leave the cache), ResNet-18
#: 2-5 images 1.25x faster than 1 or 20.
PIXELS_PER_CALL = 2 ** 18
#: the part of a device's free memory an automatic batch may fill (the rest: the framework's
#: workspace, its allocator's fragmentation, other work on the device)
SAFETY = 0.5
#: copies of every layer's output one image's pass holds: the forward activations, their
#: gradients in the backward pass, and as much again for the operators' own buffers
PASS_COPIES = 3


def auto_batch_size(height: int, width: int, pixels: int = PIXELS_PER_CALL, *, backend=None) -> int:
    """Images per backend call when the caller does not say: ``pixels`` per call in all, and
    no more than ``backend.memory_ceiling(height, width)`` when the backend has one."""
    size = max(1, pixels // (height * width))
    ceiling = getattr(backend, "memory_ceiling", None)
    limit = ceiling(height, width) if callable(ceiling) else None
    return size if limit is None else max(1, min(size, int(limit)))


def batch_size_for(batch_size, image_size, owner: str, *, param: str = "batch_size", backend=None) -> int:
    """``batch_size`` checked (an int >= 1), or, for None, :func:`auto_batch_size` of the
    images' (H, W) (64 when the size is not known), under the backend's memory ceiling."""
    if batch_size is None:
        return auto_batch_size(*image_size, backend=backend) if image_size and None not in image_size else 64
    from ._validate import check_int

    return check_int(batch_size, param, owner, low=1)


def bytes_per_image(shapes, probed_size, height: int, width: int, itemsize: int = 4) -> int:
    """Bytes one image's forward and backward pass holds at (height, width): :data:`PASS_COPIES`
    copies of every layer output in ``shapes`` (shapes without the batch axis, probed at
    ``probed_size`` (H, W)), scaled by the ratio of pixels, plus the image itself."""
    elements = sum(math.prod(s) for s in shapes if s and all(isinstance(d, int) and d > 0 for d in s))
    scale = (height * width) / max(1, probed_size[0] * probed_size[1])
    return int(PASS_COPIES * elements * itemsize * scale) + 3 * height * width * itemsize


def memory_ceiling(free_bytes: int, per_image: int) -> int:
    """Images per call that fit in :data:`SAFETY` of ``free_bytes``, at least 1."""
    return max(1, int(free_bytes * SAFETY) // max(1, per_image))
