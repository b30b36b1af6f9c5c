"""Which TensorFlow device a Keras backend runs its passes on (``device=``)."""
from __future__ import annotations

from convscope._validate import describe, param_error

__all__ = ["tf_device", "placed"]


def tf_device(tf, device):
    """``device`` as TensorFlow names it ("/device:GPU:0"), checked against its logical devices."""
    if device is None:
        return None
    listed = [d.name for d in tf.config.list_logical_devices()]
    expected = f"a device TensorFlow lists: {', '.join(listed)} (or cpu, gpu, cuda, cuda:1 for short)"
    if not isinstance(device, str):
        raise param_error("device", "convscope.load", expected, describe(device), TypeError)
    short = device.strip().lower()
    kind, _, index = short.partition(":")
    if kind in ("cpu", "gpu", "cuda") and (not index or index.isdigit()):
        spec = f"/device:{'CPU' if kind == 'cpu' else 'GPU'}:{index or 0}"
    else:
        spec = device
    try:
        parsed = tf.DeviceSpec.from_string(spec)
    except (ValueError, TypeError):
        raise param_error("device", "convscope.load", expected, repr(device)) from None
    for name in listed:
        have = tf.DeviceSpec.from_string(name)
        if parsed.device_type and (have.device_type, have.device_index) == (parsed.device_type.upper(),
                                                                           parsed.device_index or 0):
            return name
    raise param_error("device", "convscope.load", expected, repr(device))


def placed(tf, device, body):
    """``body`` run under ``tf.device(device)``: traced, its operations carry the device."""
    def on_device(*args):
        with tf.device(device):
            return body(*args)
    return on_device
