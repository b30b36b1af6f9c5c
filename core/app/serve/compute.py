"""What the explorer server computes, each by one library call, cached on disk per model file.

:class:`Workspace` holds the model (opened once, as the command line opens it), the data
folder's images (and, for a Broden folder, its concept masks) and the cache. :meth:`ask`
answers a request from the cache, or starts (or joins) the one job that computes it.
Every request is checked before anything runs (:meth:`check`), so a bad one costs no model pass.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ... import attribution, features, metrics, synthesis
from ...dissection import dissect
from ...render.image import overlay, to_rgb
from .. import inputs
from ..commands import METHODS
from ..report import _options, demo_settings
from ..report_parts import method_grid
from .cache import DiskCache, model_hash, request_key
from .jobs import Jobs

__all__ = ["Workspace", "BadRequest", "KINDS", "METHODS_PER_PICTURE"]

#: what can be asked, and the parameters each takes
KINDS = {"filters": ("layer",), "patches": ("layer", "unit"), "visualize": ("layer", "unit"), "dissect": ("layer",),
         "unit_map": ("image", "layer", "unit"), "layer_maps": ("image", "layer"), "predict": ("image",),
         "explain": ("image",)}
METHODS_PER_PICTURE = 6
#: the Broden categories whose masks together are an image's object (the pointing game's ground truth)
OBJECT_CATEGORIES = ("object",)


class BadRequest(Exception):
    """A request the server refuses: ``status`` (404 unknown layer/unit/image, 400 malformed, 413 too large)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Workspace:
    """The model, its data and its cache, shared by every request of one server."""

    def __init__(self, model: str, *, data=None, labels=None, preset=None, mean=None, std=None, resize=None,
                 cache=None, quick=False, n=200, workers=2, device=None):
        self.args = SimpleNamespace(model=model, preset=preset, mean=mean, std=std, labels=labels, size=None,
                                    resize=resize, device=device)
        self.backend = inputs.open_backend(self.args)
        self.model = self.args.model_object
        self.size = inputs.target_size(self.args, self.backend) or (64, 64)
        self.mode = inputs.resize_mode(self.args, self.backend)
        self.quick = bool(quick)
        self.settings = demo_settings(self.quick)
        self.steps = 24 if self.quick else 128
        self.records = self.backend.layers()
        self.layer_names = [r.name for r in self.records]
        self.images, self.labels, self.masks, self.concepts, folder = _read_data(data, self.size, self.mode, n)
        probe = self.images[:1] if self.images is not None else np.full((1, 3, *self.size), 0.5, np.float32)
        self.args.n_classes = self.backend.forward(probe).shape[1]
        self.classes = inputs.class_names(self.args, self.backend, folder)
        self.channels = self._channels(probe)
        self.records = self.backend.layers()  # the shapes of the images served (torch records the last pass's)
        key = model_hash(model, self.model, {"preset": preset, "mean": mean, "std": std, "resize": self.mode, "quick": self.quick, "size": self.size,
                                             "data": _data_key(data, n)})
        self.cache = DiskCache(Path(cache or Path.home() / ".cache" / "convscope" / "serve"), key)
        self.jobs = Jobs(workers)

    def _channels(self, probe) -> dict:
        """Channels of every layer with a spatial (C, H, W) map, from one pass."""
        spatial = [r.name for r in self.records if r.shape is not None and len(r.shape) == 3]
        acts = self.backend.activations(probe, spatial) if spatial else {}
        self.grids = {name: a.shape[2:] for name, a in acts.items() if a.ndim == 4}
        return {name: int(a.shape[1]) for name, a in acts.items() if a.ndim == 4}

    # ------------------------------------------------------------------ requests
    def check(self, kind: str, params: dict) -> dict:
        """The request's parameters, checked and typed; :class:`BadRequest` otherwise."""
        if kind not in KINDS:
            raise BadRequest(404, f"unknown computation {kind!r}; known: {', '.join(KINDS)}")
        missing = [p for p in KINDS[kind] if params.get(p) in (None, "")]
        if missing:
            raise BadRequest(400, f"{kind} needs {', '.join(missing)}")
        out = {}
        if "layer" in KINDS[kind]:
            out["layer"] = self.check_layer(params["layer"], spatial=kind != "filters")
        if "unit" in KINDS[kind]:
            out["unit"] = self.check_unit(out["layer"], params["unit"])
        if "image" in KINDS[kind]:
            out["image"] = self.check_image(params["image"])
        if kind == "filters" and not any(r.name == out["layer"] and r.kind == "conv" for r in self.records):
            raise BadRequest(404, f"layer {out['layer']!r} is not a convolution: it has no filters to show")
        if kind == "patches" and self.images is None:
            raise BadRequest(404, "top patches need a data folder: start the server with --data FOLDER")
        if kind == "dissect" and self.concepts is None:
            raise BadRequest(404, "dissection needs concept masks: --data a Broden folder (index.csv, label.csv)")
        return out

    def check_layer(self, layer, spatial=True) -> str:
        if layer not in self.layer_names:
            import difflib

            close = difflib.get_close_matches(str(layer), self.layer_names, n=3, cutoff=0.5)
            raise BadRequest(404, f"unknown layer {str(layer)[:80]!r}" + (f"; close: {', '.join(close)}" if close else ""))
        if spatial and layer not in self.channels:
            raise BadRequest(404, f"layer {layer!r} has no spatial (C, H, W) map: it has no units to show")
        return layer

    def check_unit(self, layer, unit) -> int:
        text = str(unit)
        n = self.channels[layer]
        if not text.isdigit() or int(text) >= n:
            raise BadRequest(404, f"unit {text[:20]!r} is not a unit of {layer}, which has {n} (0 to {n - 1})")
        return int(text)

    def check_image(self, image) -> str:
        text = str(image)
        if text.startswith("data-") and text[5:].isdigit() and self.images is not None and int(text[5:]) < len(self.images):
            return text
        if self.cache.image_path(text) is not None:
            return text
        raise BadRequest(404, f"unknown image {text[:40]!r}: upload it, or pick one of the data folder's")

    def ask(self, kind: str, params: dict):
        """``(job id, finished entry or None, job or None)``; starts the job when nothing is cached."""
        params = self.check(kind, params)
        key = request_key(kind, params)
        job_id = f"{kind}-{key}"
        found = self.cache.load(kind, key)
        if found is not None:
            return job_id, found, None
        what = f"{kind} " + " ".join(f"{k}={v}" for k, v in params.items())
        job = self.jobs.run(job_id, what, lambda job: self.cache.store(kind, key, *getattr(self, "_" + kind)(job, **params)))
        return job_id, None, job

    def now(self, kind: str, params: dict, timeout: float = 600):
        """The entry of a request, computed here if needed (the same single-flight job)."""
        job_id, found, job = self.ask(kind, params)
        if found is None:
            job.finished.wait(timeout)
            if job.state != "done":
                raise RuntimeError(job.error or f"{job.what} {job.state}")
            found = job.result
        return found

    # ------------------------------------------------------------------ inputs
    def image(self, image: str):
        """(C, H, W) float32 in [0, 1] fitted to the model, and its object mask (or None)."""
        if image.startswith("data-"):
            i = int(image[5:])
            return self.images[i], None if self.masks is None else self.masks[i]
        return read_upload(self.cache.image_path(image).read_bytes(), self.size, self.mode)[0], None

    def image_notes(self, image: str) -> list:
        """What fitting did to an upload (resized, cropped, its transparency composited), said on its page."""
        if image.startswith("data-"):
            return []
        return read_upload(self.cache.image_path(image).read_bytes(), self.size, self.mode)[1]

    def label(self, k: int) -> str:
        return self.classes[k] if self.classes and 0 <= k < len(self.classes) else str(k)

    def layer_rows(self) -> list:
        """The layer table: name, kind, shape, geometry, receptive field of a central unit, inputs
        (computed once)."""
        if getattr(self, "_rows", None) is None:
            self._rows = self._layer_rows()
        return self._rows

    def _layer_rows(self) -> list:
        rows = []
        for r in self.records:
            field = ""
            if r.name in self.grids:
                try:
                    h, w = self.grids[r.name]
                    rf = features.receptive_field(self.backend, r.name, h // 2, w // 2)
                    field = f"{rf.box[2] - rf.box[0]}x{rf.box[3] - rf.box[1]}"
                except ValueError as err:
                    field = f"({str(err).splitlines()[0][:60]})"
            rows.append({"name": r.name, "kind": r.kind, "shape": "x".join(map(str, r.shape or ())),
                         "geometry": f"k{r.kernel} s{r.stride} p{r.padding}" if r.kernel else "",
                         "receptive field": field, "inputs": list(r.inputs or ())})
        return rows

    # ------------------------------------------------------------------ computations: (numbers, pictures)
    def _filters(self, job, layer):
        result = features.filters(self.backend, layer, tile=24)
        return {"layer": layer, "rgb": bool(result.rgb)}, {"filters": result.to_rgb()}

    def _patches(self, job, layer, unit):
        k = min(9, len(self.images))
        result = features.top_patches(self.backend, self.images, layer, [unit], k=k, progress=False)
        return ({"values": result.values[0], "images": result.indices[0], "boxes": result.boxes[0]},
                {"patches": result.channel(0, tile=64).to_rgb()})

    def _visualize(self, job, layer, unit):
        result = synthesis.visualize(self.backend, synthesis.channel(layer, unit), steps=self.steps, size=self.size,
                                     progress=False)
        return {"objective": float(result.values[0]), "steps": self.steps}, {"visualization": result.to_rgb()}

    def _dissect(self, job, layer):
        scratch = self.cache.root / "scratch"  # dissection's activation cache, when it goes to disk: ours, not /tmp
        scratch.mkdir(exist_ok=True)
        result = dissect(self.backend, layer, self.concepts, progress=False, skip_empty=True, cache_dir=scratch)
        return {"table": result.table(), "quantile": result.quantile, "iou_threshold": result.iou_threshold,
                "empty": list(result.empty_concepts)}, {}  # concepts with no pixels in the folder: IoU 0, said

    def _unit_map(self, job, image, layer, unit):
        x, _ = self.image(image)
        maps = features.activation_maps(self.backend, x[None], layer, channels=[unit]).maps[0, 0]
        low, high = float(maps.min()), float(maps.max())
        heat = (maps - low) / (high - low) if high > low else np.zeros_like(maps)
        y, xx = np.unravel_index(int(np.argmax(maps)), maps.shape)
        return ({"max": high, "min": low, "mean": float(maps.mean()), "peak": [int(y), int(xx)]},
                {"map": overlay(to_rgb(x), heat, alpha=0.6)})

    def _layer_maps(self, job, image, layer):
        x, _ = self.image(image)
        result = features.activation_maps(self.backend, x[None], layer, tile=32)
        return {"channels": len(result.channels), "max": result.maps[0].reshape(len(result.channels), -1).max(1)}, {
            "maps": result.picture(0)}

    def _predict(self, job, image):
        x, _ = self.image(image)
        scores = self.backend.forward(x[None])[0].astype(np.float64)
        prob = np.exp(scores - scores.max())
        prob /= prob.sum()
        order = np.argsort(-scores)[:5]
        return {"scores": scores, "notes": self.image_notes(image),
                "top": [{"class": int(k), "name": self.label(int(k)), "score": float(scores[k]),
                         "softmax": float(prob[k])} for k in order]}, {"image": to_rgb(x)}

    def _explain(self, job, image):
        """Every attribution method the command offers, on the predicted class, scored."""
        x, mask = self.image(image)
        x = x[None]
        predicted = int(self.backend.forward(x)[0].argmax())
        results, rows = {}, []
        for i, name in enumerate(METHODS):
            job.check(i, len(METHODS), f"attribution {name}")
            start = time.perf_counter()
            try:
                result = explain_one(self.backend, x, name, predicted, self.settings)
            except (ValueError, TypeError, ImportError) as err:  # a CAM without GAP + linear head; an extra missing
                rows.append({"method": name, "error": str(err).splitlines()[0]})
                continue
            results[name] = result
            row = {"method": name, "seconds": time.perf_counter() - start}
            row.update(score_one(self.backend, x, result, predicted, mask, self.settings["deletion_steps"]))
            rows.append(row)
        pictures, names = {}, list(results)
        for p in range(0, len(names), METHODS_PER_PICTURE):
            chunk = {n: results[n] for n in names[p:p + METHODS_PER_PICTURE]}
            picture, _ = method_grid(chunk, x, None if mask is None else mask[None])
            pictures[f"methods_{p // METHODS_PER_PICTURE}"] = picture
        return {"predicted": predicted, "name": self.label(predicted), "methods": rows,
                "pictures": {f"methods_{p // METHODS_PER_PICTURE}": names[p:p + METHODS_PER_PICTURE]
                             for p in range(0, len(names), METHODS_PER_PICTURE)}}, pictures


def explain_one(backend, x, name, target, settings):
    """One attribution method as the server runs it (the report's settings; eigen_cam takes no target)."""
    return getattr(attribution, name)(backend, x, None if name == "eigen_cam" else target,
                                      **_options(settings, name, x), **inputs.required_arguments(backend, x, name))


def score_one(backend, x, result, target, mask, steps) -> dict:
    """Deletion AUC (the softmax probability as the top pixels go, lower is better) and, with a mask,
    the pointing game at Zhang et al.'s 15 pixels on 224, scaled to the image."""
    row = {"deletion AUC": float(metrics.deletion(backend, x, result, [target], steps=steps,
                                                  output="probability").auc[0])}
    if mask is not None:
        tolerance = int(round(15 * x.shape[2] / 224))
        row["pointing game"] = float(metrics.pointing_game(result, mask[None], tolerance=tolerance))
    return row


def read_upload(data: bytes, size, mode):
    """An uploaded image's bytes as (C, H, W) float32 in [0, 1] fitted to ``size`` (any size and mode),
    and the notes of :func:`convscope.preprocess.fit_image` (what was done to it)."""
    from PIL import Image

    from ...preprocess import fit_image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        array, notes = fit_image(img, size, mode=mode)
    return np.asarray(array, np.float32), list(notes)


def _data_key(data, n):
    if data is None:
        return None
    root = Path(data)
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())
    return [n, request_key("data", {"files": files})]


def _read_data(data, size, mode, n):
    """(images, labels, object masks, concept source, image folder) of ``--data``: a Broden folder (with masks)
    or a folder of images (subfolders are classes); all None without one."""
    if data is None:
        return None, None, None, None, None
    root = Path(data)
    if (root / "index.csv").is_file() and (root / "label.csv").is_file():
        from ...dissection.concepts import Broden

        if size[0] != size[1]:
            raise inputs.UsageError(f"a Broden folder is read as square images; the model takes {size[0]}x{size[1]}")
        concepts = Broden(root, size=size[0], mask_size=size[0])
        planes = [i for i, c in enumerate(concepts.concepts)
                  if any(c in concepts.categories.get(cat, ()) for cat in OBJECT_CATEGORIES)]
        images, masks = [], []
        for x, m in concepts.batches(64, 0, n):
            images.append(x)
            masks.append(m[:, planes].any(axis=1) if planes else None)
        masks = None if not planes else np.concatenate(masks)
        return np.concatenate(images).astype(np.float32), None, masks, concepts, None
    folder = inputs.read_folder(root, size, mode)
    images = np.concatenate([b.images for b in folder.batches(64, 0, n, owner="the data folder")])
    labels = getattr(folder, "labels", None)
    return images, None if labels is None else np.asarray(labels)[:len(images)], None, None, folder
