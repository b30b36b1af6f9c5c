"""How many images go into one backend call when the caller leaves it open."""
from __future__ import annotations

__all__ = ["auto_batch_size", "batch_size_for", "PIXELS_PER_CALL"]

#: Pixels per backend call when the batch size is left to choose: 64 images of 64 x 64, 5 of
#: 224 x 224. Measured on 2 CPU cores, forward throughput peaks there: the demo model runs
#: 16-64 images a call 1.7x faster than 256 (whose activations leave the cache), ResNet-18
#: 2-5 images 1.25x faster than 1 or 20.
PIXELS_PER_CALL = 2 ** 18


def auto_batch_size(height: int, width: int, pixels: int = PIXELS_PER_CALL) -> int:
    """Images per backend call when the caller does not say: ``pixels`` per call in all."""
    return max(1, pixels // (height * width))


def batch_size_for(batch_size, image_size, owner: str, *, param: str = "batch_size") -> int:
    """``batch_size`` checked (an int >= 1), or, for None, :func:`auto_batch_size` of the
    images' (H, W) (64 when the size is not known)."""
    if batch_size is None:
        return auto_batch_size(*image_size) if image_size and None not in image_size else 64
    from ._validate import check_int

    return check_int(batch_size, param, owner, low=1)
