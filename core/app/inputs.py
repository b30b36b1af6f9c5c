"""What the command line reads: model specs, preprocessing, image files and folders, class names.

Images are read as users have them (any size, RGB, grey or RGBA) and fitted to the size the
model takes, the way the preprocessing says (``--resize``: shorter side and centre crop by
default, ``pad`` or ``stretch``), so circles stay circles. Every user mistake raises
:class:`UsageError`, which the command turns into one line on stderr and exit status 2.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..preprocess import RESIZE_MODES

__all__ = ["UsageError", "load_model", "open_backend", "model_size", "read_images", "read_folder", "class_names",
           "class_index", "MODEL_FORMATS", "RESIZE_MODES", "BASELINES_NOTE", "required_arguments",
           "device_options"]

MODEL_FORMATS = "an .onnx file, a .keras (or .h5) file, a torch model as package.module:factory, or 'demo' / demo:torch|onnx|keras"


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


def load_model(spec: str):
    """Turn a MODEL argument into something :func:`convscope.load` accepts."""
    from ..data import demo_model

    if spec == "demo" or spec.startswith("demo:"):
        framework = spec.partition(":")[2] or "torch"
        if framework not in ("torch", "onnx", "keras"):
            raise UsageError(f"unknown demo framework {framework!r}; use demo:torch, demo:onnx or demo:keras")
        return demo_model(framework)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".keras", ".h5"):
        if not path.is_file():
            raise UsageError(f"model file not found: {spec}")
        return str(path)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(f"cannot import {module_name!r} for the model {spec!r}: {err}") from None
        finally:
            sys.path.pop(0)
        factory = getattr(module, attr, None)
        if factory is None:
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (the model factory in {spec!r})")
        model = factory() if callable(factory) else factory
        return model.eval() if hasattr(model, "eval") and callable(model.eval) else model
    if path.exists():
        raise UsageError(f"model format not recognised: {spec}; supported: {MODEL_FORMATS}")
    raise UsageError(f"model not found: {spec}; give {MODEL_FORMATS}")


# --------------------------------------------------------------------------- preprocessing
def preprocessing(args):
    """The ``preprocess=`` of :func:`convscope.load` from ``--preset``, ``--mean``, ``--std``
    (None when nothing is asked), with the mistakes told in one line."""
    preset, mean, std = getattr(args, "preset", None), getattr(args, "mean", None), getattr(args, "std", None)
    if preset is None and mean is None and std is None:
        return None
    from .. import preprocess as module

    if preset is not None and preset not in module.PRESETS and preset not in ("keras", "auto"):
        close = difflib.get_close_matches(preset, list(module.PRESETS), n=3, cutoff=0.4)
        raise UsageError(f"unknown --preset {preset!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; the presets are {', '.join(module.PRESETS)}")
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, 3):
            raise UsageError(f"{name} takes 1 or 3 values (one per channel). Got {len(values)}: "
                             + " ".join(f"{v:g}" for v in values))
    if std is not None and any(v <= 0 for v in std):
        raise UsageError("--std values must be > 0. Got " + " ".join(f"{v:g}" for v in std))
    if mean is None and std is None:
        return preset
    import dataclasses

    if preset in ("keras", "auto"):
        raise UsageError(f"--preset {preset} reads the mode from a keras.applications model's name; it takes no "
                         "--mean or --std (name a preset instead)")
    base = module.PRESETS[preset or "none"]
    changes = {k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    return dataclasses.replace(base, **changes)


DEVICE_HELP = ("where the model runs: cpu, cuda, cuda:1 (torch: the model is moved there; ONNX: ONNX Runtime's CUDA "
               "provider; Keras: tf.device), an ONNX Runtime provider name such as TensorrtExecutionProvider, or a "
               "TensorFlow device such as /GPU:0 (default: torch the model's device, ONNX CUDA when onnxruntime-gpu "
               "sees a GPU else the CPU, Keras TensorFlow's placement)")


def device_options(model, device):
    """The :func:`convscope.load` options that run ``model`` on ``device`` (``--device``): ONNX
    Runtime's ``providers`` for an ONNX file ("cuda", "cuda:1", "cpu" or a provider name such as
    "TensorrtExecutionProvider"), ``device`` for a Keras model ("/GPU:0", "cuda", "cpu"). A torch
    model built by the command (a factory or the demo) is moved there first: the command owns it."""
    if device is None:
        return {}
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else ""
    if isinstance(model, bytes) or path.lower().endswith(".onnx"):
        kind, _, index = device.partition(":")
        return {"providers": [(kind, {"device_id": index})] if index.isdigit() else device}
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from convscope.backends.torch._device import checked_device

        model.to(checked_device(torch, device, None))
    return {"device": device}


def open_backend(args):
    """The backend of ``args.model`` with the asked preprocessing; ``args.backend`` keeps it."""
    import convscope

    if getattr(args, "backend", None) is not None:
        return args.backend
    model = load_model(args.model)
    spec = preprocessing(args)
    options = device_options(model, getattr(args, "device", None))
    if spec is not None:
        options["preprocess"] = spec
    args.backend = convscope.load(model, **options)
    args.model_object = model
    return args.backend


def model_size(backend, model=None):
    """(H, W) the model takes: its fixed size, else the (C, H, W) it declares, else None."""
    def pair(shape):
        if shape is not None and all(isinstance(s, (int, np.integer)) and s > 0 for s in shape[-2:]):
            return int(shape[-2]), int(shape[-1])
        return None

    fixed = getattr(backend, "fixed_size", None)
    if fixed is not None and len(fixed) == 2 and pair(fixed):
        return pair(fixed)
    for owner in (backend, model):
        shape = getattr(owner, "input_shape", None)
        if isinstance(shape, (tuple, list)) and len(shape) == 3 and pair(shape):  # (C, H, W), not Keras' (N, H, W, C)
            return pair(shape)
    return None


def target_size(args, backend, first_path=None):
    """The size images are fitted to: ``--size``, else the model's, else the first image's."""
    fixed = getattr(backend, "fixed_size", None)
    asked = tuple(args.size) if getattr(args, "size", None) else None
    if asked and fixed and tuple(fixed) != asked:
        raise UsageError(f"--size {asked[0]} {asked[1]} does not fit the model, which takes {fixed[0]}x{fixed[1]} images "
                         f"(HxW); leave --size out (images are resized to the model's size) or pass --size {fixed[0]} {fixed[1]}")
    size = asked or model_size(backend, getattr(args, "model_object", None))
    if size is None and first_path is not None:
        with _open(first_path) as img:
            size = (img.height, img.width)
    return size


def resize_mode(args, backend):
    mode = getattr(args, "resize", None)
    if mode is None:
        mode = getattr(getattr(backend, "preprocess", None), "resize", None) or "crop"
    return mode


# --------------------------------------------------------------------------- images
def _open(path):
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UsageError(f"cannot decode image {path}: {str(err).splitlines()[0]}") from None
    return img


def fit(img, size, mode):
    """(C, H, W) float32 in [0, 1] of ``size`` and the notes (RGBA composited, ...)."""
    from ..preprocess import fit_image

    array, notes = fit_image(img, size, mode=mode)
    return np.asarray(array, np.float32), [n for n in notes if not n.startswith("resized")]  # said by read_images


def read_images(paths, size=None, mode: str = "crop"):
    """Image files fitted to ``size`` (H, W): (N, 3, H, W) float32 in [0, 1] and the notes
    (one per kind, with how many images it concerns). ``size=None``: the first image's."""
    images, notes = [], {}
    for p in paths:
        with _open(p) as img:
            if size is None:
                size = (img.height, img.width)
            original = (img.height, img.width)
            array, said = fit(img, size, mode)
        if original != tuple(size):
            said.append(f"resized to {size[0]}x{size[1]} ({mode})")
        for note in said:
            notes[note] = notes.get(note, 0) + 1
        images.append(array)
    counted = [f"{n} ({k} of {len(images)} images)" if len(images) > 1 else n for n, k in notes.items()]
    return np.stack(images), counted


def read_folder(folder, size=None, mode: str = "crop"):
    """A folder of images (subfolders are classes) as a dataset fitted to ``size``."""
    from ..data.datasets import ImageFolder

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"data folder not found: {folder}")

    class Fitted(ImageFolder):
        def _read(self, path):
            with _open(path) as img:
                return fit(img, self.size, mode)[0]

    if size is None:  # the first image's size
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            try:
                with _open(p) as img:
                    size = (img.height, img.width)
                break
            except UsageError:
                continue
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped ")
        try:
            data = Fitted(root, size=size or (1, 1), owner="the data folder")
        except ValueError as err:
            raise UsageError(f"no images in {folder}" if "at least one image" in str(err) else str(err)) from None
    skipped = _count_skipped(root, data)
    if skipped:
        warnings.warn(f"skipped {skipped} file{'s' if skipped != 1 else ''} in {folder} that "
                      f"{'are not images' if skipped != 1 else 'is not an image'}", UserWarning)
    return data


def _count_skipped(root, data) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) - data.n


# --------------------------------------------------------------------------- classes
def class_names(args, backend, data=None):
    """Class names: ``--labels FILE``, else the data folders' names, else the demo's, else None."""
    k = getattr(args, "n_classes", None)
    path = getattr(args, "labels", None)
    if path:
        try:
            names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read --labels {path}: {err}") from None
        if k is not None and len(names) != k:
            raise UsageError(f"--labels {path} has {len(names)} names; the model has {k} classes (one name per line)")
        return names
    classes = getattr(data, "classes", None)
    if classes and (k is None or len(classes) == k):
        return [Path(c).name for c in classes]
    if str(getattr(args, "model", "")).startswith("demo"):
        from ..data import DEMO_CLASSES

        return list(DEMO_CLASSES)
    return None


def class_index(value, names, k=None, option="--target"):
    """A class given as an index or a name: its index; an unknown name lists the close matches."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if k is not None and not 0 <= index < k:
            raise UsageError(f"{option} {index} is not a class of the model, which has {k} (0 to {k - 1})")
        return index
    if names and text in names:
        return names.index(text)
    if not names:
        raise UsageError(f"{option} {text!r} is a name, but the model's classes have no names; pass --labels FILE "
                         "(one name per line) or give the class index")
    lowered = {n.lower(): n for n in names}
    if text.lower() in lowered:
        return names.index(lowered[text.lower()])
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; the classes are {', '.join(names[:12])}" + (
        ", ..." if len(names) > 12 else "")
    raise UsageError(f"{option} {text!r} is not a class name{hint}")


#: what the command gives a method for a required argument the command line has no option for
BASELINES_NOTE = ("baselines: a black image and 7 uniform-noise images in the model's input range (seed 0), "
                  "as a small reference distribution")


def required_arguments(backend, x, method) -> dict:
    """Values for a method's required arguments the command line has no option for (DeepLiftShap's and
    GradientShap's ``baselines``: :data:`BASELINES_NOTE`)."""
    import inspect

    from .. import attribution

    params = inspect.signature(getattr(attribution, method)).parameters
    if "baselines" in params and params["baselines"].default is inspect.Parameter.empty:
        low, high = getattr(backend, "value_range", (0.0, 1.0))
        noise = np.random.default_rng(0).uniform(low, high, (7, *x.shape[1:])).astype(np.float32)
        return {"baselines": np.concatenate([np.full((1, *x.shape[1:]), low, np.float32), noise])}
    return {}
