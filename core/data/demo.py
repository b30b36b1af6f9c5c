"""The demo model: a small CNN trained on :func:`convscope.data.shapes`, shipped with its weights.

Architecture (input 3 x 64 x 64 RGB in [0, 1], four classes: circle, square, triangle, star)::

    conv1 3->16  3x3 pad 1, bn1, relu1, pool1 2x2      -> 16 x 32 x 32
    conv2 16->32 3x3 pad 1, bn2, relu2, pool2 2x2      -> 32 x 16 x 16
    conv3 32->64 3x3 pad 1, bn3, relu3, pool3 2x2      -> 64 x 8 x 8
    conv4 64->64 3x3 pad 1, bn4, relu4                 -> 64 x 8 x 8
    gap (global average pool), flatten, fc 64->4

Global average pooling followed by one linear layer, so CAM applies. The same weights
ship as ``demo_weights.npz`` (torch state dict), ``demo.onnx`` and ``demo.keras``; the
training script is :mod:`convscope.data._build.train_demo`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._validate import check_choice
from .shapes import SHAPES

__all__ = ["demo_model", "demo_path", "DEMO_CLASSES", "build_torch_demo"]

DEMO_CLASSES = SHAPES
_HERE = Path(__file__).parent
_FILES = {"torch": "demo_weights.npz", "onnx": "demo.onnx", "keras": "demo.keras"}
WIDTHS = (16, 32, 64, 64)


def demo_path(framework: str = "torch") -> Path:
    """Path of the shipped file for ``framework`` ('torch', 'onnx' or 'keras')."""
    check_choice(framework, tuple(_FILES), "framework", "demo_path")
    path = _HERE / _FILES[framework]
    if not path.exists():
        raise FileNotFoundError(f"The demo model file {path.name} is missing from the package; "
                                "reinstall convscope or run `python -m convscope.data._build.train_demo`.")
    return path


def build_torch_demo():
    """The demo architecture as an untrained ``torch.nn.Sequential`` (needs the torch extra)."""
    from collections import OrderedDict

    try:
        from torch import nn
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The torch demo model needs PyTorch: pip install 'convscope[torch]'") from err
    layers, c_in = [], 3
    for i, c_out in enumerate(WIDTHS, start=1):
        layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(c_out)),
                   (f"relu{i}", nn.ReLU(inplace=True))]
        if i < len(WIDTHS):
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        c_in = c_out
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(c_in, len(DEMO_CLASSES)))]
    return nn.Sequential(OrderedDict(layers))


def demo_model(framework: str = "torch"):
    """The trained demo model: a ``torch.nn.Module`` ('torch'), a Keras model ('keras'),
    or the path of the ONNX file ('onnx'), ready for :func:`convscope.load`."""
    path = demo_path(framework)
    if framework == "onnx":
        return str(path)
    if framework == "keras":
        try:
            import keras
        except ImportError as err:  # pragma: no cover
            raise ImportError("The Keras demo model needs TensorFlow: pip install 'convscope[tensorflow]'") from err
        return keras.saving.load_model(path, compile=False)
    model = build_torch_demo()  # says which extra to install when torch is missing
    import torch

    with np.load(path) as state:
        model.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    model.input_shape = (3, 64, 64)  # read by the torch backend to size its layer records
    return model.eval()
