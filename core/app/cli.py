"""The ``convscope`` command: the parser, one-line errors and quiet frameworks.

A user's mistake ends in one line on stderr and exit status 2; ``--debug`` shows the
traceback instead. Outputs are staged in a temporary folder and moved into place at the end,
so an error never leaves half an output behind. What each subcommand does is in
:mod:`convscope.app.commands`.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from .commands import COMMANDS, METHODS
from .inputs import DEVICE_HELP, MODEL_FORMATS, RESIZE_MODES, UsageError

__all__ = ["main", "build_parser"]

OUTPUT_HELP = ("output file; its extension chooses what is written: .png or .jpg a picture, .html a page with the "
               "picture and the numbers, .npy the raw maps, .npz the raw maps and the classes")


class _Help(argparse.HelpFormatter):
    """Plain help that states every default that is not None or False."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" not in text and default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text += f" (default: {shown})"
        return text


def _preprocess_options(p):
    g = p.add_argument_group("preprocessing (what the model expects; images are given as they are, in [0, 1])")
    from ..preprocess import PRESETS_HELP as presets

    g.add_argument("--preset", metavar="NAME", help="a named preprocessing: " + "; ".join(
        f"{k}: {v}" for k, v in presets.items()) + "; keras: read from a keras.applications model's name "
        "(default: none)")
    g.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean subtracted (1 or 3 values; "
                                                                      "with --preset: replaces its mean)")
    g.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel standard deviation divided by "
                                                                     "(1 or 3 values)")
    g.add_argument("--resize", choices=RESIZE_MODES, help="how images of another size are fitted: crop (shorter side "
                   "to the size, then a centre crop), pad (letterbox on grey), stretch (both axes; distorts shapes) "
                   "(default: the preset's, else crop)")
    g.add_argument("--labels", metavar="FILE", help="class names, one per line (default: the data folders' names, "
                                                    "else the demo's, else class indices)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", formatter_class=_Help, description="See what a convolutional "
                                     f"network has learned and why it decides as it does. MODEL is {MODEL_FORMATS}.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks, warnings and framework logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, *, model=True, images=False, data=False, output=True, layer=None, size=None):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        if model:
            p.add_argument("model", metavar="MODEL", help=MODEL_FORMATS)
        if data:
            p.add_argument("data", metavar="DATA", help="a folder of images (subfolders are classes)")
        if images:
            p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...), any size")
        if images or data or size:
            p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help=size or "fit images to H x W "
                           "(default: the model's input size, else the first image's)")
        if layer is not None:
            p.add_argument("--layer", required=layer == "required",
                           help="layer name, see `convscope layers MODEL`" + ("" if layer == "required" else
                                                                            " (default: the method's own choice)"))
        if model:
            p.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
        if model and name != "layers":
            _preprocess_options(p)
        if output:
            p.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
        p.set_defaults(fn=COMMANDS[name])
        return p

    command("layers", "list the model's layers", output=False, size="input size used to compute the shapes "
            "(default: the model's)")
    p = command("explain", "attribution maps: which pixels matter", images=True, layer="optional")
    p.add_argument("--method", default="grad_cam", choices=METHODS, help="attribution method")
    p.add_argument("--target", help="class to explain, a name or an index (default: the predicted one)")
    p = command("filters", "a conv layer's filters as a picture", layer="optional")
    p.add_argument("--scale", default="each", choices=["each", "layer", "symmetric"],
                   help="colour scale: each filter on its own, one for the layer, or symmetric around zero")
    command("activations", "a layer's activation maps for one image", images=True, layer="required")
    p = command("patches", "top activating patches per channel", data=True, layer="required")
    p.add_argument("--channels", type=int, nargs="+", help="channels shown (default: the first 8)")
    p.add_argument("--k", type=int, default=9, help="patches per channel (at most the images in DATA)")
    p.add_argument("--guided", action="store_true", help="show guided backprop beside each patch")
    p = command("neighbors", "nearest neighbours in feature and pixel space", data=True, layer="required")
    p.add_argument("--queries", type=int, nargs="+", default=[0, 1, 2], help="indices of query images in DATA")
    p.add_argument("--k", type=int, default=5, help="neighbours per query (fewer than the images in DATA)")
    p.add_argument("--metric", default="l2", choices=["l2", "cosine"], help="distance between features")
    p = command("embed", "t-SNE / PCA embedding of a layer's features", data=True, layer="required")
    p.add_argument("--method", default="tsne", choices=["tsne", "pca", "umap"], help="embedding method")
    p = command("visualize", "activation maximisation", layer="optional", size="size of the image made (default: "
                "the model's, else 128 x 128)")
    p.add_argument("--channel", type=int, help="channel of --layer to maximise")
    p.add_argument("--class", dest="cls", help="class to maximise, a name or an index")
    p.add_argument("--steps", type=int, default=256, help="optimisation steps")
    p = command("dream", "DeepDream an image", images=True, layer="required")
    p.add_argument("--steps", type=int, default=10, help="gradient steps per octave")
    p = command("invert", "reconstruct an image from its features", images=True)
    p.add_argument("--layers", nargs="+", required=True, help="layers whose features are matched, one picture each")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps")
    p = command("style", "style transfer", size="fit both images to H x W (default: the model's, else the "
                "content image's)")
    p.add_argument("content", metavar="CONTENT", help="the image whose content is kept")
    p.add_argument("style", metavar="STYLE", help="the image whose style is taken")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps")
    p = command("fool", "adversarial example (PGD) towards a class", images=True)
    p.add_argument("--target", help="class to reach, a name or an index (default: any other class)")
    p.add_argument("--epsilon", type=float, default=8 / 255, help="largest change of a pixel (L-inf, images in [0, 1])")
    p = command("dissect", "Network Dissection report (HTML)", layer="required")
    p.add_argument("--data", help="a Broden folder (default: generated shapes)")
    p.add_argument("--n", type=int, default=1000, help="generated images when no --data")
    p.add_argument("--quantile", type=float, default=0.005, help="top fraction of activations that counts as firing")
    p = command("report", "the full microscope report of MODEL on DATA (HTML)", data=True)
    p.add_argument("--n", type=int, default=200, help="images of DATA used (at most)")
    p.add_argument("--k", type=int, help="top patches per channel (default: 6, fewer for small folders)")
    p.add_argument("--quick", action="store_true", help="fewer images and optimisation steps")
    p = command("demo", "the report of the demo model on generated data", model=False, output=False)
    p.add_argument("--out", default="convscope-demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (about a third of the time)")
    p.add_argument("--framework", choices=["torch", "onnx", "keras"],
                   help="which demo model file (default: torch when installed, else onnx, else keras)")
    from .bench import add_bench_command

    add_bench_command(sub)
    from .compare_command import add_compare_command

    add_compare_command(sub, _Help, _preprocess_options)
    from .serve import add_serve_command

    add_serve_command(sub, _Help, _preprocess_options)
    return parser


def _quiet_frameworks():
    """Framework log noise off, once, before any framework is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import logging

    for name in ("tensorflow", "absl", "h5py", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _show_warnings(command):
    """Warnings as one line each (``convscope CMD: warning: ...``), without a source path;
    other libraries' deprecation notices are not a user's business."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"convscope {command}: warning: {str(message).splitlines()[0]}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)


def _message(err) -> str:
    from .._plugins import install_hint

    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ImportError) and "pip install" not in message:
        hint = install_hint(getattr(err, "name", None))
        if hint:
            message += f"; install it with: {hint}"
    return message


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_frameworks()
    try:
        with warnings.catch_warnings():
            if not args.debug:
                _show_warnings(args.command)
            args.fn(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FloatingPointError, ImportError, OSError) as err:
        if args.debug:
            raise
        print(f"convscope {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
