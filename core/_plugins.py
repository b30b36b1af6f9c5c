"""Turning any model into a Backend through the registered plugins, memoised.

:func:`load` asks the plugins once per model: a model file is cached by the file its path
resolves to (device and inode), its modification time, size and the options (the last ``FILE_CACHE_SIZE`` files, least recently
used first out); an in-memory model (a torch module, a Keras model) by identity and options,
weakly: the cache holds no reference to the model, so deleting it frees what was cached for it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import sys
import threading
import warnings
import weakref
from collections import OrderedDict

import pluggy

from . import hookspecs
from .backend import Backend, BackendBase
from ._preprocessed import Preprocessed
from .preprocess import resolve as resolve_preprocess

BUILTIN_BACKENDS = ("convscope.backends.torch", "convscope.backends.onnxruntime",
                    "convscope.backends.tensorflow")
FILE_CACHE_SIZE = 8

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_broken: dict = {}
_files: OrderedDict = OrderedDict()  # (path, mtime_ns, size, options) -> backend
_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {options: shared state}


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


#: What each built-in backend imports, and the extra that installs it.
REQUIREMENTS = {"torch": (("torch",), "torch"), "onnxruntime": (("onnx", "onnxruntime"), "onnx"),
                "tensorflow": (("tensorflow", "keras"), "tensorflow")}
#: The extra that installs a module convscope may ask for (the first part of its dotted name).
EXTRAS = {"torch": "torch", "torchvision": "torch", "tensorflow": "tensorflow", "keras": "tensorflow",
          "onnx": "onnx", "onnxruntime": "onnx", "dask": "dask", "distributed": "dask", "sklearn": "features",
          "scipy": "features", "openTSNE": "features", "matplotlib": "features", "tqdm": "features",
          "threadpoolctl": "features", "cv2": "segmentation"}


def install_hint(module: str | None) -> str:
    """``pip install "convscope[EXTRA]"`` for a missing module, or '' when no extra installs it."""
    extra = EXTRAS.get((module or "").split(".")[0])
    return f'pip install "convscope[{extra}]"' if extra else ""


def _missing_module(name: str) -> str | None:
    """Why ``name`` cannot be imported (blocked or not installed), or None when it can. Looked up,
    not imported: importing TensorFlow to list it would cost seconds."""
    if name in sys.modules:
        return "is blocked from importing" if sys.modules[name] is None else None
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None if found else "is not installed"


def installed_backends(*, missing: bool = False):
    """Names of the backend plugins that can run a model: registered, and (for the built-in
    ones) with their framework importable.

    ``missing=True`` returns instead ``{name: why}`` for the built-in backends that cannot
    run, each reason ending in the install command (``pip install "convscope[torch]"``).
    """
    registered = [name for name, _ in plugin_manager().list_name_plugin()]
    why = {}
    for name, (modules, extra) in REQUIREMENTS.items():
        path = f"convscope.backends.{name}"
        if path in _broken:
            why[name] = f"the plugin failed to load ({_broken[path]})"
            continue
        gone = [(m, r) for m in modules if (r := _missing_module(m))]
        if gone:
            why[name] = "; ".join(f"{m} {r}" for m, r in gone)
        if name in why:
            why[name] += f': pip install "convscope[{extra}]"'
    if missing:
        return why
    return [name for name in registered if name not in why]


def register_backend(plugin, name: str | None = None) -> str:
    """Register a backend plugin: a module or object with a ``convscope_make_backend`` hookimpl.

    Registering at run time does what an entry point in the group ``convscope`` does at
    start-up; the load cache is cleared, so the next :func:`load` asks the new plugin too.
    Returns the name it is registered under. Registering it again is a no-op.
    """
    hook = getattr(plugin, "convscope_make_backend", None)
    if hook is None or not callable(hook):
        raise TypeError(f"The 'plugin' parameter of register_backend must be a module or object with a "
                        f"convscope_make_backend hookimpl. Got {type(plugin).__name__} instead.")
    pm = plugin_manager()
    with _lock:
        if not pm.is_registered(plugin):
            name = pm.register(plugin, name=name)
            if name is None:
                raise ValueError(f"register_backend: pluggy refused {plugin!r} (blocked by name).")
        clear_cache()
        return pm.get_name(plugin)


def unregister_backend(plugin) -> None:
    """Undo :func:`register_backend` (the load cache is cleared)."""
    with _lock:
        plugin_manager().unregister(plugin)
        clear_cache()


def clear_cache() -> None:
    """Forget every memoised backend; the next :func:`load` of each model builds a new one."""
    with _lock:
        _files.clear()
        _models.clear()


_BACKEND_TYPES: set = set()


def _frozen(value):
    """A hashable stand-in for an option value (lists and dicts by content), or raise TypeError."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_frozen, value))
    if isinstance(value, dict):
        return ("dict", *sorted((k, _frozen(v)) for k, v in value.items()))
    hash(value)  # TypeError for anything else unhashable: that call is not cached
    return type(value).__name__, value


def _file_key(model, options_key):
    """(device, inode, mtime_ns, size, options) of a model file, else None. The device and
    inode are the file the path resolves to, whatever its spelling (relative, through links),
    at the cost of one ``stat``; a rewritten or replaced file has a new mtime or inode."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        st = os.stat(model)
    except (OSError, TypeError, ValueError):
        return None  # not a file (a name some plugin claims, or missing): never cached
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, options_key) if stat.S_ISREG(st.st_mode) else None


#: Options every backend takes, handled here rather than by each plugin.
CORE_OPTIONS = ("value_range", "preprocess")


def _make(model, options):
    options = dict(options)
    value_range = options.pop("value_range", None)
    if value_range is not None:
        value_range = _check_value_range(value_range)
    preprocess, note = resolve_preprocess(options.pop("preprocess", None), model)
    backend = plugin_manager().hook.convscope_make_backend(model=model, options=options)
    if backend is None:
        raise TypeError(
            f"No convscope backend accepts a model of type {type(model).__module__}.{type(model).__qualname__}. "
            f"Installed backends: {', '.join(installed_backends()) or 'none'}"
            f"{''.join(f'; {n} cannot run ({e})' for n, e in installed_backends(missing=True).items())}. "
            "Pass a torch.nn.Module, a Keras model or "
            "'.keras' file, an '.onnx' file, or register a plugin with convscope.register_backend.")
    if preprocess is not None:
        backend = Preprocessed(backend, preprocess, note)
    if value_range is not None:
        backend.value_range = value_range
    return backend


def _check_value_range(value_range) -> tuple:
    """(low, high), low < high: the range of the model's input values, which synthesis keeps
    its images in (default (0, 1))."""
    from ._validate import param_error

    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise param_error("value_range", "convscope.load", "a pair (low, high)", repr(value_range), TypeError) from None
    if not (lo < hi and abs(lo) != float("inf") and abs(hi) != float("inf")):
        raise param_error("value_range", "convscope.load", "a pair (low, high) of finite numbers with low < high",
                          repr(value_range))
    return lo, hi


def load(model, **options) -> Backend:
    """Wrap ``model`` in a Backend.

    ``model`` may be a ``torch.nn.Module``, a Keras model or ``.keras`` file, an ONNX file
    path, bytes or ``onnx.ModelProto``, anything a third-party plugin claims, or a Backend
    (returned unchanged). ``options`` go to the plugin (for example ``input_shape``).

    Memoised: the same file (path, modification time and size) with the same options gives
    the same backend object, without reading the file again; a rewritten file is read anew.
    An in-memory model with the same options gives a backend that shares the first one's
    layer records, traced functions and lock (it probes and traces nothing again); nothing is
    kept once the model is deleted. A call with an option that cannot be hashed (lists and
    dicts count by content) is not memoised. :func:`clear_cache` forgets everything.
    """
    if not options and (type(model) in _BACKEND_TYPES or (
            not isinstance(model, (str, os.PathLike)) and isinstance(model, Backend))):
        _BACKEND_TYPES.add(type(model))  # a Protocol isinstance check costs ~10 us: once per type
        return model
    try:
        options_key = _frozen(options) if options else ()
    except TypeError:
        return _make(model, options)
    key = _file_key(model, options_key)
    if key is not None:
        with _lock:
            backend = _files.get(key)
            if backend is not None:
                _files.move_to_end(key)
                return backend
        backend = _make(model, options)  # outside the lock: a slow file must not stall other loads
        with _lock:
            backend = _files.setdefault(key, backend)  # a racing load of the same file: the first wins
            _files.move_to_end(key)
            while len(_files) > FILE_CACHE_SIZE:
                _files.popitem(last=False)
        return backend
    backend = _make(model, options)
    if isinstance(backend, BackendBase) and not isinstance(model, (str, bytes, bytearray, os.PathLike)):
        try:
            with _lock:
                states = _models.setdefault(model, {})
                state = states.get(options_key)
                if state is None:
                    states[options_key] = backend._share_state()
                else:
                    backend._adopt_state(state)
        except TypeError:  # not weakly referenceable (e.g. an onnx.ModelProto): not memoised
            pass
    return backend
