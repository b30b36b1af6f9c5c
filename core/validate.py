"""Input validators for backend and plugin authors: the project's one error template.

"The 'x' parameter of gradient must be a 4-d array (N, C, H, W). Got shape (3, 8) instead."

A backend on :class:`convscope.BackendBase` gets its images, names, seeds and rule checked
already; these are for what else it takes (``convscope.load`` options, ``weights(layer)``)
and for a backend that implements the bare :class:`convscope.Backend` protocol.
"""
from ._validate import (as_images, check_choice, check_finite, check_int, check_name, check_number, describe,
                        param_error)

__all__ = ["param_error", "describe", "as_images", "check_finite", "check_choice", "check_name", "check_int",
           "check_number"]
