"""Reading an ONNX model into a weight-free graph and one NumPy copy of its weights.

A path or bytes is scanned in protobuf wire format: the graph structure is parsed as usual,
but each large initializer's ``raw_data`` is copied straight from the file into one NumPy
array and never enters a protobuf message. A file is read through a memory map whose
pages are released as they are copied, so a 550 MB model costs 550 MB, not the two or
three copies that ``onnx.load`` followed by a conversion would hold. Initializers
under :data:`INLINE_BYTES` stay in the graph, so that shape inference and the gradient
rules can read small constants (reshape targets, clip bounds).

The model is untrusted: :func:`~._limits.check_graph` checks its structure and every
tensor's size against its data before anything is allocated, and external data is read only
from the model's folder (:mod:`._external`).
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ._external import read_external
from ._limits import ModelReadError, check_graph, check_tensor

__all__ = ["read_model", "ModelReadError", "INLINE_BYTES"]

INLINE_BYTES = 1024
_CHUNK = 1 << 24

# field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data, ...
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW = 7, 5, 9


def _cap(text):
    return text[:1].upper() + text[1:]


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt


def _fields(buf, start, end):
    """Yield (field, wire_type, field_start, payload_start, field_end) for one message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Corrupt
        payload = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = _varint(buf, pos, end)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:
            raise _Corrupt
        if pos > end:
            raise _Truncated
        yield field, wire, field_start, payload, pos


def _scan(buf, size, onnx):
    """Split a serialized ModelProto into (structure proto, {name: (tensor proto, raw span)})."""
    model_parts, graph_parts, big = [], [], []
    graph_span = None
    for field, wire, fs, ps, fe in _fields(buf, 0, size):
        if field == _MODEL_GRAPH and wire == 2:
            graph_span = (ps, fe)
        else:
            model_parts.append(bytes(buf[fs:fe]))
    if graph_span is None:
        raise _Corrupt
    for field, wire, fs, ps, fe in _fields(buf, *graph_span):
        if field != _GRAPH_INITIALIZER or wire != 2:
            graph_parts.append(bytes(buf[fs:fe]))
            continue
        header, raw = [], None
        for tf, tw, tfs, tps, tfe in _fields(buf, ps, fe):
            if tf == _TENSOR_RAW and tw == 2:
                raw = (tps, tfe)
            else:
                header.append(bytes(buf[tfs:tfe]))
        if raw is not None and raw[1] - raw[0] >= INLINE_BYTES:
            big.append((b"".join(header), raw))
        else:
            graph_parts.append(bytes(buf[fs:fe]))
    model = onnx.ModelProto()
    model.ParseFromString(b"".join(model_parts))
    model.graph.ParseFromString(b"".join(graph_parts))
    tensors = []
    for header, raw in big:
        tensor = onnx.TensorProto()
        tensor.ParseFromString(header)
        tensors.append((tensor, raw))
    return model, tensors


def _copy_raw(buf, span, tensor, onnx):
    """One aligned NumPy array holding the bytes of ``span``."""
    dtype, _ = check_tensor(tensor, onnx, f"Initializer {tensor.name!r}", raw_bytes=span[1] - span[0])
    shape = tuple(tensor.dims)
    if dtype.itemsize * int(np.prod(shape, dtype=object)) != span[1] - span[0]:
        raise ModelReadError(f"Initializer {tensor.name!r} holds packed {dtype} raw data, which convscope does not "
                             "read from a file; the file is damaged or too new.")
    out = np.empty(shape, dtype)
    target = out.reshape(-1).view(np.uint8)
    for start in range(span[0], span[1], _CHUNK):  # copy in chunks, dropping each mapped chunk once read
        stop = min(start + _CHUNK, span[1])
        target[start - span[0]:stop - span[0]] = np.frombuffer(buf, np.uint8, stop - start, start)
        _release(buf, start, stop)
    return out


def _release(buf, start, stop):
    """Unmap the pages of a file mapping that were read, so they leave this process's resident set
    (they stay in the page cache); a no-op for bytes or where madvise is missing."""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        first = start - start % mmap.PAGESIZE
        last = stop - stop % mmap.PAGESIZE
        if last > first:
            buf.madvise(mmap.MADV_DONTNEED, first, last - first)


def _copy_fields(source, target, skip):
    """Copy every set field of ``source`` except ``skip`` into ``target`` (no weights touched)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _split_proto(model, onnx):
    """A ModelProto given by the user: copy its structure, convert big initializers once."""
    from onnx import numpy_helper

    structure = onnx.ModelProto()
    _copy_fields(model, structure, "graph")
    _copy_fields(model.graph, structure.graph, "initializer")
    big = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
           and t.ByteSize() >= INLINE_BYTES]
    for tensor in big:
        check_tensor(tensor, onnx, f"Initializer {tensor.name!r}")
    weights = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelReadError(f"Initializer {tensor.name!r} has external data that is not loaded; "
                                 "pass the model's path instead of the ModelProto.")
        if tensor.ByteSize() >= INLINE_BYTES:
            weights[tensor.name] = numpy_helper.to_array(tensor)
        else:
            structure.graph.initializer.append(tensor)
    return structure, weights


def read_model(model, onnx):
    """Return (weight-free ModelProto, {initializer name: array}) for a path, bytes or ModelProto."""
    if isinstance(model, onnx.ModelProto):
        what = "the ModelProto"
        _check_structure(model, what)
        check_graph(model, (), onnx, what)  # every initializer is still in the proto: all are checked
        structure, weights = _split_proto(model, onnx)
        return structure, weights
    base, what = None, "the given bytes"
    if isinstance(model, (bytes, bytearray, memoryview)):
        buf, size, closer = memoryview(model), len(model), None
    else:
        path = Path(os.fspath(model))
        if not path.is_file():
            raise FileNotFoundError(f"No ONNX file at {str(path)!r}.")
        base, what = path.parent, f"the file {str(path)!r}"
        size = path.stat().st_size
        if size == 0:
            raise ModelReadError(f"{_cap(what)} is empty: it is not an ONNX model.")
        with open(path, "rb") as f:
            closer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = closer
    try:
        try:
            structure, tensors = _scan(buf, size, onnx)
        except _Truncated:
            if size and buf[0] == 0x08:  # ModelProto starts with its ir_version (field 1, varint)
                raise ModelReadError(f"The ONNX model in {what} is truncated: it ends in the middle of a record "
                                     f"after {size} bytes. Copy or export the file again.") from None
            raise ModelReadError(f"{_cap(what)} is not an ONNX model: it does not parse as an onnx.ModelProto.") from None
        except ModelReadError:
            raise
        except Exception:  # _Corrupt, protobuf's DecodeError
            raise ModelReadError(f"{_cap(what)} is not an ONNX model: it does not parse as an onnx.ModelProto.") from None
        _check_structure(structure, what)
        check_graph(structure, [t.name for t, _ in tensors], onnx, what)
        weights = {}
        for tensor, span in tensors:
            weights[tensor.name] = _copy_raw(buf, span, tensor, onnx)
    finally:
        if closer is not None:
            closer.close()
    from onnx import numpy_helper

    for tensor in list(structure.graph.initializer):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            weights[tensor.name] = read_external(tensor, base, onnx)
        elif tensor.ByteSize() >= INLINE_BYTES:  # large, but stored as float_data rather than raw bytes
            weights[tensor.name] = numpy_helper.to_array(tensor)
        else:
            continue
        structure.graph.initializer.remove(tensor)
    return structure, weights


def _check_structure(structure, what):
    graph = structure.graph
    if structure.ir_version <= 0 or not len(graph.node) or not len(graph.output):
        raise ModelReadError(f"{_cap(what)} is not a usable ONNX model: it has ir_version {structure.ir_version}, "
                             f"{len(graph.node)} nodes and {len(graph.output)} outputs.")
