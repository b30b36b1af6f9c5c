"""The ``convscope`` command.

A user's mistake ends in one line on stderr and exit status 2; ``--debug`` shows the
traceback instead. Outputs are written to a temporary file and renamed, so an error never
leaves half a file behind.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from .inputs import MODEL_FORMATS, UsageError, check_output, load_model, read_images

__all__ = ["main", "build_parser"]


def _images(args):
    return read_images(args.images, args.size)


def _save(result, args):
    path = check_output(args.output)
    result.save(path)
    print(f"wrote {path}")


def cmd_layers(args):
    import convscope

    model = load_model(args.model)
    options = {"input_shape": (3, *args.size)} if args.size and not isinstance(model, str) else {}
    backend = convscope.load(model, **options)
    print(f"{'name':32} {'kind':10} {'shape':18} kernel/stride/padding")
    for r in backend.layers():
        geometry = f"{r.kernel}/{r.stride}/{r.padding}" if r.kernel else ""
        print(f"{r.name:32} {r.kind:10} {str(r.shape or ''):18} {geometry}")


def cmd_explain(args):
    from .. import attribution

    method = getattr(attribution, args.method)
    kwargs = {"layer": args.layer} if args.layer and args.method in _LAYER_METHODS else {}
    _save(method(load_model(args.model), _images(args), args.target, **kwargs), args)


def cmd_filters(args):
    from ..features import filters

    _save(filters(load_model(args.model), args.layer, scale=args.scale), args)


def cmd_activations(args):
    from ..features import activation_maps

    _save(activation_maps(load_model(args.model), _images(args)[:1], args.layer), args)


def _data(args):
    from ..data.datasets import image_folder

    return image_folder(args.data, size=args.size)


def cmd_patches(args):
    from ..features import top_patches

    _save(top_patches(load_model(args.model), _data(args), args.layer, args.channels, k=args.k, rule="guided" if args.guided else None), args)


def cmd_neighbors(args):
    from ..features import nearest_neighbors

    _save(nearest_neighbors(load_model(args.model), _data(args), args.queries, args.layer, k=args.k,
                            metric=args.metric), args)


def cmd_embed(args):
    from ..features import embed, layer_features

    data = _data(args)
    features = layer_features(load_model(args.model), data, args.layer)
    result = embed(features, method=args.method, images=data.fetch(range(data.n)) if data.n <= 2000 else None)
    _save(result, args)


def cmd_visualize(args):
    from ..synthesis import channel, class_logit, visualize

    if (args.channel is None) == (args.cls is None):
        raise UsageError("give either --layer with --channel, or --class")
    objective = class_logit(args.cls) if args.cls is not None else channel(args.layer, args.channel)
    _save(visualize(load_model(args.model), objective, steps=args.steps, size=args.size), args)


def cmd_dream(args):
    from ..synthesis import deepdream

    _save(deepdream(load_model(args.model), _images(args)[:1], args.layer, steps=args.steps), args)


def cmd_invert(args):
    from ..synthesis import invert

    _save(invert(load_model(args.model), _images(args)[:1], args.layers, steps=args.steps), args)


def cmd_style(args):
    from ..synthesis import style_transfer

    content, style = read_images([args.content, args.style], args.size or _size_of(args.content))
    _save(style_transfer(load_model(args.model), content[None], style[None], steps=args.steps), args)


def _size_of(path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return (img.height, img.width)
    except OSError:
        return None  # read_images reports the file


def cmd_fool(args):
    from ..synthesis import fool

    _save(fool(load_model(args.model), _images(args), args.target, epsilon=args.epsilon), args)


def cmd_dissect(args):
    from ..data import shapes
    from ..dissection import dissect

    out = check_output(args.output)
    concepts = args.data if args.data else shapes(args.n)
    result = dissect(load_model(args.model), args.layer, concepts, quantile=args.quantile)
    result.report(out)
    print(f"wrote {out}")


def cmd_report(args):
    from .report import model_report

    out = check_output(args.output)
    model_report(load_model(args.model), _data(args), out, n=args.n)
    print(f"wrote {out}")


def cmd_demo(args):
    from .report import demo_report

    out = check_output(args.out, folder=True)
    start = time.perf_counter()
    path = demo_report(out, quick=args.quick)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


_LAYER_METHODS = {"cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam"}
_METHODS = sorted(_LAYER_METHODS | {"saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "deconvnet",
                                     "guided_backprop", "occlusion"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description="See what a convolutional network has learned and "
                                     f"why it decides as it does. MODEL is {MODEL_FORMATS}.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help, *, model=True, images=False, data=False, output=True, layer=None):
        p = sub.add_parser(name, help=help, description=help)
        if model:
            p.add_argument("model", metavar="MODEL", help=MODEL_FORMATS)
        if data:
            p.add_argument("data", metavar="DATA", help="a folder of images")
        if images:
            p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
        if images or data:
            p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="resize images to H x W")
        if layer is not None:
            p.add_argument("--layer", required=layer == "required", help="layer name (see `convscope layers MODEL`)")
        if output:
            p.add_argument("-o", "--output", required=True, help="output file (.png; .html for reports)")
        p.set_defaults(fn=fn)
        return p

    p = command("layers", cmd_layers, "list the model's layers", output=False)
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="input size used to compute the shapes")
    p = command("explain", cmd_explain, "attribution maps: which pixels matter", images=True, layer="optional")
    p.add_argument("--method", default="grad_cam", choices=_METHODS)
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    p = command("filters", cmd_filters, "a conv layer's filters as a picture", layer="optional")
    p.add_argument("--scale", default="each", choices=["each", "layer", "symmetric"])
    command("activations", cmd_activations, "a layer's activation maps for one image", images=True, layer="required")
    p = command("patches", cmd_patches, "top activating patches per channel", data=True, layer="required")
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--guided", action="store_true", help="show guided backprop beside each patch")
    p = command("neighbors", cmd_neighbors, "nearest neighbours in feature and pixel space", data=True, layer="required")
    p.add_argument("--queries", type=int, nargs="+", default=[0, 1, 2], help="indices of query images in DATA")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--metric", default="l2", choices=["l2", "cosine"])
    p = command("embed", cmd_embed, "t-SNE / PCA embedding of a layer's features", data=True, layer="required")
    p.add_argument("--method", default="tsne", choices=["tsne", "pca", "umap"])
    p = command("visualize", cmd_visualize, "activation maximisation", layer="optional")
    p.add_argument("--channel", type=int)
    p.add_argument("--class", dest="cls", type=int)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"))
    p = command("dream", cmd_dream, "DeepDream an image", images=True, layer="required")
    p.add_argument("--steps", type=int, default=10)
    p = command("invert", cmd_invert, "reconstruct an image from its features", images=True)
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=200)
    p = command("style", cmd_style, "style transfer")
    p.add_argument("content", metavar="CONTENT")
    p.add_argument("style", metavar="STYLE")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=200)
    p = command("fool", cmd_fool, "adversarial example (PGD) towards a class", images=True)
    p.add_argument("--target", type=int, default=None, help="class to reach (default: any other)")
    p.add_argument("--epsilon", type=float, default=8 / 255)
    p = command("dissect", cmd_dissect, "Network Dissection report (HTML)", layer="required")
    p.add_argument("--data", help="a Broden folder (default: generated shapes)")
    p.add_argument("--n", type=int, default=1000, help="generated images when no --data")
    p.add_argument("--quantile", type=float, default=0.005)
    p = command("report", cmd_report, "the full microscope report of MODEL on DATA (HTML)", data=True)
    p.add_argument("--n", type=int, default=200, help="images of DATA used")
    p = command("demo", cmd_demo, "the report of the demo model on generated data", model=False, output=False)
    p.add_argument("--out", default="convscope-demo", help="output folder (default: convscope-demo)")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (for tests)")
    from .bench import add_bench_command
    add_bench_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore", DeprecationWarning)
            args.fn(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FloatingPointError, ImportError, OSError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"convscope {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
