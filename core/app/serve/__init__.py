"""``convscope serve MODEL``: a microscope in the browser for any model file.

A local web application (Starlette on uvicorn, the ``serve`` extra: ``pip install
convscope[serve]``) with a page per layer and per unit, linkable like OpenAI Microscope
(Schubert et al., 2020), and an image page with every attribution method side by side, in
the spirit of the Deep Visualization Toolbox (Yosinski et al., 2015). Everything is computed
by the library on demand, shown with its progress (cancellable), and cached on disk per
model file, keyed by its hash. The pages' assets ship in the package: it works offline.
"""
from __future__ import annotations

__all__ = ["add_serve_command", "cmd_serve"]


def add_serve_command(sub, formatter, preprocess_options):
    """The ``serve`` subcommand of the ``convscope`` parser."""
    from ..inputs import DEVICE_HELP, MODEL_FORMATS

    p = sub.add_parser("serve", help="a microscope in the browser: layers, units, images, attribution",
                       description="Start a local web application that explores MODEL: its layers, every unit "
                       "(filters, top patches, feature visualisation, dissection) and images (prediction, every "
                       "attribution method). Results are cached per model file.", formatter_class=formatter)
    p.add_argument("model", metavar="MODEL", help=MODEL_FORMATS)
    p.add_argument("--data", metavar="FOLDER", help="images for top patches and to pick from: a folder (subfolders "
                   "are classes) or a Broden folder (index.csv, label.csv) whose masks give dissection and the "
                   "pointing game")
    p.add_argument("--n", type=int, default=200, help="images of --data used (at most)")
    p.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--cache", metavar="FOLDER", help="cache folder (default: ~/.cache/convscope/serve)")
    p.add_argument("--quick", action="store_true", help="fewer optimisation steps and smaller method settings")
    preprocess_options(p)
    p.set_defaults(fn=cmd_serve)
    return p


def cmd_serve(args):
    from ..inputs import UsageError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"convscope serve needs {err.name}: pip install 'convscope[serve]'") from None
    if args.n < 1:
        raise UsageError(f"--n must be >= 1. Got {args.n}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be a port number, 0 to 65535 (0: any free port). Got {args.port}")
    from .compute import Workspace
    from .server import serve

    ws = Workspace(args.model, data=args.data, labels=args.labels, preset=args.preset, mean=args.mean, std=args.std,
                   resize=args.resize, cache=args.cache, quick=args.quick, n=args.n, device=args.device)
    serve(ws, host=args.host, port=args.port)
