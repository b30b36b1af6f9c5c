"""Write the demo model as a Keras file with the weights of the torch one.

    python -m convscope.data._build.export_keras            # writes core/data/demo.keras
    python -m convscope.data._build.export_keras --check    # also compares the scores with torch

The Keras model takes NHWC input (64 x 64 x 3) and has the torch model's layers and names
(conv1..conv4, bn1..bn4, relu1..relu4, pool1..pool3, gap, flatten, fc): the global average
pool keeps its 1 x 1 map and a Flatten follows, so every activation has torch's shape. Weights are converted from
``demo_weights.npz`` (a torch state dict):

* conv weight (O, I, kh, kw) -> Keras kernel (kh, kw, I, O); bias unchanged;
* BatchNorm weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
  moving_variance, with epsilon 1e-5 as in torch;
* fc weight (K, C) -> Keras kernel (C, K). The torch model flattens after global average
  pooling, a (N, C, 1, 1) -> (N, C) reshape, so no NCHW/NHWC reordering is needed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..demo import DEMO_CLASSES, WIDTHS

__all__ = ["build_keras_demo", "keras_weights_from_torch", "export"]

_HERE = Path(__file__).parent.parent  # core/data, where the demo files live
TORCH_BN_EPSILON = 1e-5


def _keras():
    try:
        import keras
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Exporting the Keras demo model needs TensorFlow: pip install 'convscope[tensorflow]'") from err
    return keras


def build_keras_demo(size: int = 64):
    """The demo architecture as an untrained Keras functional model on NHWC input."""
    keras = _keras()
    layers = keras.layers
    x = inputs = keras.Input((size, size, 3), name="image")
    for i, width in enumerate(WIDTHS, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=True, name=f"conv{i}")(x)
        x = layers.BatchNormalization(epsilon=TORCH_BN_EPSILON, momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < len(WIDTHS):
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(x)  # (N, 1, 1, C), as torch's (N, C, 1, 1)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(len(DEMO_CLASSES), name="fc")(x)
    return keras.Model(inputs, outputs, name="convscope_demo")


def keras_weights_from_torch(state: dict) -> dict:
    """Map a torch state dict of the demo model to ``{layer name: [Keras weights]}``."""
    weights = {}
    for i in range(1, len(WIDTHS) + 1):
        weights[f"conv{i}"] = [state[f"conv{i}.weight"].transpose(2, 3, 1, 0), state[f"conv{i}.bias"]]
        weights[f"bn{i}"] = [state[f"bn{i}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    weights["fc"] = [state["fc.weight"].T, state["fc.bias"]]
    return {name: [np.ascontiguousarray(w, dtype=np.float32) for w in ws] for name, ws in weights.items()}


def export(path: Path | str = _HERE / "demo.keras", weights: Path | str = _HERE / "demo_weights.npz"):
    """Build the Keras demo model, load the torch weights into it and save it to ``path``."""
    model = build_keras_demo()
    with np.load(weights) as state:
        converted = keras_weights_from_torch({k: state[k] for k in state.files})
    for name, values in converted.items():
        model.get_layer(name).set_weights(values)
    model.save(path)
    return model


def _compare_with_torch(model, n: int = 8) -> float:
    """Largest relative difference between the Keras and torch scores on generated shapes."""
    import torch

    from ..demo import demo_model
    from ..shapes import shapes

    x = shapes(n, seed=3).images
    with torch.inference_mode():
        want = demo_model("torch")(torch.from_numpy(x)).numpy()
    got = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    return float(np.abs(got - want).max() / np.abs(want).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(_HERE / "demo.keras"), help="where to write the .keras file")
    parser.add_argument("--check", action="store_true", help="compare the scores with the torch model")
    args = parser.parse_args(argv)
    model = export(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")
    if args.check:
        print(f"max relative difference to torch: {_compare_with_torch(model):.2e}")


if __name__ == "__main__":
    main()
