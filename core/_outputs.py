"""What a backend explains, and of which output: the ``output`` and ``select`` options of
``convscope.load``, read the same way by every backend.

``output="scores"`` (the default) explains the scores before a final softmax, which each
backend finds in its own way and leaves out (``backend.choices`` says so);
``output="probabilities"`` keeps it. ``select`` picks one output of a model that has several
(an index, a name or a key). The former spellings still work and warn once each: an
``output`` that names or indexes an output is ``select``; ONNX's ``probabilities=True`` is
``output="probabilities"``.
"""
from __future__ import annotations

import difflib

import numpy as np

from ._renamed import warn_once
from ._validate import describe, param_error

__all__ = ["OUTPUTS", "output_options"]

OUTPUTS = ("scores", "probabilities")


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def output_options(output, select, *, probabilities=None, names=()):
    """(output, select, the parameter to name in errors about the selection).

    ``names`` are the model's own output names: a string among them is a selection even when
    it looks like a misspelt "scores"."""
    select_param = "select"
    if output is not None and not isinstance(output, str) and not _is_index(output):
        raise param_error("output", "convscope.load", "one of 'scores', 'probabilities'", describe(output), TypeError)
    if output is not None and output not in OUTPUTS:
        close = difflib.get_close_matches(output, OUTPUTS, n=1, cutoff=0.6) if isinstance(output, str) else []
        if close and output not in names:
            raise ValueError(f"The 'output' parameter of convscope.load must be one of 'scores', 'probabilities'. "
                             f"Got {output!r} instead; closest: {close[0]}.")
        if select is not None:
            raise TypeError(f"convscope.load() got select={select!r} and output={output!r}, its deprecated "
                            "spelling; pass only select=.")
        warn_once("load output=", f"convscope.load(model, output={output!r}) to pick one of the model's outputs is "
                              f"deprecated; pass select={output!r} (output= now takes 'scores' or 'probabilities').")
        output, select, select_param = None, output, "output"
    if select is not None and not isinstance(select, str) and not _is_index(select):
        raise param_error("select", "convscope.load", "an output's index, name or key", describe(select), TypeError)
    if probabilities is not None:
        warn_once("load probabilities=", "convscope.load(model, probabilities=True) is deprecated; pass "
                                     "output='probabilities' (probabilities=False is output='scores').")
        if not isinstance(probabilities, (bool, np.bool_)):
            raise param_error("probabilities", "convscope.load", "True or False", repr(probabilities), TypeError)
        wanted = "probabilities" if probabilities else "scores"
        if output is not None and output != wanted:
            raise TypeError(f"convscope.load() got output={output!r} and probabilities={probabilities!r}, its "
                            "deprecated spelling; pass only output=.")
        output = wanted
    return output or "scores", select, select_param
