"""An ONNX graph made ready to explain: one image input, chosen scores, a recent opset.

:func:`prepare` turns what :func:`read_model` returns into an :class:`OnnxGraph`:

* initializers that older exporters also list as graph inputs are treated as constants;
* a model below opset :data:`MIN_OPSET` is converted (``onnx.version_converter``) on its
  weight-free structure, so the gradient rules meet one form of every operator and may use
  ScatterND and ScatterElements with ``reduction="add"`` (opset 16);
* the image input is the one 4-d float input (or ``input=``); a channels-last one (N, H, W, C)
  that the graph transposes first, as exports of Keras models do, is fed through a Transpose
  from a new (N, C, H, W) input;
* the explained tensor is the one graph output (or ``select=``, a name or an index); when that
  output is a final Softmax or LogSoftmax, the scores explained are its input, as Simonyan et
  al. (2014) advise, unless ``output="probabilities"``; ``OnnxGraph.left_out`` then names what
  was left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convscope._outputs import OUTPUTS
from convscope._validate import check_name, param_error

__all__ = ["OnnxGraph", "prepare", "MIN_OPSET", "choices"]

MIN_OPSET = 16
TARGET_OPSET = 17
_SOFTMAX = ("Softmax", "LogSoftmax")
#: what ``load(model, output=...)`` explains: the scores before a final softmax, or its output
def choices(graph) -> dict:
    """What convscope chose for the user, by option: ``{"output": why}`` when a final softmax is
    left out, ``{"input": why}`` when the file takes channels-last images."""
    chosen = {}
    if graph.left_out is not None:
        op, name = graph.left_out
        chosen["output"] = (f"the final {op} {name!r} is left out: methods explain the scores before it; "
                            "load(model, output='probabilities') keeps it")
    if graph.channels_last is not None:
        chosen["input"] = (f"the file's input {graph.channels_last!r} takes channels-last images (N, H, W, C); "
                           "convscope feeds it through a Transpose, so pass (N, C, H, W) arrays as for any model")
    return chosen


@dataclass
class OnnxGraph:
    """A weight-free ModelProto and its weights, with the roles of its tensors.

    ``image`` is the graph input fed with the images, ``final`` the chosen graph output and
    ``scores`` the tensor explained as "output" (``final``, or the input of a final Softmax).
    ``fixed_batch`` is the batch size the file fixes (None when dynamic), ``file_chw`` the
    (C, H, W) it declares (None where left open). ``constants`` holds the values of small
    initializers and Constant nodes, ``producer`` maps a tensor to the index of its node.
    """

    proto: object
    weights: dict
    image: str
    scores: str
    final: str
    fixed_batch: int | None
    file_chw: tuple
    opset: int
    constants: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    #: (op type, tensor) of the final Softmax/LogSoftmax the scores are read before, or None
    left_out: tuple | None = None
    #: the file's own input when it takes (N, H, W, C) images and ``image`` feeds it through a Transpose
    channels_last: str | None = None

    @property
    def nodes(self):
        return self.proto.graph.node


def _dims(value_info):
    """Shape of a ValueInfoProto as a tuple (int or None per axis), or None if the rank is unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def _constants(proto, onnx):
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                value = onnx.helper.get_attribute_value(a)
                if a.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(value)
                elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    found[node.output[0]] = np.asarray(value, np.float32 if "float" in a.name else np.int64)
    return found


def _hoist_constants(proto, weights):
    """Large Constant nodes (some exporters store weights so) become weights: sessions then
    share them instead of carrying a copy in every serialised graph."""
    from onnx import numpy_helper

    from ._load import INLINE_BYTES

    kept = []
    for node in proto.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and node.domain in ("", "ai.onnx") and value.ByteSize() >= INLINE_BYTES:
            weights[node.output[0]] = numpy_helper.to_array(value)
        else:
            kept.append(node)
    if len(kept) < len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(kept)


def _convert_opset(proto, weights, opset, onnx):
    """Convert the structure to TARGET_OPSET, with the weights declared as inputs meanwhile."""
    from onnx import helper, version_converter

    declared = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(w.dtype), w.shape)
                for name, w in weights.items()]
    proto.graph.input.extend(declared)
    try:
        converted = version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as err:
        raise ValueError(f"The ONNX model uses opset {opset}, older than {MIN_OPSET}, and could not be converted to "
                         f"opset {TARGET_OPSET} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                         "Re-export it with a recent opset (torch.onnx.export(..., opset_version=17)).") from None
    names = set(weights)
    kept = [v for v in converted.graph.input if v.name not in names]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    return converted


def _default_opset(proto):
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _describe_inputs(inputs, onnx):
    parts = []
    for v in inputs:
        dims = _dims(v)
        elem = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) if v.type.tensor_type.elem_type else "?"
        shape = "?" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        parts.append(f"{v.name}: {elem}{shape}")
    return ", ".join(parts)


def _pick_image(inputs, wanted, onnx):
    float_types = (onnx.TensorProto.FLOAT,)
    if wanted is not None:
        check_name(wanted, [v.name for v in inputs], "input", "convscope.load", what="graph input")
        image = next(v for v in inputs if v.name == wanted)
    else:
        images = [v for v in inputs if (_dims(v) is None or len(_dims(v)) == 4)]
        if not images:
            raise ValueError("The ONNX model has no image-like input: convscope needs a 4-d float input "
                             f"(N, C, H, W), and the model's inputs are {_describe_inputs(inputs, onnx)}.")
        if len(images) > 1:
            raise ValueError(f"The ONNX model has several image-like inputs ({_describe_inputs(images, onnx)}); "
                             "pass input=<name> to convscope.load to pick the one to explain.")
        image = images[0]
    if image.type.tensor_type.elem_type not in float_types:
        raise ValueError(f"The ONNX model's input {_describe_inputs([image], onnx)} is not float32; convscope's ONNX "
                         "backend explains float32 models.")
    others = [v for v in inputs if v.name != image.name]
    if others:
        raise ValueError(f"The ONNX model needs inputs besides the image {image.name!r}: "
                         f"{_describe_inputs(others, onnx)}; convscope can only feed the image.")
    dims = _dims(image)
    if dims is not None and len(dims) != 4:
        raise ValueError(f"The ONNX model's input {_describe_inputs([image], onnx)} is not 4-d (N, C, H, W).")
    return image, dims or (None,) * 4


#: operators an exported Keras model applies to its channels-last input before transposing it
#: (preprocessing layers: Rescaling, Normalization), which keep its layout
_POINTWISE = {"Identity", "Cast", "Mul", "Add", "Sub", "Div", "Clip"}


def _channels_last_input(graph, image) -> bool:
    """Whether the graph transposes its image input from (N, H, W, C) to (N, C, H, W) before
    anything else reads it: tf2onnx's and keras2onnx's exports of Keras models start so. The
    sizes alone cannot tell: an (N, 8, 2, 3) input may be an 8-channel map."""
    from .adjoint._emit import attr

    reached, found = {image}, False
    for node in graph.node:  # topological order: a consumer comes after what it reads
        if not reached.intersection(node.input):
            continue
        if node.op_type == "Transpose" and list(attr(node, "perm", ())) == [0, 3, 1, 2]:
            found = True
        elif node.op_type in _POINTWISE:
            reached.update(node.output)
        else:
            return False  # something reads the input in its own layout
    return found


def _feed_channels_first(structure, image, dims, onnx):
    """Give the graph a (N, C, H, W) input that a Transpose turns into its (N, H, W, C) one."""
    helper = onnx.helper
    names = {v.name for v in structure.graph.input} | {o for n in structure.graph.node for o in n.output}
    name = next(f"{image.name}{suffix}" for suffix in ("_nchw", *(f"_nchw{i}" for i in range(1, 100)))
                if f"{image.name}{suffix}" not in names)
    n, h, w, c = dims
    fed = helper.make_tensor_value_info(name, image.type.tensor_type.elem_type,
                                        [d if d is not None else f"{name}_{i}" for i, d in enumerate((n, c, h, w))])
    inputs = [fed if v.name == image.name else v for v in structure.graph.input]
    del structure.graph.input[:]
    structure.graph.input.extend(inputs)
    structure.graph.node.insert(0, helper.make_node("Transpose", [name], [image.name], perm=[0, 2, 3, 1],
                                                    name=f"{name}_to_nhwc"))
    return fed, (n, c, h, w)


def _pick_output(outputs, wanted, param="select"):
    names = [v.name for v in outputs]
    if wanted is None:
        if len(names) > 1:
            raise ValueError(f"The ONNX model has several outputs ({', '.join(names)}); pass select=<name or index> "
                             "to convscope.load to pick the scores to explain.")
        return names[0]
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool):
        if not -len(names) <= wanted < len(names):
            raise param_error(param, "convscope.load", f"an index below {len(names)} or an output name",
                              str(wanted))
        return names[wanted]
    if param == "output" and wanted not in names:  # not a graph output, nor one of OUTPUTS
        raise ValueError(f"The 'output' parameter of convscope.load must be a known graph output name (the old "
                         f"spelling of select=) or one of {', '.join(map(repr, OUTPUTS))}. Got {wanted!r} instead; "
                         f"the graph outputs are {', '.join(names)}.")
    return check_name(wanted, names, param, "convscope.load", what="graph output")


def prepare(structure, weights, onnx, *, input=None, select=None, probabilities=False,
            select_param="select") -> OnnxGraph:
    """Normalise a weight-free model (see the module docstring) and find its image and scores."""
    graph = structure.graph
    constant_names = set(weights) | {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in constant_names]
    del graph.input[:]
    graph.input.extend(inputs)
    structure.ir_version = min(max(structure.ir_version, 8), 10)  # initializers need not be inputs from IR 4 on
    _hoist_constants(structure, weights)
    opset = _default_opset(structure)
    if opset < MIN_OPSET:
        structure = _convert_opset(structure, weights, opset, onnx)
        opset = TARGET_OPSET
    image, dims = _pick_image(list(structure.graph.input), input, onnx)
    channels_last = None
    if _channels_last_input(structure.graph, image.name):
        channels_last = image.name
        image, dims = _feed_channels_first(structure, image, dims, onnx)
    final = _pick_output(list(structure.graph.output), select, select_param)
    producer = {out: i for i, node in enumerate(structure.graph.node) for out in node.output if out}
    scores, left_out = final, None
    node = structure.graph.node[producer[final]] if final in producer else None
    if not probabilities and node is not None and node.op_type in _SOFTMAX and node.domain in ("", "ai.onnx"):
        scores, left_out = node.input[0], (node.op_type, final)
    return OnnxGraph(proto=structure, weights=weights, image=image.name, scores=scores, final=final,
                     fixed_batch=dims[0], file_chw=tuple(dims[1:]), opset=opset,
                     constants=_constants(structure, onnx), producer=producer, left_out=left_out,
                     channels_last=channels_last)
