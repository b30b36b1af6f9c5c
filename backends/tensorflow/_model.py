"""What the Keras backend reads off a model: its layout, its input shape, its outputs."""
from __future__ import annotations


import numpy as np

from convscope._outputs import OUTPUTS, output_options as _output_options
from convscope._validate import check_int, check_name, describe, param_error

__all__ = ["channels_last", "declared_input_shape", "check_input_shape", "pick_output", "output_options", "OUTPUTS"]



def output_options(output, select, output_names=()):
    """(output, select) from ``load``'s options (:func:`convscope._outputs.output_options`)."""
    return _output_options(output, select, names=output_names)[:2]


def channels_last(model, keras) -> bool:
    """The layout of the model's maps: its first layer with a ``data_format`` says, else Keras's default."""
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "data_format", None) in ("channels_last", "channels_first"):
            return layer.data_format == "channels_last"
    return keras.config.image_data_format() == "channels_last"


def declared_input_shape(model):
    """The model's input shape without the batch axis, in its own layout, or None when unknown.

    Functional and built Sequential models declare it; a subclassed model that has been
    built or called keeps the shape of its build."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        if len(inputs) != 1:
            raise TypeError(f"convscope explains models with one image input; this model has {len(inputs)} inputs.")
        shape = tuple(inputs[0].shape[1:])
    else:
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        first = next(iter(shapes.values()), None)
        shape = tuple(first[1:]) if isinstance(first, (tuple, list)) and len(first) > 1 else None
    if shape is not None and len(shape) != 3:
        raise TypeError(f"convscope explains image models; this model's input has shape {(None, *shape)}, "
                        "not (N, H, W, C).")
    return shape


def check_input_shape(input_shape):
    """The ``input_shape`` option: None or (C, H, W), three positive ints."""
    if input_shape is None:
        return None
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in input_shape)):
        raise param_error("input_shape", "convscope.load", "(C, H, W), three positive ints", describe(input_shape))
    return tuple(int(v) for v in input_shape)


def pick_output(out, choice, output_names):
    """The scores to explain among a model's outputs: ``choice`` is the ``select`` option
    (None for a single output, else an index or a name from ``output_names`` or dict keys)."""
    if not isinstance(out, (list, tuple, dict)):
        if choice in (None, 0, *output_names[:1]):
            return out
        raise param_error("select", "convscope.load", "None, 0 or the name of this single-output model's output",
                          repr(choice))
    if choice is None:
        names = list(out) if isinstance(out, dict) else output_names or list(range(len(out)))
        raise TypeError(f"The model returns {len(out)} outputs ({', '.join(map(str, names))}); pass "
                        "select=<index or name> to convscope.load to pick the scores to explain.")
    keys = list(out) if isinstance(out, dict) else output_names
    if isinstance(choice, str):
        check_name(choice, keys, "select", "convscope.load", what="output")
        return out[choice] if isinstance(out, dict) else out[keys.index(choice)]
    index = check_int(choice, "select", "convscope.load", low=-len(out), high=len(out) - 1)
    return out[keys[index]] if isinstance(out, dict) else out[index]
