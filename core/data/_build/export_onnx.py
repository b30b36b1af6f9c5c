"""Export the shipped torch demo model to ``demo.onnx`` in the package.

    python -m convscope.data._build.export_onnx             # writes core/data/demo.onnx
    python -m convscope.data._build.export_onnx --check     # also compares with torch on demo images

BatchNormalization nodes are kept (not folded into the convolutions) and every node's output
tensor is named after its torch module (conv1, bn1, relu1, pool1, ..., gap, flatten, fc), so
that layer names are the same on the ONNX backend as on the torch backend. The graph input
is "input"; the batch axis is dynamic, the image size fixed at 3 x 64 x 64.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from ..demo import demo_model

__all__ = ["export_demo", "OPSET"]

HERE = Path(__file__).parent.parent  # core/data, where the demo files live
OPSET = 17


def _rename_outputs(model, module_names):
    """Name each node's output after the torch module that produced it.

    The TorchScript exporter scopes node names by module path ("/conv1/Conv"); the output of
    the last node in each module's scope becomes the tensor ``<module name>``."""
    last = {}
    for node in model.graph.node:
        scope = node.name.strip("/").split("/")[0]
        if scope in module_names:
            last[scope] = node
    renames = {node.output[0]: scope for scope, node in last.items()}
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for value in model.graph.output:
        value.name = renames.get(value.name, value.name)
    missing = set(module_names) - set(renames.values())
    if missing:
        raise RuntimeError(f"The exported graph has no nodes for modules {sorted(missing)}; "
                           "the exporter changed its naming.")
    return model


def export_demo(path: Path | str = HERE / "demo.onnx", opset: int = OPSET):
    """Export the trained torch demo model to ``path`` and return the ModelProto."""
    try:
        import onnx
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Exporting the demo needs torch and onnx: pip install 'convscope[torch,onnx]'") from err
    model = demo_model("torch").eval()
    names = [n for n, _ in model.named_children()]
    buffer = io.BytesIO()
    with torch.no_grad():
        # TrainingMode.PRESERVE exports the eval-mode BatchNorm as BatchNormalization instead of
        # folding it into the Conv weights; no constant folding keeps the graph as the modules are.
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), buffer, input_names=["input"], output_names=["fc"],
                          dynamic_axes={"input": {0: "batch"}, "fc": {0: "batch"}}, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    proto = _rename_outputs(onnx.load_from_string(buffer.getvalue()), names)
    proto.producer_name = "convscope.data._build.export_onnx"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return proto


def _check(path):
    import numpy as np
    import torch

    from ..shapes import shapes

    import convscope

    images = shapes(32, seed=3).images
    with torch.no_grad():
        want = demo_model("torch")(torch.from_numpy(images)).numpy()
    got = convscope.load(str(path)).forward(images)
    error = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"max relative difference to torch on 32 demo images: {error:.2e}")
    return error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "demo.onnx"), help="where to write the file")
    parser.add_argument("--check", action="store_true", help="compare the exported model with torch")
    args = parser.parse_args(argv)
    proto = export_demo(args.out)
    print(f"wrote {args.out}: {len(proto.graph.node)} nodes, "
          f"ops {', '.join(sorted({n.op_type for n in proto.graph.node}))}")
    if args.check:
        _check(args.out)


if __name__ == "__main__":
    main()
