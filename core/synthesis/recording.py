"""Watching an optimisation: a callback that records frames, and GIF files (Pillow)."""
from __future__ import annotations


import numpy as np

from .._validate import check_int, param_error
from pathlib import Path

from ..render import grid, to_rgb
from ..render.image import atomic_write

__all__ = ["FrameRecorder", "save_gif"]


class FrameRecorder:
    """A ``callback(step, images, values)`` that keeps the images every ``every`` steps.

    Pass it as ``callback=`` to :func:`visualize` (and the other synthesis functions);
    ``frames`` holds (step, images) pairs, :meth:`save_gif` writes them as an animation.
    """

    def __init__(self, every: int = 1, *, limit: int = 500):
        self.every = check_int(every, "every", "FrameRecorder", low=1)
        self.limit = check_int(limit, "limit", "FrameRecorder", low=1)
        self.frames = []
        self.values = []

    def __call__(self, step, images, values=None):
        if step % self.every == 0 and len(self.frames) < self.limit:
            self.frames.append((int(step), np.array(images, np.float32, copy=True)))
            self.values.append(None if values is None else np.array(values, copy=True))

    def pictures(self, value_range=(0.0, 1.0)) -> list:
        """One (H, W, 3) picture per frame (the batch laid out in a row)."""
        lo, hi = value_range
        return [grid([to_rgb(np.clip((im - lo) / (hi - lo), 0, 1)) for im in images], ncols=len(images), pad=2)
                for _, images in self.frames]

    def save_gif(self, path, *, duration: int = 80, scale: int = 2, value_range=(0.0, 1.0)):
        """Write the frames as an animated GIF (``duration`` ms per frame); returns the path."""
        if not self.frames:
            raise ValueError("The FrameRecorder has no frames; pass it as callback= to a synthesis function first.")
        return save_gif(self.pictures(value_range), path, duration=duration, scale=scale)


def save_gif(pictures, path, *, duration: int = 80, scale: int = 1, loop: int = 0) -> Path:
    """Write (H, W, 3) pictures in [0, 1] as an animated GIF, atomically."""
    from PIL import Image

    pictures = list(pictures)
    if not pictures:
        raise param_error("pictures", "save_gif", "a non-empty sequence of pictures", "an empty sequence")
    scale = check_int(scale, "scale", "save_gif", low=1)
    duration = check_int(duration, "duration", "save_gif", low=1)
    images = []
    for p in pictures:
        im = Image.fromarray((np.clip(to_rgb(p), 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        images.append(im)
    return atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                         duration=int(duration), loop=loop, optimize=False))
