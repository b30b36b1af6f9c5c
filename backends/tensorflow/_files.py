"""Reading a ``.keras`` or ``.h5`` file someone gave you, without running its code.

A Keras file can carry Python code: a ``Lambda`` layer stores its function (as bytecode in a
legacy ``.h5`` file), and deserialising it runs that code. Keras refuses Python lambdas in
``.keras`` files when ``safe_mode=True``; convscope keeps that default and goes further,
for both formats: before Keras sees the file, it reads the model's configuration
(``config.json`` in a ``.keras`` archive, the ``model_config`` attribute of an HDF5 file,
via h5py) and refuses any ``Lambda`` layer, so the check does not depend on the legacy
``.h5`` loader honouring ``safe_mode``. ``convscope.load(path, safe_mode=False)`` loads a
file the user trusts.
"""
from __future__ import annotations

import json
import os
import zipfile

from convscope._validate import param_error

__all__ = ["load_keras_file", "MAX_CONFIG_BYTES"]

#: largest model configuration read for the check (64 MiB; a ResNet-152's is under 1 MiB)
MAX_CONFIG_BYTES = 64 << 20


def _read_limited(f, path, what):
    data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"convscope.load: the {what} of the Keras file {path!r} is larger than {MAX_CONFIG_BYTES} "
                         "bytes (convscope.backends.tensorflow._files.MAX_CONFIG_BYTES); it is not read.")
    return data


def _config_text(path):
    """The model configuration as JSON text, or None where the file has none (Keras then says why)."""
    if path.lower().endswith(".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                config = f.attrs.get("model_config")
        except OSError as err:
            raise ValueError(f"convscope.load: {path!r} is not a readable HDF5 Keras file ({err}).") from None
        if config is None:
            return None
        return config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        if not os.path.isfile(config):
            return None
        with open(config, "rb") as f:
            return _read_limited(f, path, "config.json").decode("utf-8", "replace")
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            return None
        with archive.open("config.json") as f:
            return _read_limited(f, path, "config.json").decode("utf-8", "replace")


def _lambda_layers(config):
    """Names of the Lambda layers anywhere in a parsed configuration (walked without recursion)."""
    found, stack = [], [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "Lambda":
                inner = item.get("config")
                found.append(inner.get("name", "?") if isinstance(inner, dict) else "?")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return sorted(map(str, found))


def check_no_code(path):
    """Raise ValueError when the Keras file at ``path`` has Lambda layers (code that loading would run)."""
    text = _config_text(path)
    if text is None:
        return
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"convscope.load: the model configuration in the Keras file {path!r} is not valid JSON; "
                         "the file is damaged.") from None
    names = _lambda_layers(config)
    if names:
        fmt = "legacy .h5" if path.lower().endswith(".h5") else ".keras"
        raise ValueError(f"convscope.load: the {fmt} file {path!r} has Lambda layers ({', '.join(map(repr, names))}), "
                         "whose Python code would run as the file is loaded; convscope refuses them (safe mode). "
                         "If you trust the file, pass safe_mode=False to convscope.load.")


def load_keras_file(path, keras, safe_mode=True):
    """The Keras model in ``path``, refusing Lambda layers unless ``safe_mode`` is False."""
    if not isinstance(safe_mode, bool):
        raise param_error("safe_mode", "convscope.load", "True or False", repr(safe_mode), TypeError)
    if safe_mode:
        check_no_code(path)
    return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
