"""ONNX Runtime sessions over one shared copy of the weights, cached by what they compute.

Each session is built from a weight-free ModelProto holding only the nodes its outputs
need. Large matrices that only Gemm and MatMul read (most of a VGG's 550 MB) are handed to
ONNX Runtime as OrtValues wrapping the backend's own NumPy arrays
(``SessionOptions.add_initializer``), so no session copies them. Other weights, chiefly
convolution kernels, which ONNX Runtime re-lays out for its blocked convolutions anyway,
go in as data. Pre-packing, which would give every session its own re-laid-out copy of
every matrix, is off.

Worker threads spin (busy-wait for the next task) only while a run is in progress and sleep
once it returns (``session.force_spinning_stop``), unless ``spinning=True`` (ONNX Runtime's
default: they go on spinning after a run). Between two runs a synthesis loop does NumPy
work, and a gradient with seeds from a callable runs NumPy between its forward and backward
sessions; threads spinning then take the cores that work needs (and those of other
frameworks in the process). Within a run, spinning hands each parallel operator to the
workers without waking them: ResNet-18's input gradient at two threads takes 36.8 against
40.2 ms with threads that sleep at every hand-off (``allow_spinning=0``, the setting before),
the same at one thread; with a busy loop between gradients the process uses 1.62 cores per
wall second, against 1.49 sleeping and 1.99 spinning on.

Every session runs on the backend's execution providers (:func:`resolve_providers`): CUDA
when ``onnxruntime-gpu`` is installed and sees a GPU, else the CPU, unless ``providers=``
says otherwise. A provider that is installed but does not start (session creation raises, or
ONNX Runtime silently leaves it out of the session) is dropped, with one warning that names
it, and every later session runs on what is left (the CPU at the end of the list).
"""
from __future__ import annotations

import os
import tempfile
import threading
import warnings
import weakref
from collections.abc import Mapping

from convscope._validate import describe, param_error

__all__ = ["SessionCache", "RuntimeFailure", "resolve_providers", "CPU", "CUDA"]

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
#: short names for the execution providers (case does not matter), as ``--device`` takes them
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": "TensorrtExecutionProvider",
                    "trt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider",
                    "directml": "DmlExecutionProvider", "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider",
                    "migraphx": "MIGraphXExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
#: providers whose tensors live in CUDA memory: the adjoint's residuals are bound there
_ON_CUDA = (CUDA, "TensorrtExecutionProvider")

_PLACEHOLDER = "weights.placeholder"
_SHARE_BYTES = 1 << 20


class RuntimeFailure(RuntimeError, ValueError):
    """ONNX Runtime refused to build or run a session; the message says for what. Also a
    ValueError: what ONNX Runtime refuses in a file (a wrong attribute, an operator it lacks)
    is bad input like what convscope's own loader refuses."""


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _shareable(nodes, weights, arrays):
    """Weights ONNX Runtime can use in place: large matrices that only Gemm and MatMul read.
    Convolution weights are re-laid out by its optimiser (which needs their data), so they go
    in as data and the optimiser's copy replaces them."""
    readers = {}
    for node in nodes:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, set()).add((node.op_type, slot))
    matrix = {("Gemm", 0), ("Gemm", 1), ("Gemm", 2), ("MatMul", 0), ("MatMul", 1)}
    return [w for w in weights if arrays[w].nbytes >= _SHARE_BYTES and readers.get(w, set()) <= matrix]


def _reads(node):
    """Tensors a node reads: its inputs and what its subgraphs (If, Loop) take from outside."""
    names = {i for i in node.input if i}
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for inner in sub.node:
                names |= _reads(inner)
    return names


def _needed(nodes, outputs):
    """The nodes that ``outputs`` depend on, in their original order."""
    wanted, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            keep.append(node)
            wanted |= _reads(node)
    return keep[::-1]


def _provider_name(name, ort, owner):
    available = list(ort.get_available_providers())
    if not isinstance(name, str):
        raise param_error("providers", owner, "provider names or (name, options) pairs as onnxruntime takes them",
                          describe(name), TypeError)
    known = {n.lower(): n for n in (*ort.get_all_providers(), *available)}
    full = PROVIDER_ALIASES.get(name.lower()) or known.get(name.lower())
    if full in available:
        return full
    if full is None:
        raise param_error("providers", owner, f"a provider onnxruntime knows; available here: {', '.join(available)} "
                          f"(short names: {', '.join(PROVIDER_ALIASES)})", repr(name))
    hint = " (it needs onnxruntime-gpu: pip install onnxruntime-gpu, and a GPU)" if full in _ON_CUDA else ""
    raise param_error("providers", owner, f"a provider installed in this onnxruntime {ort.__version__}: "
                      f"{', '.join(available)}", f"{name!r}, which is not installed{hint}")


def resolve_providers(providers, ort, owner="convscope.load"):
    """``[(name, options)]`` for ``providers`` (None: CUDA when installed and seen, then the CPU),
    and whether they were chosen for the user.

    ``providers`` is a name, or a list of names and ``(name, options)`` pairs, as
    ``onnxruntime.InferenceSession`` takes them; short names (``"cuda"``, ``"tensorrt"``,
    ``"coreml"``, ``"directml"``, ``"cpu"``) are mapped to ONNX Runtime's. The CPU provider
    ends every list (ONNX Runtime runs there what the others lack)."""
    if providers is None:
        default = [(CUDA, {})] if CUDA in ort.get_available_providers() else []
        return default + [(CPU, {})], True
    pair = isinstance(providers, tuple) and len(providers) == 2 and isinstance(providers[1], Mapping)
    items = [providers] if isinstance(providers, str) or pair else providers
    if not isinstance(items, (list, tuple)) or not items:
        raise param_error("providers", owner, "a provider name or a non-empty list of names and (name, options) pairs",
                          describe(providers), TypeError)
    resolved = {}
    for item in items:
        name, options = item if isinstance(item, (tuple, list)) and len(item) == 2 else (item, {})
        if not isinstance(options, Mapping):
            raise param_error("providers", owner, "(name, options) pairs with a dict of options", describe(item),
                              TypeError)
        resolved.setdefault(_provider_name(name, ort, owner), dict(options))
    resolved.setdefault(CPU, {})
    return list(resolved.items()), False


class SessionCache:
    """Builds and caches ``onnxruntime.InferenceSession`` objects for an :class:`OnnxGraph`."""

    def __init__(self, graph, ort, onnx, *, threads=None, spinning=False, providers=None, notes=None):
        self.graph, self._ort, self._onnx = graph, ort, onnx
        self._threads, self._spinning = threads, spinning
        self._providers, chosen = resolve_providers(providers, ort)
        #: {option: what was chosen for the user}: the backend's ``choices``, told of a default GPU or a fallback
        self.notes = {} if notes is None else notes
        if chosen and self._providers[0][0] != CPU:
            self.notes["providers"] = (f"{self._providers[0][0]} (onnxruntime-gpu and a GPU were found); "
                                       "load(model, providers=['CPUExecutionProvider']) runs on the CPU")
        #: (device, id) the adjoint's residuals are bound to between its two sessions, None: NumPy arrays
        self.device = self._binding_device()
        self._sessions = {}
        self._values = {}
        self._lock = threading.Lock()
        self._folder, self._files = None, 0

    @property
    def providers(self):
        """The names of the providers sessions run on, first choice first (after any fallback)."""
        return [name for name, _ in self._providers]

    @property
    def provider_list(self):
        """``[(name, options)]`` as given to ONNX Runtime: what a twin backend takes as ``providers=``."""
        return [(name, dict(options)) for name, options in self._providers]

    def free_bytes(self):
        """Free memory of the CUDA device the sessions run on (read through torch, which ONNX
        Runtime lacks an API for), or None: on the CPU, or when torch cannot tell."""
        if self.device is None or self.device[0] != "cuda":
            return None
        try:
            import torch
        except ImportError:
            return None
        return torch.cuda.mem_get_info(self.device[1])[0] if torch.cuda.is_available() else None

    def _binding_device(self):
        name, options = self._providers[0]
        return ("cuda", int(options.get("device_id", 0))) if name in _ON_CUDA else None

    def _start(self, source, options):
        """``InferenceSession(source)`` on the providers; one that fails to start, or that ONNX
        Runtime leaves out, is dropped with a warning and the session made without it."""
        ort = self._ort
        if self.providers == [CPU]:
            return ort.InferenceSession(source, options(), providers=[CPU])
        try:
            session = ort.InferenceSession(source, options(), providers=self.providers,
                                           provider_options=[o for _, o in self._providers])
        except Exception as err:
            session = ort.InferenceSession(source, options(), providers=[CPU])  # a failure here is the model's
            self._drop([n for n in self.providers if n != CPU], _first_line(err))
            return session
        running = set(session.get_providers())
        dropped = [n for n in self.providers if n not in running]
        if dropped:
            self._drop(dropped, "ONNX Runtime left it out of the session")
        return session

    def _drop(self, names, why):
        with self._lock:
            self._providers = [(n, o) for n, o in self._providers if n not in names] or [(CPU, {})]
            self.device = self._binding_device()
            left = ", ".join(self.providers)
            self.notes["providers"] = f"{', '.join(names)} did not start ({why}): the model runs on {left}"
        warnings.warn(f"ONNX Runtime could not start {', '.join(names)} ({why}); convscope runs the model on {left}.",
                      RuntimeWarning, stacklevel=5)

    def _ort_value(self, name):
        if name not in self._values:
            self._values[name] = self._ort.OrtValue.ortvalue_from_numpy(self.graph.weights[name])
        return self._values[name]

    def model(self, nodes, inputs, outputs, initializers=(), dtypes=None):
        """The graph computing ``outputs`` from ``inputs`` ({name: elem type or ValueInfoProto}).

        Returns (ModelProto without the weights, the weights it reads, those of them that
        ONNX Runtime can use in place); :meth:`session` attaches them."""
        onnx, helper = self._onnx, self._onnx.helper
        dtypes = dtypes or {}
        graph = self.graph
        nodes = _needed(nodes, outputs)
        reads = set(outputs).union(*(_reads(n) for n in nodes))
        value_infos = []
        for name, kind in inputs.items():
            value_infos.append(kind if isinstance(kind, onnx.ValueInfoProto)
                               else helper.make_tensor_value_info(name, kind, None))
        outs = [helper.make_tensor_value_info(o, dtypes[o], None) if o in dtypes else onnx.ValueInfoProto(name=o)
                for o in outputs]
        inits = [t for t in graph.proto.graph.initializer if t.name in reads] + list(initializers)
        weights = sorted(n for n in reads if n in graph.weights and n not in inputs)
        g = helper.make_graph(nodes, "convscope", value_infos, outs, inits)
        model = helper.make_model(g, opset_imports=list(graph.proto.opset_import), ir_version=graph.proto.ir_version)
        model.functions.extend(graph.proto.functions)
        return model, weights, _shareable(nodes, weights, graph.weights)

    def _attach(self, model, inline, shared):
        """Add the weights to ``model``: ``inline`` as data, ``shared`` as external placeholders."""
        onnx, helper = self._onnx, self._onnx.helper
        from onnx import numpy_helper

        for name in inline:
            model.graph.initializer.append(numpy_helper.from_array(self.graph.weights[name], name))
        for name in shared:
            w = self.graph.weights[name]
            t = model.graph.initializer.add(name=name, data_type=helper.np_dtype_to_tensor_dtype(w.dtype), dims=w.shape)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", _PLACEHOLDER), ("offset", "0"), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
        return model

    def session(self, key, build):
        """The cached session for ``key``; ``build()`` returns what :meth:`model` returns."""
        with self._lock:
            if key in self._sessions:
                return self._sessions[key]
        model, weights, shared = build()
        try:
            try:
                session = self._create(model, [w for w in weights if w not in shared], shared)
            except Exception as err:
                if not shared or "External" not in str(err):
                    raise
                # an optimisation wanted to read a shared weight itself: give it every weight as data
                session = self._create(model, weights, [])
        except Exception as err:
            raise RuntimeFailure(f"ONNX Runtime cannot load the model ({_first_line(err)}).") from err
        with self._lock:
            return self._sessions.setdefault(key, session)

    def _options(self, shared):
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are raised with their message, not logged
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
        if self._threads:
            options.intra_op_num_threads = int(self._threads)
        if not self._spinning:
            options.add_session_config_entry("session.force_spinning_stop", "1")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for name in shared:
            options.add_initializer(name, self._ort_value(name))
        return options

    def _create(self, structure, inline, shared):
        """A session for ``structure`` with the ``inline`` weights copied in and the ``shared`` ones
        taken from the backend's arrays.

        A shared weight is declared as external data in an empty placeholder file beside the
        model: ONNX Runtime checks that the file exists, then takes the weight from
        ``add_initializer`` and never reads the file. (Loading from bytes, it would insist on
        ``add_external_initializers``, which copies every weight once more while loading.)"""
        model = self._onnx.ModelProto()
        model.CopyFrom(structure)
        data = self._attach(model, inline, shared).SerializeToString()
        del model
        if not shared:
            return self._start(data, lambda: self._options(()))
        with self._lock:
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="convscope-onnx-")
                weakref.finalize(self, self._folder.cleanup)
                open(os.path.join(self._folder.name, _PLACEHOLDER), "wb").close()
            self._files += 1
            path = os.path.join(self._folder.name, f"session{self._files}.onnx")
        with open(path, "wb") as f:
            f.write(data)
        del data
        try:
            return self._start(path, lambda: self._options(shared))
        finally:
            os.remove(path)

    def __len__(self):
        return len(self._sessions)
