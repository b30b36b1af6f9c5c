"""What convscope checks in an ONNX model before it allocates anything for it.

A downloaded model is untrusted input. Before a weight is copied or a session is made,
:func:`check_graph` refuses (with :class:`ModelReadError`) a model that

* declares a tensor (an initializer's ``dims``, a graph input, output or ``value_info``, or a
  constant shape given to ConstantOfShape, Expand, Reshape, Tile or Resize) larger than
  :data:`MAX_TENSOR_BYTES`, or of a rank above :data:`MAX_RANK`;
* holds a tensor whose data disagrees with its ``dims`` (``raw_data`` length, or the count
  of its typed field, against the product of the dims and the element size), or whose
  element type ONNX does not define;
* has an attribute of a type ONNX does not define, or without the value its type names;
* has more than :data:`MAX_NODES` nodes (its subgraphs and local functions included),
  subgraphs (If/Loop/Scan bodies) nested deeper than :data:`MAX_SUBGRAPH_DEPTH`, a local
  function that calls itself, a cycle among its nodes, a node input or graph output that
  nothing produces, or a tensor produced twice;
* stores a tensor in an external file anywhere but in the main graph's initializers (those
  are read by :mod:`._external`, confined to the model's folder).

The limits are module constants: a caller who trusts a larger model may raise them.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ModelReadError", "MAX_TENSOR_BYTES", "MAX_RANK", "MAX_NODES", "MAX_SUBGRAPH_DEPTH",
           "check_graph", "check_tensor", "tensor_bytes"]

#: largest tensor a model may declare or hold (4 GiB): twice what protobuf lets a file hold
#: inline, and above the largest single weight of the vision models convscope explains
MAX_TENSOR_BYTES = 1 << 32
#: highest rank of a tensor (NumPy's own limit is 64; a CNN needs 5 or so)
MAX_RANK = 32
#: most nodes in a model, its subgraphs and functions included (a ViT-H export has ~10,000)
MAX_NODES = 1_000_000
#: deepest nesting of subgraphs in If/Loop/Scan attributes (exported CNNs need 0 to 2)
MAX_SUBGRAPH_DEPTH = 16

_SHAPE_INPUTS = {"ConstantOfShape": 0, "Expand": 1, "Reshape": 1, "Tile": 1, "Resize": 3}
_CONSTANT_TYPES = {"value": "TENSOR", "sparse_value": "SPARSE_TENSOR", "value_float": "FLOAT", "value_floats": "FLOATS",
                   "value_int": "INT", "value_ints": "INTS", "value_string": "STRING", "value_strings": "STRINGS"}
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}  # UINT4, INT4, FLOAT4E2M1, UINT2, INT2, FLOAT6*


class ModelReadError(ValueError):
    """The bytes are not a readable ONNX model (not ONNX at all, cut short, or refused as unsafe)."""


def _size(nbytes):
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _limit_error(what, shape, nbytes):
    return ModelReadError(f"{what} declares the shape {shape}, {_size(nbytes)}, beyond convscope's limit of "
                          f"{_size(MAX_TENSOR_BYTES)} per tensor (convscope.backends.onnxruntime._limits."
                          "MAX_TENSOR_BYTES); the file is damaged or not meant to be loaded.")


def tensor_dtype(data_type, onnx, what):
    """The NumPy dtype of an ONNX element type, or a ModelReadError naming ``what``."""
    try:
        if data_type == onnx.TensorProto.UNDEFINED:
            raise KeyError(data_type)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        raise ModelReadError(f"{what} has the element type {data_type}, which ONNX does not define.") from None


def tensor_bytes(dims, dtype, data_type, what):
    """(element count, bytes) of a tensor of ``dims``, checked against MAX_RANK and MAX_TENSOR_BYTES."""
    shape = tuple(int(d) for d in dims)
    if len(shape) > MAX_RANK:
        raise ModelReadError(f"{what} has rank {len(shape)}, above convscope's limit of {MAX_RANK} "
                             "(convscope.backends.onnxruntime._limits.MAX_RANK).")
    if any(d < 0 for d in shape):
        raise ModelReadError(f"{what} has a negative dimension in its shape {shape}.")
    count = math.prod(shape)  # Python ints: no overflow
    bits = _PACKED_BITS.get(data_type, 8 * dtype.itemsize)
    nbytes = (count * bits + 7) // 8
    if nbytes > MAX_TENSOR_BYTES:
        raise _limit_error(what, shape, nbytes)
    return count, nbytes


def check_tensor(tensor, onnx, what, raw_bytes=None):
    """Check a TensorProto's type, size and that its data matches its dims; return (dtype, bytes).

    ``raw_bytes`` is the length of raw data kept outside the proto (the loader's file scan)."""
    dtype = tensor_dtype(tensor.data_type, onnx, what)
    count, nbytes = tensor_bytes(tensor.dims, dtype, tensor.data_type, what)
    shape = tuple(tensor.dims)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return dtype, nbytes
    if tensor.HasField("segment"):
        raise ModelReadError(f"{what} is stored in segments, which convscope does not read.")
    if raw_bytes is None and tensor.HasField("raw_data"):
        raw_bytes = len(tensor.raw_data)
    if raw_bytes is not None:
        if tensor.data_type == onnx.TensorProto.STRING:
            raise ModelReadError(f"{what} holds strings as raw bytes, which ONNX does not allow.")
        if raw_bytes != nbytes:
            raise ModelReadError(f"{what} holds {raw_bytes} bytes, but its shape {shape} of {dtype} needs "
                                 f"{nbytes}; the file is damaged.")
        return dtype, nbytes
    storage = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    held = len(getattr(tensor, storage))
    want = count * 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else count
    packed = tensor.data_type in _PACKED_BITS and held in (count, (count * _PACKED_BITS[tensor.data_type] + 31) // 32,
                                                           (nbytes + 3) // 4, nbytes)
    if held != want and not packed:
        raise ModelReadError(f"{what} holds {held} values in {storage}, but its shape {shape} needs {want}; "
                             "the file is damaged.")
    return dtype, nbytes


def _check_value_info(value, where, onnx):
    t = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return
    if len(t.shape.dim) > MAX_RANK:
        raise ModelReadError(f"The {where} {value.name!r} has rank {len(t.shape.dim)}, above convscope's limit of "
                             f"{MAX_RANK} (convscope.backends.onnxruntime._limits.MAX_RANK).")
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    shape = tuple(d.dim_value if d.HasField("dim_value") else "?" for d in t.shape.dim)
    nbytes = math.prod(d for d in shape if d != "?" and d > 0) * itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise _limit_error(f"The {where} {value.name!r}", shape, nbytes)


def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.name, a.g
        for g in a.graphs:
            yield a.name, g


def _attribute_tensors(node):
    for a in node.attribute:
        if a.HasField("t"):
            yield a.name, a.t
        yield from ((a.name, t) for t in a.tensors)


def _walk(structure, what, onnx):
    """Visit every graph (depth-first, iteratively), check depth, node count, tensors and declared shapes."""
    stack = [(structure.graph, 0, "the main graph")]
    stack += [(f, 0, f"the function {f.name!r}") for f in structure.functions]
    nodes = 0
    while stack:
        graph, depth, where = stack.pop()
        nodes += len(graph.node)
        if nodes > MAX_NODES:
            raise ModelReadError(f"The ONNX model in {what} has more than {MAX_NODES} nodes, convscope's limit "
                                 "(convscope.backends.onnxruntime._limits.MAX_NODES).")
        for t in getattr(graph, "initializer", ()):
            if depth and t.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelReadError(f"The initializer {t.name!r} of a subgraph is stored in an external file "
                                     f"{_location(t)!r}; convscope reads external data only for the main graph's "
                                     "initializers.")
            check_tensor(t, onnx, f"Initializer {t.name!r}")
        for kind in ("input", "output", "value_info"):
            for v in getattr(graph, kind, ()):
                if isinstance(v, str):  # a FunctionProto's inputs and outputs are names
                    continue
                _check_value_info(v, "graph " + kind if kind != "value_info" else "tensor", onnx)
        for node in graph.node:
            _check_attributes(node, onnx)
            for attr, t in _attribute_tensors(node):
                label = f"The tensor in attribute {attr!r} of node {node.name!r} ({node.op_type})"
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    raise ModelReadError(f"{label} is stored in an external file {_location(t)!r}; convscope "
                                         "reads external data only for the main graph's initializers.")
                check_tensor(t, onnx, label)
            for attr, g in _subgraphs(node):
                if depth + 1 > MAX_SUBGRAPH_DEPTH:
                    raise ModelReadError(f"The ONNX model in {what} nests subgraphs (If/Loop/Scan bodies) deeper than "
                                         f"{MAX_SUBGRAPH_DEPTH} levels, convscope's limit (convscope.backends."
                                         f"onnxruntime._limits.MAX_SUBGRAPH_DEPTH), at node {node.name!r} "
                                         f"({node.op_type}).")
                stack.append((g, depth + 1, f"the {attr!r} subgraph of node {node.name!r}"))


def _check_attributes(node, onnx):
    """Each attribute has a type ONNX defines, and a TENSOR/GRAPH/... attribute holds its value."""
    A = onnx.AttributeProto
    holder = {A.FLOAT: "f", A.INT: "i", A.STRING: "s", A.TENSOR: "t", A.GRAPH: "g", A.SPARSE_TENSOR: "sparse_tensor",
              A.TYPE_PROTO: "tp"}
    constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
    for a in node.attribute:
        if a.ref_attr_name:  # a function's reference to its caller's attribute
            continue
        if a.type not in A.AttributeType.values() or a.type == A.UNDEFINED:
            raise ModelReadError(f"The attribute {a.name!r} of node {node.name!r} ({node.op_type}) has the type "
                                 f"{a.type}, which ONNX does not define; the file is damaged.")
        if a.type in holder and not a.HasField(holder[a.type]):
            raise ModelReadError(f"The attribute {a.name!r} of node {node.name!r} ({node.op_type}) is declared "
                                 f"{A.AttributeType.Name(a.type)} but holds no such value; the file is damaged.")
        if constant and a.name in _CONSTANT_TYPES and A.AttributeType.Name(a.type) != _CONSTANT_TYPES[a.name]:
            raise ModelReadError(f"The attribute {a.name!r} of the Constant node {node.name!r} is declared "
                                 f"{A.AttributeType.Name(a.type)}, not {_CONSTANT_TYPES[a.name]}; the file is damaged.")


def _location(tensor):
    return next((e.value for e in tensor.external_data if e.key == "location"), None)


def _check_functions(structure, what):
    """A local function may not call itself, directly or through others (inlining would not end)."""
    calls = {(f.domain, f.name): {(n.domain, n.op_type) for n in f.node} for f in structure.functions}
    state = {}  # 1: on the current call path, 2: done
    for start in calls:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(calls[start]))]
        while stack:
            key, it = stack[-1]
            callee = next((c for c in it if c in calls), None)
            if callee is None:
                state[key] = 2
                stack.pop()
            elif state.get(callee) == 1:
                raise ModelReadError(f"The ONNX model in {what} has a local function {callee[1]!r} that calls itself "
                                     "(directly or through other functions); its inlining would not end.")
            elif state.get(callee) is None:
                state[callee] = 1
                stack.append((callee, iter(calls[callee])))


def _check_dataflow(graph, known, what):
    """Every node input and graph output is produced, nothing twice, and the nodes form no cycle."""
    produced = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in produced or out in known:
                raise ModelReadError(f"The tensor {out!r} in {what} is produced twice (by node {node.name!r} "
                                     f"({node.op_type}) and by another node, an input or an initializer).")
            produced[out] = i
    waiting, users = [0] * len(graph.node), {}
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if not name or name in known:
                continue
            if name not in produced:
                raise ModelReadError(f"Node {node.name!r} ({node.op_type}) in {what} reads the tensor {name!r}, "
                                     "which no node, graph input or initializer produces; the graph is broken.")
            waiting[i] += 1
            users.setdefault(produced[name], []).append(i)
    for out in graph.output:
        if out.name not in produced and out.name not in known:
            raise ModelReadError(f"The graph output {out.name!r} in {what} is not produced by any node, graph input "
                                 "or initializer; the graph is broken.")
    ready = [i for i, n in enumerate(waiting) if n == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for j in users.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if done < len(graph.node):
        stuck = [f"{graph.node[i].name!r} ({graph.node[i].op_type})" for i, n in enumerate(waiting) if n][:4]
        raise ModelReadError(f"The nodes of the ONNX graph in {what} form a cycle (among {', '.join(stuck)}); "
                             "a model's graph must be acyclic.")


def _check_shape_constants(graph, onnx):
    """A small constant that a node turns into a tensor's shape (or repeat counts) stays under the limit."""
    from onnx import numpy_helper

    small = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None and node.output:
                small[node.output[0]] = value
    for node in graph.node:
        index = _SHAPE_INPUTS.get(node.op_type)
        if index is None or node.domain not in ("", "ai.onnx") or len(node.input) <= index:
            continue
        tensor = small.get(node.input[index])
        if tensor is None or tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        values = numpy_helper.to_array(tensor).reshape(-1)
        if values.size > MAX_RANK:
            continue
        shape = tuple(int(v) for v in values)
        nbytes = math.prod(v for v in shape if v > 0) * 4
        if nbytes > MAX_TENSOR_BYTES:
            raise _limit_error(f"Node {node.name!r} ({node.op_type})", shape, nbytes)


def check_graph(structure, weight_names, onnx, what):
    """Refuse an unsafe or broken model structure (see the module docstring) before anything is allocated.

    ``weight_names`` are initializers kept out of ``structure`` (their tensors are checked by the caller)."""
    _walk(structure, what, onnx)
    _check_functions(structure, what)
    graph = structure.graph
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | set(weight_names)
    _check_dataflow(graph, known, what)
    _check_shape_constants(graph, onnx)
