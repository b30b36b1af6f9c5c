"""Turning any model into a Backend through the registered plugins."""
from __future__ import annotations

import importlib
import importlib.util
import threading
import warnings

import pluggy

from . import hookspecs
from .backend import Backend

BUILTIN_BACKENDS = ("convscope.backends.torch", "convscope.backends.onnxruntime",
                    "convscope.backends.tensorflow")

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
_broken: dict = {}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager: specs, then the entry-point group, then built-ins."""
    global _manager
    with _lock:
        if _manager is None:
            pm = pluggy.PluginManager("convscope")
            pm.add_hookspecs(hookspecs)
            pm.load_setuptools_entrypoints("convscope")
            for path in BUILTIN_BACKENDS:
                if importlib.util.find_spec(path) is None:  # a trimmed install may leave one out
                    continue
                try:  # one broken backend must not take the others down
                    module = importlib.import_module(path)
                except Exception as err:  # noqa: BLE001 - reported, not swallowed
                    _broken[path] = f"{type(err).__name__}: {err}"
                    warnings.warn(f"convscope could not load its backend {path}: {_broken[path]}", RuntimeWarning)
                    continue
                if not pm.is_registered(module):
                    pm.register(module, name=path.rsplit(".", 1)[1])
            _manager = pm
        return _manager


def installed_backends() -> list[str]:
    """Names of the registered backend plugins."""
    return [name for name, _ in plugin_manager().list_name_plugin()]


_BACKEND_TYPES: set = set()


def load(model, **options) -> Backend:
    """Wrap ``model`` in a Backend.

    ``model`` may be a ``torch.nn.Module``, a Keras model or ``.keras`` file, an ONNX file
    path, bytes or ``onnx.ModelProto``, anything a third-party plugin claims, or a Backend
    (returned unchanged). ``options`` go to the plugin (for example ``input_shape``).
    """
    if not options and (type(model) in _BACKEND_TYPES or isinstance(model, Backend)):
        _BACKEND_TYPES.add(type(model))  # a Protocol isinstance check costs ~10 us: once per type
        return model
    backend = plugin_manager().hook.convscope_make_backend(model=model, options=dict(options))
    if backend is None:
        raise TypeError(
            f"No convscope backend accepts a model of type {type(model).__module__}.{type(model).__qualname__}. "
            f"Installed backends: {', '.join(installed_backends())}"
            f"{''.join(f'; {p} failed to load ({e})' for p, e in _broken.items())}. Pass a torch.nn.Module, a Keras model or "
            "'.keras' file, an '.onnx' file, or register a plugin with the hook convscope_make_backend.")
    return backend
