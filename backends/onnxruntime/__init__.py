"""ONNX Runtime backend: an exported ``.onnx`` file, with gradients, and no framework needed.

``convscope.load("model.onnx")`` (or bytes, or an ``onnx.ModelProto``) wraps the model;
layers are the graph's tensors (node outputs), ``"input"`` is its image input and
``"output"`` the scores: the graph output, or the input of a final Softmax or LogSoftmax
unless ``output="probabilities"`` (the backend's ``choices`` says so). Gradients run on ONNX Runtime through an adjoint graph built from
the model itself (:mod:`.adjoint`); a model with a fixed batch serves any batch by
splitting it. Images are NCHW float32, as everywhere in convscope.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

from convscope._relevance import DeepLiftRules, RelevanceRules
from convscope._validate import check_choice, check_finite, check_name, param_error
from convscope.backend import INPUT, OUTPUT, BackendBase, Gradients
from convscope.hookspecs import hookimpl

from .adjoint import build_adjoint
from .adjoint._emit import UnsupportedOperatorError
from ._dataflow import dependent_tensors
from convscope._outputs import OUTPUTS, output_options

from ._graph import choices, prepare
from ._layers import layer_names, layer_records, layer_weights
from ._load import ModelReadError, read_model
from ._runs import Runner
from ._session import RuntimeFailure, SessionCache
from ._shapes import infer_shapes
from ._weights import model_with_weights, replaceable_weights

__all__ = ["OnnxBackend", "ModelReadError", "UnsupportedOperatorError", "RuntimeFailure"]


def _claims(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).lower().endswith(".onnx")
    if isinstance(model, (bytes, bytearray)):
        return True
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


@hookimpl
def convscope_make_backend(model, options):
    if not _claims(model):
        return None
    return OnnxBackend(model, **options)


def _frameworks():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"The ONNX backend needs onnx and onnxruntime ({err}): pip install 'convscope[onnx]'") from None
    return onnx, onnxruntime


class OnnxBackend(BackendBase):
    """Backend for an ONNX model (path, bytes or ``onnx.ModelProto``); :class:`~convscope.backend.BackendBase`
    checks the arguments.

    ``input_shape`` (C, H, W) sizes the layer records of a model whose file leaves the size
    open (default: the last batch seen). ``input`` and ``select`` pick a graph input or
    output by name (``select`` also by index) when there are several. ``output="scores"``
    (the default) explains the scores before a final Softmax or LogSoftmax, as every backend
    does; ``output="probabilities"`` keeps it (``probabilities=True`` is the old spelling, and
    an output name or index given as ``output=`` the old spelling of ``select=``: both warn
    once). The backend's ``output`` says which, and ``choices`` maps an option to what was
    chosen for the user and how to change it (``{}`` when nothing was). ``threads`` sets ONNX Runtime's
    intra-op threads. They spin (busy-wait) only while a pass runs and sleep between passes,
    which leaves the cores to the NumPy work there and to other frameworks in the process;
    ``spinning=True`` restores ONNX Runtime's default (spinning on after a pass).

    ``providers`` are ONNX Runtime's execution providers, a name or a list of names and
    ``(name, options)`` pairs as ``InferenceSession`` takes them (``"cuda"``, ``"tensorrt"``,
    ``"coreml"``, ``"directml"``, ``"cpu"`` for short). Default: CUDA when ``onnxruntime-gpu``
    is installed and sees a GPU, else the CPU. An unknown or uninstalled name raises; one that
    fails to start is dropped with a warning (:mod:`._session`). The backend's ``providers``
    says what runs; on CUDA the adjoint's residuals stay on the device (:mod:`._runs`).

    ``fixed_size`` is the (H, W) the model file fixes, or None when it leaves the size open.
    """

    name = "onnxruntime"
    #: LRP and DeepLift run as rules of the adjoint graph (:mod:`.adjoint.relevance`)
    rule_sets = (RelevanceRules, DeepLiftRules)

    def __init__(self, model, *, input_shape=None, input=None, output=None, select=None, probabilities=None,
                 threads=None, spinning=False, providers=None):
        onnx, ort = _frameworks()
        self._onnx = onnx
        structure, weights = read_model(model, onnx)
        output, select, select_param = output_options(output, select, probabilities=probabilities,
                                                      names=[o.name for o in structure.graph.output])
        check_choice(output, OUTPUTS, "output", "convscope.load")
        self.graph = prepare(structure, weights, onnx, input=input, select=select,
                             probabilities=output == "probabilities", select_param=select_param)
        #: "scores" (before a final softmax) or "probabilities"
        self.output = output
        #: {option: what convscope chose for the user and how to change it}
        self.choices = choices(self.graph)
        file_chw = self.graph.file_chw
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
            if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
                raise param_error("input_shape", "convscope.load", "(C, H, W), three positive ints", repr(input_shape))
            if any(f is not None and f != d for f, d in zip(file_chw, shape)):
                raise param_error("input_shape", "convscope.load", f"compatible with the model's input {file_chw}",
                                  repr(input_shape))
            input_shape = tuple(int(d) for d in shape)
        if not isinstance(spinning, (bool, np.bool_)):
            raise param_error("spinning", "convscope.load", "True or False", repr(spinning), TypeError)
        self._input_shape = input_shape
        self.channels = input_shape[0] if input_shape else file_chw[0]
        self._spatial = tuple(file_chw[1:]) if None not in file_chw[1:] else None
        self._last_shape = None
        self._lock = threading.RLock()
        self._session_options = {"threads": threads, "spinning": bool(spinning)}
        self._sessions = SessionCache(self.graph, ort, onnx, threads=threads, spinning=bool(spinning),
                                      providers=providers, notes=self.choices)
        self._runner = Runner(self.graph, self._sessions, ort)
        _, dtypes = infer_shapes(self.graph, None, onnx)
        self._dependent = dependent_tensors(self.graph)
        self._names = layer_names(self.graph, dtypes, self._dependent)
        self._name_set = set(self._names)
        self._shapes, self._plans, self._layers = {}, {}, {}

    @property
    def fixed_size(self):
        """(H, W) when the model file fixes the input size, else None (any size runs)."""
        return self._spatial

    @property
    def providers(self):
        """The execution providers the model runs on, first choice first: what started, after
        a provider that did not was dropped (the forward session is made to find out)."""
        with self._lock:
            if not len(self._sessions):
                self._runner.forward_session([self.graph.scores])
        return self._sessions.providers

    def memory_ceiling(self, height, width):
        """Images of (height, width) per call that fit on the CUDA device the sessions run on
        (:func:`convscope._batching.memory_ceiling`, tensor shapes inferred at that size); None
        on the CPU, where the pixel rule alone sizes batches."""
        free = self._sessions.free_bytes()
        if free is None:
            return None
        from convscope._batching import bytes_per_image, memory_ceiling

        shapes = self._shapes_for((self.channels, int(height), int(width)))[0]
        dims = [tuple(d[1:]) for d in shapes.values() if d and None not in d[1:]]
        return memory_ceiling(free, bytes_per_image(dims, (height, width), height, width))

    # ----------------------------------------------------------------- names and shapes
    def _tensor(self, name):
        return self.graph.image if name == INPUT else self.graph.scores if name == OUTPUT else name

    def _layer_known(self, name):
        return name in self._name_set

    def _layer_names(self):
        return self._names

    def _note_input(self, x):
        self._last_shape = tuple(x.shape[1:])

    def _tensor_shape(self, name, chw):
        dims = self._shapes_for(tuple(chw))[0].get(self._tensor(name))
        return None if dims is None or None in dims[1:] else tuple(dims[1:])

    def _probe(self, names, chw, batch=2):
        zeros = np.zeros((self.graph.fixed_batch or batch, *chw), np.float32)
        return self._runner.forward(zeros, names)

    def _shapes_for(self, chw):
        with self._lock:
            if chw not in self._shapes:
                self._shapes[chw] = infer_shapes(self.graph, chw, self._onnx, probe=self._probe)
            return self._shapes[chw]

    # ----------------------------------------------------------------- the protocol
    def layers(self):
        """Records in execution order, shapes for ``input_shape``, the file's size, or the last batch seen."""
        chw = self._input_shape or self._last_shape
        if chw is None and None not in self.graph.file_chw:
            chw = tuple(self.graph.file_chw)
        if chw is None:
            raise ValueError("The ONNX model leaves its input size open, so layer shapes are unknown. Pass "
                             "input_shape=(C, H, W) to convscope.load, or run a batch first.")
        with self._lock:
            if chw not in self._layers:
                self._layers[chw] = layer_records(self.graph, self._names, self._shapes_for(chw)[0], self._dependent)
            return list(self._layers[chw])

    def _forward(self, x):
        with self._lock:
            return check_finite(self._runner.forward(x, [self.graph.scores])[0], "the output", "forward")

    def _activations(self, x, names):
        tensors = list(dict.fromkeys(self._tensor(n) for n in names if n != INPUT))
        with self._lock:
            values = dict(zip(tensors, self._runner.forward(x, tensors))) if tensors else {}
        values[self.graph.image] = x
        return {n: values[self._tensor(n)] if n == INPUT else check_finite(values[self._tensor(n)], repr(n), "activations")
                for n in names}

    def _plan(self, chw, seeds, wrt, relu):
        # a DeepLiftRules is keyed by its eps: its baseline is fed at run time
        key = (chw, seeds, wrt, ("deeplift", relu.eps) if isinstance(relu, DeepLiftRules) else relu)
        with self._lock:
            if key not in self._plans:
                shapes, dtypes = self._shapes_for(chw)
                self._plans[key] = build_adjoint(self.graph, shapes, dtypes, list(seeds), list(wrt), relu)
            return key, self._plans[key]

    def _feeds(self, seed_map):
        """Seeds (checked by the base) keyed by graph tensor, as the sessions take them."""
        return {self._tensor(name): np.ascontiguousarray(s, dtype=np.float32) for name, s in seed_map.items()}

    def _gradient(self, x, seeds, wrt, at, relu):
        chw = tuple(x.shape[1:])
        shown = list(dict.fromkeys([*at, *wrt]))
        wrt_t = tuple(dict.fromkeys(self._tensor(w) for w in wrt))
        extra = {}
        if isinstance(relu, DeepLiftRules):
            from .adjoint.deeplift import BASELINE

            extra = {BASELINE: np.ascontiguousarray(relu.baseline, dtype=np.float32)}
        with self._lock:
            if callable(seeds):
                at_t = tuple(dict.fromkeys(self._tensor(a) for a in at))
                key, plan = self._plan(chw, at_t, wrt_t, relu)
                acts, grads = self._runner.split(key, plan, x, shown_tensors=self._shown(shown),
                                                 seeds=lambda values: self._feeds(
                                                     seeds({a: check_finite(values[self._tensor(a)], repr(a), "gradient") for a in at})),
                                                 extra=extra)
            else:
                seed_map = self._feeds(seeds)
                key, plan = self._plan(chw, tuple(sorted(seed_map)), wrt_t, relu)
                acts, grads = self._runner.combined(key, plan, x, seed_map, self._shown(shown), extra=extra)
        acts[self.graph.image] = x
        activations = {name: check_finite(acts[self._tensor(name)], repr(name), "gradient") for name in shown}
        return Gradients(grads={w: check_finite(grads[self._tensor(w)], f"the gradient at {w!r}", "gradient")
                                for w in wrt}, activations=activations,
                         outputs=acts[self.graph.scores])

    def _shown(self, names):
        """Forward tensors a gradient call reports: its at and wrt layers and the scores."""
        return list(dict.fromkeys([*(self._tensor(n) for n in names if n != INPUT), self.graph.scores]))

    def _incremental_plan(self, image, window, threshold):
        """Incremental occlusion through a crop-wise graph (:mod:`._incremental`, :mod:`convscope._incremental`)."""
        from ._incremental import incremental_plan

        return incremental_plan(self, image, window, threshold)

    def weights(self, layer):
        check_name(layer, self._names, "layer", "weights")
        node = self.graph.nodes[self.graph.producer[layer]]
        return layer_weights(self.graph, node)

    def _replaceable(self, layer):
        return replaceable_weights(self.graph, layer)

    def _with_weights(self, weights):
        """A backend on a new session over the model with ``weights`` as initializers (:mod:`._weights`)."""
        proto = model_with_weights(self.graph, weights, self._onnx)
        return OnnxBackend(proto, input_shape=self._input_shape, input=self.graph.image, select=self.graph.final,
                           output=self.output, providers=self._sessions.provider_list, **self._session_options)
