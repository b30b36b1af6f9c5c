"""Shapes and element types of every tensor, for one input size (C, H, W).

ONNX shape inference runs on the weight-free graph with the image input set to
(N, C, H, W), N symbolic unless the file fixes the batch. Tensors it leaves without a rank
or with an unknown axis (custom operators, data-dependent shapes) are measured by running
the model once on a zero batch: the ``probe`` callable receives their names and returns
arrays.
"""
from __future__ import annotations

__all__ = ["infer_shapes", "BATCH", "FLOAT"]

BATCH = "N"
FLOAT = 1  # onnx.TensorProto.FLOAT
_UNKNOWN = -1


def _doubtful(dims) -> bool:
    """A shape inference left open, or one whose batch symbol stands anywhere but on axis 0 or
    more than once (attention's stacked q, k, v: inference may give (N, T, N, D) for (3, T, N, D)):
    such tensors are measured instead."""
    if dims is None or _UNKNOWN in dims:
        return True
    batch_axes = [i for i, d in enumerate(dims) if d is None]
    return len(batch_axes) > 1 or (batch_axes and batch_axes[0] != 0)


def _read(value_info):
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param == BATCH:
            dims.append(None)
        else:
            dims.append(_UNKNOWN)
    return tuple(dims)


def infer_shapes(graph, chw, onnx, probe=None):
    """Return ({tensor: shape tuple with None on the batch axis}, {tensor: onnx elem type}).

    ``chw`` is the image size (C, H, W), or None when only the element types are wanted.
    Weights and constants are included; a tensor whose shape stays unknown is left out.
    """
    from onnx import helper

    proto = onnx.ModelProto()
    proto.CopyFrom(graph.proto)  # weight-free: small
    g = proto.graph
    del g.value_info[:]
    for out in g.output:  # a declared output shape may name the batch differently: re-infer it
        out.type.tensor_type.ClearField("shape")
    image = next(v for v in g.input if v.name == graph.image)
    if chw is not None:  # None: only the element types are wanted, keep the file's dims
        shape = image.type.tensor_type.shape
        shape.ClearField("dim")
        batch = shape.dim.add()
        if graph.fixed_batch:
            batch.dim_value = graph.fixed_batch
        else:
            batch.dim_param = BATCH
        for size in chw:
            shape.dim.add().dim_value = int(size)
    for name, w in graph.weights.items():
        g.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(w.dtype), w.shape))
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as err:  # an inconsistent graph: tell which size was asked
        raise ValueError(f"ONNX shape inference fails for an input of size {chw}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    shapes, dtypes = {}, {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.tensor_type.elem_type:
            dtypes[v.name] = v.type.tensor_type.elem_type
        dims = _read(v)
        if dims is not None:
            shapes[v.name] = dims
    for t in inferred.graph.initializer:
        shapes[t.name], dtypes[t.name] = tuple(t.dims), t.data_type
    for name, w in graph.weights.items():
        shapes[name] = tuple(w.shape)
    missing = [out for node in graph.nodes for out in node.output
               if out and dtypes.get(out, FLOAT) == FLOAT and _doubtful(shapes.get(out))]
    if missing and probe is not None and chw is not None:
        # Run the model for what inference left open. With a free batch, run it at two batch
        # sizes: the axes whose size follows the batch are the batch axes (axis 0 of most
        # tensors, axis 1 of attention's stacked (3, N, ...) q, k, v); every other size is fixed.
        first = probe(missing, chw, batch=2)
        second = probe(missing, chw, batch=3) if not graph.fixed_batch else first
        for name, a, b in zip(missing, first, second):
            shapes[name] = tuple(None if da != db else int(da) for da, db in zip(a.shape, b.shape)) \
                if a.ndim == b.ndim else tuple([None] + list(a.shape[1:]))
            dtypes.setdefault(name, FLOAT)
    shapes = {k: v for k, v in shapes.items() if _UNKNOWN not in v}
    return shapes, dtypes
