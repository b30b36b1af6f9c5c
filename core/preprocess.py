"""What a model expects of its input, declared once: ``convscope.load(model, preprocess=...)``.

Users hold images as they see them: floats in [0, 1] (or uint8, or PIL images), RGB. A model
was trained on something else: pixels scaled to [0, 255], channels reordered to BGR, a
per-channel mean subtracted and a standard deviation divided out. A :class:`Preprocess`
states that map; the backend ``load`` returns then takes user images, runs the model on::

    m = (reorder(x) * scale - mean) / std          (per channel, in the model's order)

and differentiates through it, so every gradient (and every picture) is in the user's space:
``dS/dx = reorder^-1(dS/dm * scale / std)``. Presets name the conventions users meet
(:data:`PRESETS`); ``preprocess="keras"`` picks the mode of a ``keras.applications`` model
from its name (and says so in ``backend.choices``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from ._validate import describe, param_error

__all__ = ["Preprocess", "PRESETS", "check_preset", "resolve", "keras_mode", "fit_image", "fit_geometry", "user_images",
           "RESIZE_MODES"]

RESIZE_MODES = ("crop", "pad", "stretch")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """The map from user images (float [0, 1], RGB) to the model's input.

    ``scale`` multiplies first (255 for models trained on 0-255 pixels); ``order`` is the
    channel order the model takes ("RGB" or "BGR"); ``mean`` and ``std`` (one value per
    channel, in the model's order and scaled units; None: 0 and 1) normalise; ``layout`` is
    the layout of the arrays users pass ("NCHW", or "NHWC" for channels-last arrays);
    ``resize`` how :func:`fit_image` brings a photo to the model's size ("crop": shorter
    side, then centre crop; "pad"; "stretch"). ``name`` names a preset.
    """

    mean: tuple | None = None
    std: tuple | None = None
    scale: float = 1.0
    order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "crop"
    name: str = ""

    def __post_init__(self):
        owner = "Preprocess"
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not self.scale > 0:
            raise param_error("scale", owner, "a number > 0 (255 for models trained on 0-255 pixels)", repr(self.scale))
        for name, values, ok in (("mean", self.mean, lambda v: np.isfinite(v).all()),
                                 ("std", self.std, lambda v: np.isfinite(v).all() and (v > 0).all())):
            if values is not None:
                try:
                    arr = np.asarray(values, np.float64).reshape(-1)
                except (TypeError, ValueError):
                    raise param_error(name, owner, "one number per channel", describe(values), TypeError) from None
                if not arr.size or not ok(arr):
                    raise param_error(name, owner, "finite numbers, one per channel" + (" (> 0)" if name == "std" else ""),
                                      describe(values))
                object.__setattr__(self, name, tuple(float(v) for v in arr))
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise param_error("std", owner, f"as many values as mean ({len(self.mean)})", f"{len(self.std)} values")
        for name, value, choices in (("order", self.order, ("RGB", "BGR")), ("layout", self.layout, ("NCHW", "NHWC")),
                                     ("resize", self.resize, RESIZE_MODES)):
            if value not in choices:
                raise param_error(name, owner, "one of " + ", ".join(repr(c) for c in choices), repr(value))

    def check_channels(self, channels: int, owner: str = "convscope.load") -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, channels):
                raise param_error("preprocess", owner, f"a {name} of 1 or {channels} values for this {channels}-channel "
                                  "model", f"{len(values)} values")

    def _affine(self, c: int):
        mean = np.zeros(c) if self.mean is None else np.broadcast_to(np.asarray(self.mean), (c,))
        std = np.ones(c) if self.std is None else np.broadcast_to(np.asarray(self.std), (c,))
        gain = (self.scale / std).astype(np.float32)[None, :, None, None]
        shift = (mean / std).astype(np.float32)[None, :, None, None]
        return gain, shift

    def _reorder(self, x):
        return x[:, ::-1] if self.order == "BGR" and x.shape[1] == 3 else x

    def apply(self, x: np.ndarray) -> np.ndarray:
        """User images (N, C, H, W) -> the model's input."""
        gain, shift = self._affine(x.shape[1])
        return np.ascontiguousarray(self._reorder(x) * gain - shift, dtype=np.float32)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """A gradient with respect to the model's input -> with respect to the user image."""
        gain, _ = self._affine(g.shape[1])
        return np.ascontiguousarray(self._reorder(g * gain), dtype=np.float32)

    def invert(self, m: np.ndarray) -> np.ndarray:
        """The model's input -> the user image (for pictures of what the model saw)."""
        gain, shift = self._affine(m.shape[1])
        return np.ascontiguousarray(self._reorder((m + shift) / gain), dtype=np.float32)


PRESETS = {
    "none": Preprocess(name="none"),
    "imagenet": Preprocess(mean=_IMAGENET_MEAN, std=_IMAGENET_STD, name="imagenet"),
    "torch": Preprocess(mean=_IMAGENET_MEAN, std=_IMAGENET_STD, name="torch"),
    "caffe": Preprocess(mean=(103.939, 116.779, 123.68), scale=255.0, order="BGR", name="caffe"),
    "tf": Preprocess(mean=(0.5,), std=(0.5,), name="tf"),  # (x - 0.5) / 0.5 = 2 x - 1: [-1, 1]
    "raw255": Preprocess(scale=255.0, name="raw255"),
}
PRESETS_HELP = {
    "none": "the model takes [0, 1] RGB images as they are",
    "imagenet": "torchvision's ImageNet mean and std on [0, 1] RGB",
    "torch": "keras.applications 'torch' mode (DenseNet): as imagenet",
    "caffe": "keras.applications 'caffe' mode (ResNet50, VGG): BGR, 0-255, ImageNet mean subtracted",
    "tf": "keras.applications 'tf' mode (MobileNet, Inception, Xception, ResNetV2): [-1, 1]",
    "raw255": "0-255 RGB, normalised inside the model (EfficientNet, MobileNetV3, ConvNeXt on Keras)",
}

#: keras.applications model names (prefixes) -> the preset of their preprocess_input
_KERAS_MODES = (("resnet50v2", "tf"), ("resnet101v2", "tf"), ("resnet152v2", "tf"), ("resnet", "caffe"),
                ("vgg", "caffe"), ("inception", "tf"), ("xception", "tf"), ("mobilenetv3", "raw255"),
                ("mobilenet", "tf"), ("nasnet", "tf"), ("densenet", "torch"), ("efficientnet", "raw255"),
                ("convnext", "raw255"))


def check_preset(name, owner: str = "convscope.load", param: str = "preprocess") -> Preprocess:
    """The preset called ``name``; an unknown name lists the presets (closest first)."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(str(name), list(PRESETS), n=3, cutoff=0.4)
    names = close + [p for p in PRESETS if p not in close]
    raise ValueError(f"The '{param}' parameter of {owner} must be a preset name or a convscope.Preprocess. Got "
                     f"{name!r} instead; presets: {', '.join(names)}.")


def keras_mode(model):
    """(preset name, note) for a ``keras.applications`` model recognised by its name, else None."""
    name = str(getattr(model, "name", "")).lower()
    for prefix, preset in _KERAS_MODES:
        if name.startswith(prefix):
            return preset, (f"preprocess: the '{preset}' mode of keras.applications for the model named "
                            f"{getattr(model, 'name', '')!r} ({PRESETS_HELP[preset]})")
    return None


def resolve(spec, model, owner: str = "convscope.load"):
    """(Preprocess or None, note or None) for ``load(model, preprocess=spec)``."""
    if spec is None or isinstance(spec, Preprocess):
        return spec, None
    if isinstance(spec, str) and spec in ("keras", "auto"):
        found = keras_mode(model)
        if found is None:
            raise ValueError(f"The 'preprocess' parameter of {owner} is {spec!r}, which reads the mode of a "
                             f"keras.applications model from its name, but {getattr(model, 'name', type(model).__name__)!r} "
                             f"is not one; name a preset instead: {', '.join(PRESETS)}.")
        return PRESETS[found[0]], found[1]
    if isinstance(spec, str):
        return check_preset(spec, owner), None
    raise param_error("preprocess", owner, "a preset name, 'keras', or a convscope.Preprocess", describe(spec), TypeError)


# ----------------------------------------------------------------------------- user images
def _from_pil(x):
    if type(x).__module__.startswith("PIL.") and hasattr(x, "mode"):
        return np.asarray(x.convert("RGB") if x.mode not in ("RGB", "L") else x)
    return x


def user_images(x, layout: str = "NCHW"):
    """Images as users hold them -> an array for :func:`~convscope._validate.as_images`.

    PIL images (one, or a list) become arrays; uint8 becomes float in [0, 1]; one image
    (C, H, W) or (H, W, C) becomes a batch of one; ``layout="NHWC"`` arrays, and stacks whose
    last axis holds 1, 3 or 4 channels while axis 1 cannot, are transposed.
    Anything else is handed on unchanged, for the checks to report."""
    if isinstance(x, (list, tuple)) and x and all(type(i).__module__.startswith("PIL.") for i in x):
        x = np.stack([_from_pil(i) for i in x])
        layout = "NHWC"
    x = _from_pil(x)
    if not isinstance(x, np.ndarray):
        return x
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 2:  # one grey image
        x = x[None, None]
    elif x.ndim == 3:
        channels_last = x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4)
        x = (x.transpose(2, 0, 1) if channels_last or layout == "NHWC" else x)[None]
    elif x.ndim == 4 and (layout == "NHWC" or (x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4))):
        x = x.transpose(0, 3, 1, 2)  # a stack of (H, W, C) photos, declared or unmistakable
    return x


def fit_image(image, size, mode: str = "crop"):
    """A photo -> float32 (C, H, W) in [0, 1] of ``size`` (H, W), and notes on what was done.

    ``mode`` "crop" resizes the shorter side to fit and centre-crops (the aspect is kept, the
    borders are cut), "pad" resizes the longer side to fit and pads with grey 0.5 (nothing is
    cut), "stretch" resizes both axes. An image with alpha is composited on white."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise param_error("mode", "fit_image", "one of " + ", ".join(repr(m) for m in RESIZE_MODES), repr(mode))
    notes = []
    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
        notes.append("alpha composited on white")
    image = image.convert("RGB")
    out = fit_geometry(image, size, mode, Image.BILINEAR, (128, 128, 128))
    if out is not image:
        notes.append(f"resized from {image.size[0]}x{image.size[1]} ({mode})")
    return np.asarray(out, np.float32).transpose(2, 0, 1) / 255.0, notes


def fit_geometry(image, size, mode: str, resample, fill):
    """A PIL image fitted to ``size`` (H, W) by ``mode``: "stretch"; "crop" (shorter side to
    the size, then the centre); "pad" (longer side to the size, ``fill`` around). The image
    itself when it already has the size. Photos and their masks share it (masks with nearest
    pixels and an empty fill), so a mask lands where its photo does."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    if image.size == (w, h):
        return image
    if mode == "stretch":
        return image.resize((w, h), resample)
    sx, sy = w / image.size[0], h / image.size[1]
    s = max(sx, sy) if mode == "crop" else min(sx, sy)
    rw, rh = max(1, round(image.size[0] * s)), max(1, round(image.size[1] * s))
    resized = image.resize((rw, rh), resample)
    if mode == "crop":
        left, top = (rw - w) // 2, (rh - h) // 2
        return resized.crop((left, top, left + w, top + h))
    out = Image.new(image.mode, (w, h), fill)
    out.paste(resized, ((w - rw) // 2, (h - rh) // 2))
    return out
