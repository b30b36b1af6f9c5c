"""What each ``convscope`` subcommand does: read, run one library call, say what it found, write.

Every output states the predicted class, its score and the explained (or reached) class, on
stdout and in the file (a caption band on pictures, a table in .html, arrays in .npz).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .inputs import (BASELINES_NOTE, UsageError, class_index, class_names, device_options, load_model, open_backend,
                     read_folder, read_images, required_arguments, resize_mode, target_size)
from .outputs import check_output, staged, write_result

__all__ = ["COMMANDS", "LAYER_METHODS", "METHODS", "note"]

def _attribution_methods():
    """Every attribution function ``NAME(model, x, target, ...)``, and the CAMs (``--layer``)."""
    import inspect

    from .. import attribution

    names, layered = [], set()
    for name in attribution.__all__:
        fn = getattr(attribution, name)
        params = list(inspect.signature(fn).parameters) if inspect.isfunction(fn) else []
        if params[:3] == ["model", "x", "target"]:
            names.append(name)
            if "layer" in params and fn.__module__.split(".")[-1].startswith("cam"):  # the CAM family
                layered.add(name)
    return sorted(names), layered


METHODS, LAYER_METHODS = _attribution_methods()
def note(args, text):
    """A one-line note on stderr (what was done to the input)."""
    print(f"convscope {args.command}: note: {text}", file=sys.stderr)


def _images(args, paths=None):
    backend = open_backend(args)
    paths = list(paths or args.images)
    size = target_size(args, backend, paths[0])
    x, args.notes = read_images(paths, size, resize_mode(args, backend))  # said once the work is done
    args.paths = paths
    return backend, x


def _data(args):
    backend = open_backend(args)
    data = read_folder(args.data, target_size(args, backend), resize_mode(args, backend))
    args.names = _names(args, backend, data.peek("the data folder"), data)
    return backend, data


def _names(args, backend, x, data=None):
    args.scores = backend.forward(x[:64])
    args.n_classes = args.scores.shape[1]
    args.names = class_names(args, backend, data)
    return args.names


def _label(names, k):
    return names[k] if names and 0 <= k < len(names) else str(k)


def _softmax(scores):
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _rows(args, scores, explained=None, *, column="explained"):
    """One dict per image: file, predicted class, its score and softmax probability, the explained class."""
    names = args.names
    prob = _softmax(np.asarray(scores, np.float64))
    rows = []
    for i, s in enumerate(scores):
        k = int(np.argmax(s))
        row = {"image": str(args.paths[i]) if i < len(getattr(args, "paths", [])) else str(i),
               "predicted": _label(names, k), "score": float(s[k]), "probability": float(prob[i, k])}
        if explained is not None:
            row[column] = _label(names, int(explained[i]))
        rows.append(row)
    return rows


def _lines(rows, column="explained"):
    lines = []
    for r in rows[:6]:
        text = f"{r['image']}: predicted {r['predicted']} (score {r['score']:.3g}, softmax {r['probability']:.2f})"
        if column in r:
            text += f"; {column} {r[column]}"
        if "confidence" in r:
            text += f" with softmax {r['confidence']:.2f}" + ("" if r["succeeded"] else " (not fooled)")
        lines.append(text)
    if len(rows) > 6:
        lines.append(f"... and {len(rows) - 6} more images")
    return lines


def _emit(args, result, rows=(), *, column="explained", tile=None, extra=None, title=""):
    for text in getattr(args, "notes", []):
        note(args, text)
    lines = _lines(list(rows), column) if rows else []
    for line in lines:
        print(line)
    names = getattr(args, "names", None)
    extra = dict(extra or {})
    if rows:
        extra.setdefault("scores", np.asarray(getattr(args, "scores")))
        if names:
            extra["class_names"] = np.array(names)
    out = write_result(result, args.output, rows=rows, caption=lines, tile=tile, extra=extra,
                       title=title or f"convscope {args.command}")
    sys.stderr.flush()
    print(f"wrote {out}")


# --------------------------------------------------------------------------- commands
def cmd_layers(args):
    import convscope

    model = load_model(args.model)
    options = {"input_shape": (3, *args.size)} if args.size and not isinstance(model, str) else {}
    backend = convscope.load(model, **options, **device_options(model, args.device))
    print(f"{'name':32} {'kind':10} {'shape':18} kernel/stride/padding")
    for r in backend.layers():
        geometry = f"{r.kernel}/{r.stride}/{r.padding}" if r.kernel else ""
        print(f"{r.name:32} {r.kind:10} {str(r.shape or ''):18} {geometry}")


def cmd_explain(args):
    from .. import attribution

    check_output(args.output)
    backend, x = _images(args)
    _names(args, backend, x)
    target = class_index(args.target, args.names, args.n_classes)
    kwargs = {"layer": args.layer} if args.layer and args.method in LAYER_METHODS else {}
    kwargs.update(required_arguments(backend, x, args.method))
    if "baselines" in kwargs:
        note(args, BASELINES_NOTE)
    result = getattr(attribution, args.method)(backend, x, target, **kwargs)
    explained = result.target if result.target is not None else (
        np.full(len(x), target) if target is not None else args.scores.argmax(1))
    _emit(args, result, _rows(args, args.scores, explained), tile=x.shape[2],
          extra={"explained": np.asarray(explained), "predicted": args.scores.argmax(1)},
          title=f"{args.method} on {args.model}")


def cmd_filters(args):
    from ..features import filters

    check_output(args.output)
    _emit(args, filters(open_backend(args), args.layer, scale=args.scale))


def cmd_activations(args):
    from ..features import activation_maps

    check_output(args.output)
    backend, x = _images(args)
    _names(args, backend, x[:1])
    _emit(args, activation_maps(backend, x[:1], args.layer), _rows(args, args.scores[:1]))


def cmd_patches(args):
    from ..features import top_patches

    check_output(args.output)
    backend, data = _data(args)
    if args.k > data.n:
        raise UsageError(f"--k {args.k} is more than the {data.n} images in {args.data}; lower --k")
    _emit(args, top_patches(backend, data, args.layer, args.channels, k=args.k,
                            rule="guided" if args.guided else None))


def cmd_neighbors(args):
    from ..features import nearest_neighbors

    check_output(args.output)
    backend, data = _data(args)
    if args.k >= data.n:
        raise UsageError(f"--k {args.k} needs more than {args.k} images; {args.data} has {data.n}: lower --k")
    _emit(args, nearest_neighbors(backend, data, args.queries, args.layer, k=args.k, metric=args.metric))


def cmd_embed(args):
    from ..features import embed, layer_features

    check_output(args.output)
    backend, data = _data(args)
    if data.n < 3:
        raise UsageError(f"an embedding needs at least 3 images; {args.data} has {data.n}")
    features = layer_features(backend, data, args.layer)
    options = {"perplexity": min(30.0, (data.n - 1) / 3)} if args.method == "tsne" else {}
    images = data.fetch(range(data.n)) if data.n <= 2000 else None
    _emit(args, embed(features, method=args.method, images=images, labels=data.labels, classes=args.names, **options))


def cmd_visualize(args):
    from ..synthesis import channel, class_logit, visualize

    check_output(args.output)
    if (args.channel is None) == (args.cls is None):
        raise UsageError("give either --layer with --channel, or --class")
    backend = open_backend(args)
    if args.cls is not None:
        k = backend.forward(np.full((1, 3, *(target_size(args, backend) or (64, 64))), 0.5, np.float32)).shape[1]
        args.n_classes = k
        names = class_names(args, backend)
        objective = class_logit(class_index(args.cls, names, k, option="--class"))
    else:
        objective = channel(args.layer, args.channel)
    _emit(args, visualize(backend, objective, steps=args.steps, size=args.size))


def cmd_dream(args):
    from ..synthesis import deepdream

    check_output(args.output)
    backend, x = _images(args)
    _emit(args, deepdream(backend, x[:1], args.layer, steps=args.steps), tile=x.shape[2])


def cmd_invert(args):
    from ..synthesis import invert

    check_output(args.output)
    backend, x = _images(args)
    _emit(args, invert(backend, x[:1], args.layers, steps=args.steps), tile=x.shape[2])


def cmd_style(args):
    from ..synthesis import style_transfer

    check_output(args.output)
    backend, x = _images(args, [args.content, args.style])
    _emit(args, style_transfer(backend, x[:1], x[1:2], steps=args.steps), tile=x.shape[2])


def cmd_fool(args):
    from ..synthesis import fool

    check_output(args.output)
    backend, x = _images(args)
    _names(args, backend, x)
    target = class_index(args.target, args.names, args.n_classes)
    result = fool(backend, x, target, epsilon=args.epsilon)
    rows = _rows(args, args.scores)
    for i, row in enumerate(rows):
        k = int(result.predictions[i])
        row.update({"reached": _label(args.names, k), "confidence": float(result.probabilities[i, k]),
                    "succeeded": bool(result.success[i]), "L-inf": float(result.linf[i])})
    _emit(args, result, rows, column="reached", tile=x.shape[2],
          extra={"reached": result.predictions, "predicted": args.scores.argmax(1)})


def cmd_dissect(args):
    from ..data import shapes
    from ..dissection import dissect

    out = check_output(args.output, kinds=(".html",))
    concepts = args.data if args.data else shapes(args.n)
    try:
        result = dissect(open_backend(args), args.layer, concepts, quantile=args.quantile)
    except ValueError as err:
        if args.data or "no pixels anywhere" not in str(err):
            raise
        concept = str(err).split("for ", 1)[-1].split(" instead")[0]
        raise UsageError(f"--n {args.n} generated images hold no pixels of the concept {concept}; raise --n") from None
    with staged(out, out.with_suffix(".png")) as (page, _):
        result.report(page)  # the page and the chart's PNG beside it
    print(f"wrote {out}")


def cmd_report(args):
    from .report import model_report

    out = check_output(args.output, kinds=(".html",))
    backend, data = _data(args)
    path = model_report(backend, data, out, n=args.n, quick=args.quick, classes=args.names, name=args.model,
                        k=args.k, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"wrote {path}")


def cmd_demo(args):
    from .report import demo_report

    out = check_output(args.out, folder=True)
    start = time.perf_counter()
    path = demo_report(out, quick=args.quick, framework=args.framework,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


COMMANDS = {name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}
