"""Attribution speed: convscope against Captum on the same torch model and input, and
occlusion against the backend's own raw batched forward of the same occluded images.

    python -m benchmarks.attribution_speed            # ResNet-18 at 224 and the demo model
    python -m benchmarks.attribution_speed --quick    # fewer repeats

Targets: convscope / Captum <= 1.0 per method on the torch backend; occlusion / raw forward
of the same images <= 1.10 (the overhead of making the images and reading the scores);
occlusion on the ONNX Runtime backend is compared with Captum's occlusion on torch.
Timings interleave the contenders call by call (A, B, A, B, ...) and keep each one's best
time: on a machine shared with other processes the minimum is the least disturbed estimate
of the work itself, and interleaving makes drift hit all contenders alike. Every ratio
printed comes from this one run.
"""
from __future__ import annotations

import argparse
import io
import warnings

import numpy as np

from convscope.app.bench_peers import captum_ready, occluded_batches
from convscope.app.bench import best_of

from ._timing import machine, report
from .models import resnet18


def _cases(model, x, target, *, layer, steps):
    """{label: (convscope call, Captum call)} for one torch model and input."""
    import torch
    from captum import attr as captum

    import convscope
    from convscope import attribution as A

    backend = convscope.load(model)
    xt = torch.from_numpy(x)
    tt = torch.as_tensor(target)
    module = dict(model.named_modules())[layer]
    ig_batch = len(x) * steps
    return {
        "saliency": (lambda: A.saliency(backend, x, target),
                     lambda: captum.Saliency(model).attribute(xt.clone().requires_grad_(), target=tt)),
        "guided_backprop": (lambda: A.guided_backprop(backend, x, target),
                            lambda: captum.GuidedBackprop(model).attribute(xt.clone().requires_grad_(), target=tt)),
        "integrated_gradients": (
            lambda: A.integrated_gradients(backend, x, target, steps=steps, batch_size=ig_batch,
                                           method="gausslegendre"),
            lambda: captum.IntegratedGradients(model).attribute(xt, target=tt, n_steps=steps,
                                                                internal_batch_size=ig_batch,
                                                                return_convergence_delta=True)),
        "grad_cam (upsampled)": (
            lambda: A.grad_cam(backend, x, target, layer=layer),
            lambda: captum.LayerAttribution.interpolate(
                captum.LayerGradCam(model, module).attribute(xt, target=tt, relu_attributions=True),
                tuple(x.shape[2:]), "bilinear")),
    }


def compare_with_captum(title, model, x, target, repeat, **options):
    """convscope against Captum, method by method (occlusion: see :func:`occlusion_floor`)."""
    rows = []
    for label, (ours, theirs) in _cases(model, x, target, **options).items():
        got = best_of({"convscope": ours, "captum": theirs}, repeat=repeat)
        rows.append((label, got["convscope"], got["captum"], 1.0))
    return report(title, rows)


def occlusion_floor(title, backend, x, target, repeat, *, window, stride, per_eval, captum_model=None,
                    defaults=True):
    """Occlusion against the raw batched forward of the same images; against Captum on torch
    when ``captum_model`` is given, with the same ``perturbations_per_eval`` and (``defaults``)
    each with its own default batching (Captum: one occluded copy per call)."""
    from convscope import attribution as A

    batches = occluded_batches(x, window, stride, per_eval)
    calls = {
        "convscope": lambda: A.occlusion(backend, x, target, window=window, stride=stride,
                                         perturbations_per_eval=per_eval),
        "raw forward": lambda: [backend.forward(b) for b in batches],
    }
    if captum_model is not None:
        import torch
        from captum import attr as captum

        xt = torch.from_numpy(x)
        calls["captum torch"] = lambda: captum.Occlusion(captum_model).attribute(
            xt, sliding_window_shapes=(x.shape[1], *window), strides=(x.shape[1], *stride),
            baselines=xt.mean(dim=(2, 3), keepdim=True), target=torch.as_tensor(target),
            perturbations_per_eval=per_eval)
        if defaults:
            calls["captum torch, its default"] = lambda: captum.Occlusion(captum_model).attribute(
                xt, sliding_window_shapes=(x.shape[1], *window), strides=(x.shape[1], *stride),
                baselines=xt.mean(dim=(2, 3), keepdim=True), target=torch.as_tensor(target))
            calls["convscope, its default"] = lambda: A.occlusion(backend, x, target, window=window, stride=stride)
    got = best_of(calls, repeat=repeat)
    rows = [(f"occlusion vs raw forward of the same {sum(len(b) for b in batches)} images",
             got["convscope"], got["raw forward"], 1.10)]
    if captum_model is not None:
        rows.append((f"occlusion vs Captum's occlusion on torch, both perturbations_per_eval={per_eval}",
                     got["convscope"], got["captum torch"], 1.0))
    if captum_model is not None and defaults:
        rows.append(("occlusion vs Captum's occlusion on torch, each with its default batching",
                     got["convscope, its default"], got["captum torch, its default"], 1.0))
    return report(title, rows)


def _onnx_backend(model, size):
    import torch

    import convscope

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buffer, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    return convscope.load(buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    import torch

    import convscope

    torch.manual_seed(0)
    fast, slow = (3, 2) if args.quick else (7, 5)
    print(f"# attribution speed ({machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")

    net = captum_ready(resnet18())
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    print(compare_with_captum("ResNet-18, 224 x 224, batch 1 (integrated gradients: 8 steps)",
                              net, x, np.array([207]), fast, layer="layer4", steps=8), "\n")
    occ = dict(window=(64, 64), stride=(32, 32), per_eval=4)
    print(occlusion_floor("Occlusion, torch backend, ResNet-18, batch 1, 64 px window, stride 32",
                          convscope.load(net), x, np.array([207]), slow, captum_model=net, **occ), "\n")
    try:
        onnx_backend = _onnx_backend(net, 224)
    except Exception as err:  # the ONNX backend or exporter is missing: say so, measure the rest
        print(f"(ONNX Runtime part skipped: {type(err).__name__}: {err})\n")
    else:
        print(occlusion_floor("Occlusion, ONNX Runtime backend, ResNet-18 exported from torch, batch 1", onnx_backend,
                              x, np.array([207]), slow, captum_model=net, defaults=False, **occ), "\n")

    demo = captum_ready(convscope.data.demo_model("torch"))
    data = convscope.data.shapes(16, seed=0)
    print(compare_with_captum("Demo model, 64 x 64, batch 16 (integrated gradients: 16 steps)",
                              demo, data.images, data.labels, 3 * fast, layer="relu4", steps=16), "\n")
    print(occlusion_floor("Occlusion, demo model, batch 16, 16 px window, stride 8", convscope.load(demo),
                          data.images, data.labels, slow, captum_model=demo, window=(16, 16), stride=(8, 8),
                          per_eval=4))


if __name__ == "__main__":
    main()
