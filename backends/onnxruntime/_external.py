"""Weights stored beside the model (``onnx.save_model(..., save_as_external_data=True)``).

A model file names each external tensor's file by a ``location`` relative to the model's
folder, with an ``offset`` and ``length`` in it. The file is untrusted, so, as ``onnx``
itself does since CVE-2024-27318 and CVE-2024-27319, a location is refused when it is
absolute, has a ``..`` component, or resolves (through symlinks) outside the model's
folder; when it is not a regular file; and when the offset and length do not fit in the
file or disagree with the tensor's dims. Every refusal is a :class:`ModelReadError` that
names the tensor, the location and why.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ._limits import _PACKED_BITS, ModelReadError, check_tensor

__all__ = ["read_external"]

_CHUNK = 1 << 24


def _refuse(tensor, location, why):
    return ModelReadError(f"Initializer {tensor.name!r} has its weights in the external file {location!r}, "
                          f"which convscope refuses: {why}.")


def _entry_int(tensor, info, key, location):
    text = info.get(key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise _refuse(tensor, location, f"its {key} {text!r} is not an integer") from None
    if value < 0:
        raise _refuse(tensor, location, f"its {key} {value} is negative")
    return value


def _confined(tensor, location, base: Path) -> Path:
    """The resolved path of ``location`` in ``base``, or a ModelReadError saying why not."""
    if not location:
        raise _refuse(tensor, location, "the location is empty")
    if "\0" in location:
        raise _refuse(tensor, location, "the location holds a NUL character")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or \
            PureWindowsPath(location).drive or location.startswith(("/", "\\")):
        raise _refuse(tensor, location, "it is an absolute path; external data must lie in the model's folder")
    if ".." in PureWindowsPath(location).parts or ".." in PurePosixPath(location).parts:
        raise _refuse(tensor, location, "it has a '..' component; external data must lie in the model's folder")
    folder = base.resolve()
    try:
        path = (folder / location).resolve(strict=True)
    except (OSError, RuntimeError) as err:  # missing, or a symlink loop
        raise _refuse(tensor, location, f"it cannot be opened in {str(folder)!r} "
                                        f"({getattr(err, 'strerror', None) or err})") from None
    if not path.is_relative_to(folder):
        raise _refuse(tensor, location, f"it resolves (through a symlink) to {str(path)!r}, outside the model's "
                                        f"folder {str(folder)!r}")
    return path


def read_external(tensor, base: Path | None, onnx):
    """The weights of an external initializer, read into one array after every check."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location")
    if base is None:
        raise ModelReadError(f"Initializer {tensor.name!r} is stored in an external file "
                             f"{location!r}; load the model from its path, not from bytes.")
    if location is None:
        raise ModelReadError(f"Initializer {tensor.name!r} is marked as external data but names no location; "
                             "the file is damaged.")
    dtype, nbytes = check_tensor(tensor, onnx, f"Initializer {tensor.name!r}")
    offset = _entry_int(tensor, info, "offset", location) or 0
    length = _entry_int(tensor, info, "length", location)
    if length is not None and length != nbytes:
        raise _refuse(tensor, location, f"its length {length} disagrees with the shape {tuple(tensor.dims)} of "
                                        f"{dtype}, which needs {nbytes} bytes")
    if tensor.data_type in _PACKED_BITS:
        raise _refuse(tensor, location, f"convscope does not read packed {dtype} tensors from external files")
    path = _confined(tensor, location, base)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _refuse(tensor, location, "it is not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise _refuse(tensor, location, f"it cannot be opened ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info_now = os.fstat(f.fileno())
        if not stat.S_ISREG(info_now.st_mode):  # replaced between the check and the open
            raise _refuse(tensor, location, "it is not a regular file")
        if offset + nbytes > info_now.st_size:
            raise _refuse(tensor, location, f"its offset {offset} and length {nbytes} reach beyond the end of the "
                                            f"file ({info_now.st_size} bytes)")
        out = np.empty(tuple(tensor.dims), dtype)
        target = out.reshape(-1).view(np.uint8)
        f.seek(offset)
        for start in range(0, nbytes, _CHUNK):
            view = memoryview(target[start:start + _CHUNK])
            if f.readinto(view) != len(view):
                raise _refuse(tensor, location, "the file ended while it was read")
    return out
