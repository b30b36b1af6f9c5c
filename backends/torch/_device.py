"""Where a torch module runs: its own device, checked against the ``device=`` asked for."""
from __future__ import annotations

from convscope._validate import param_error

__all__ = ["checked_device", "device_ceiling"]


def checked_device(torch, device, held):
    """The device the module runs on: ``held``'s (a parameter or buffer), checked against
    ``device`` when one is given; a device that does not exist here raises."""
    if device is None:
        return held.device if held is not None else torch.device("cpu")
    try:
        asked = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise param_error("device", "convscope.load", "a torch device such as 'cpu', 'cuda' or 'cuda:1'",
                          repr(device)) from None
    count = {"cuda": torch.cuda.device_count, "mps": lambda: int(torch.backends.mps.is_available()),
             "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0}.get(asked.type)
    if count is not None and (asked.index or 0) >= count():
        n = count()
        have = ", ".join(f"{asked.type}:{i}" for i in range(n)) if n else f"no {asked.type} device"
        raise param_error("device", "convscope.load", f"a device this machine has ({have}; torch "
                          f"{torch.__version__})", repr(str(device)))
    if asked.type == "cuda" and asked.index is None:
        asked = torch.device("cuda", torch.cuda.current_device())
    if held is not None and held.device != asked:
        raise param_error("device", "convscope.load", f"the device the model is on, {held.device} (convscope "
                          f"never moves a model: call model.to({str(asked)!r}) first)", repr(str(device)))
    return asked


def device_ceiling(torch, device, dtype, records_at, chw):
    """Images of ``chw`` per call that fit in the free memory of a CUDA ``device``
    (:func:`convscope._batching.memory_ceiling` over :func:`~convscope._batching.bytes_per_image`
    of the layer records a probe at that size finds); None on any other device, where the
    pixel rule alone sizes batches."""
    if device.type != "cuda":
        return None
    from convscope._batching import bytes_per_image, memory_ceiling

    free, _ = torch.cuda.mem_get_info(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shapes = [r.shape for r in records_at(chw)]
    return memory_ceiling(free, bytes_per_image(shapes, chw[1:], chw[1], chw[2], itemsize))
