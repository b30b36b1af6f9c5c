"""The bad-image corpus against every public function that takes images, on every backend.

The functions are found from the families' ``__all__`` by their signature: a ``model`` first
and then images (``x``, ``images``, ``exemplar``, ``content``, ``style``). A new public
function is covered without anyone adding it here (a later ``x``, as in ``receptive_field(model,
layer, y, x)``, is a coordinate); one with a required argument this file
does not know how to fill fails, so that someone gives it a value below."""
import inspect

import numpy as np
import pytest

import convscope
from convscope.data import demo_model, demo_path

FAMILIES = (convscope.attribution, convscope.features, convscope.synthesis, convscope.metrics, convscope.dissection)
IMAGE_PARAMS = ("x", "images", "exemplar", "content", "style")
GOOD = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
#: values for the other required arguments, by name
FILL = {"layer": "relu3", "layers": ["relu3"], "maps": np.ones((2, 64, 64), np.float32), "style": GOOD[:1],
        "content": GOOD[:1], "exemplar": GOOD[:1], "images": GOOD, "x": GOOD, "method": "saliency",
        "baselines": GOOD[:1], "concept": "stripes", "target": 0}
BAD = {
    "rank": (np.ones((64, 64, 3, 1, 1), np.float32), ValueError),
    "channels": (np.ones((2, 2, 64, 64), np.float32), ValueError),
    "dtype": (np.ones((2, 3, 64, 64), np.int32), TypeError),
    "nan": (np.where(GOOD > 0.5, np.nan, GOOD).astype(np.float32), ValueError),
    "inf": (np.where(GOOD > 0.5, np.inf, GOOD).astype(np.float32), ValueError),
    "empty": (np.ones((0, 3, 64, 64), np.float32), ValueError),
    "not an array": ("photo.jpg", TypeError),
}


def image_functions():
    found = []
    for family in FAMILIES:
        for name in family.__all__:
            f = getattr(family, name)
            if not inspect.isfunction(f):
                continue
            params = list(inspect.signature(f).parameters.values())
            if len(params) < 2 or params[0].name != "model":
                continue
            images = [p.name for i, p in enumerate(params[1:], 1)  # images come second; 'x' later is a coordinate
                      if p.name in IMAGE_PARAMS and (i == 1 or p.name != "x")]
            if images:
                found += [(f"{family.__name__.split('.')[-1]}.{name}", f, p) for p in images]
    return found


FUNCTIONS = image_functions()


def test_the_corpus_reaches_the_image_functions():
    names = {n for n, _, _ in FUNCTIONS}
    assert {"attribution.saliency", "attribution.occlusion", "synthesis.deepdream", "synthesis.fool",
            "metrics.deletion", "features.activation_maps", "synthesis.style_transfer"} <= names
    assert len(FUNCTIONS) >= 20


@pytest.fixture(scope="module", params=["torch", "onnx", "keras"])
def backend(request):
    pytest.importorskip({"torch": "torch", "onnx": "onnxruntime", "keras": "tensorflow"}[request.param])
    model = demo_model("torch") if request.param == "torch" else str(demo_path(request.param))
    return convscope.load(model)


def _call(f, backend, image_param, value):
    kwargs = {}
    for p in list(inspect.signature(f).parameters.values())[1:]:
        if p.name == image_param:
            kwargs[p.name] = value
        elif p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if p.name == "objective":
                kwargs[p.name] = convscope.synthesis.channel("relu3", 0)
            elif p.name in FILL:
                kwargs[p.name] = FILL[p.name]
            else:
                raise AssertionError(f"{f.__name__} has a required argument {p.name!r}: give it a value in FILL")
    if "progress" in inspect.signature(f).parameters:
        kwargs["progress"] = False
    return f(backend, **kwargs)


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("name, f, image_param", FUNCTIONS, ids=[f"{n}:{p}" for n, _, p in FUNCTIONS])
def test_bad_images_are_refused_naming_the_argument(backend, name, f, image_param, case):
    value, error = BAD[case]
    with pytest.raises(error) as raised:
        _call(f, backend, image_param, value)
    message = str(raised.value)
    assert f"'{image_param}' parameter of" in message, message
    assert message.count("\n") == 0 and "Traceback" not in message


def _with_param(name):
    return [(n, f, p) for n, f, p in FUNCTIONS if p == "x" and name in inspect.signature(f).parameters]


@pytest.mark.parametrize("name, f, image_param", _with_param("layer"), ids=[n for n, _, _ in _with_param("layer")])
def test_an_unknown_layer_is_refused_with_close_matches(backend, name, f, image_param):
    FILL_LAYER = dict(FILL, layer="relu9")
    with pytest.raises(ValueError, match=r"'layer' parameter of .* must be a known layer name\. Got 'relu9' instead; "
                                         r"closest: relu"):
        f(backend, GOOD, **{k: v for k, v in FILL_LAYER.items()
                            if k == "layer" or (k == "concept" and k in inspect.signature(f).parameters)},
          **({"progress": False} if "progress" in inspect.signature(f).parameters else {}))


@pytest.mark.parametrize("name, f, image_param", _with_param("target"), ids=[n for n, _, _ in _with_param("target")])
def test_a_target_out_of_range_is_refused(backend, name, f, image_param):
    extra = {k: FILL[k] for k, p in inspect.signature(f).parameters.items()
             if k in ("maps", "baselines", "concept") or (k == "method" and p.default is inspect.Parameter.empty)}
    if "progress" in inspect.signature(f).parameters:
        extra["progress"] = False
    if name == "attribution.eigen_cam":  # class-agnostic: a target is ignored, and it says so
        with pytest.warns(RuntimeWarning, match="eigen_cam is class-agnostic"):
            f(backend, GOOD, target=4, **extra)
        return
    with pytest.raises(ValueError, match=r"'target' parameter of .* must be .*(\[0, 3\]|< 4)"):
        f(backend, GOOD, target=4, **extra)
