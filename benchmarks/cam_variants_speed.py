"""CAM variants and TCAV: convscope against a written-out torch implementation in the style of
pytorch-grad-cam (forward hook for the activations, a tensor hook for the gradients, one
backward, the weights in NumPy, cv2-style bilinear resize), and TCAV against a plain torch loop
(forward for the activations, scikit-learn's SGDClassifier for the CAVs as the TCAV authors'
code, autograd for the gradients).

    python -m benchmarks.cam_variants_speed            # the demo model (batch 8) and ResNet-18 at 224 (batch 2)
    python -m benchmarks.cam_variants_speed --quick    # the demo model only, fewer repeats

Target: convscope / reference <= 1.0 on torch. Timings interleave the contenders (A, B, A, B)
and report medians; every ratio printed comes from this one run.
"""
from __future__ import annotations

import argparse

import numpy as np

from ._timing import machine, measure, report


def _hooked(model, module, x, classes):
    """pytorch-grad-cam's ActivationsAndGradients: (A, dS/dA) of ``module`` as NumPy arrays."""
    import torch

    store = {}

    def keep(m, i, o):
        store["a"] = o
        o.register_hook(lambda g: store.__setitem__("g", g))

    h = module.register_forward_hook(keep)
    try:
        out = model(torch.from_numpy(x))
        model.zero_grad()
        out[np.arange(len(x)), classes].sum().backward()
    finally:
        h.remove()
    return store["a"].detach().numpy(), store["g"].numpy()


def _resize(cam, size):
    import torch
    import torch.nn.functional as F
    return F.interpolate(torch.from_numpy(np.float32(cam))[:, None], size=size, mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def _reference_cam(weights_fn):
    def run(model, module, x, classes):
        a, g = _hooked(model, module, x, classes)
        w = weights_fn(a, g)
        cam = (w * a).sum(1) if w.ndim == 4 else np.einsum("nc,nchw->nhw", w, a)
        return _resize(np.maximum(cam, 0), x.shape[2:])
    return run


def _reference_ablation(model, module, x, classes, batch=64):
    """pytorch-grad-cam's AblationCAM: per image, the layer's output replaced by copies with one
    channel zeroed each, the network rerun on a batch of copies."""
    import torch

    a, _ = _hooked(model, module, x, classes)
    state = {}
    h = module.register_forward_hook(lambda m, i, o: state["out"] if "out" in state else None)
    try:
        with torch.no_grad():
            y = model(torch.from_numpy(x))[np.arange(len(x)), classes].numpy()
            c = a.shape[1]
            ablated = np.zeros((len(x), c), np.float32)
            for n in range(len(x)):
                for s in range(0, c, batch):
                    idx = np.arange(s, min(s + batch, c))
                    copies = torch.from_numpy(a[n]).repeat(len(idx), 1, 1, 1)
                    copies[np.arange(len(idx)), idx] = 0
                    state["out"] = copies
                    ablated[n, idx] = model(torch.from_numpy(x[n:n + 1]).repeat(len(idx), 1, 1, 1))[:, classes[n]].numpy()
                state.pop("out")
    finally:
        h.remove()
    w = (y[:, None] - ablated) / y[:, None]
    return _resize(np.maximum(np.einsum("nc,nchw->nhw", w, a), 0), x.shape[2:])


def _projection(wa):
    """pytorch-grad-cam's get_2d_projection, one image at a time."""
    out = []
    for a in wa:
        r = a.reshape(a.shape[0], -1).T
        r = r - r.mean(axis=0)
        _, _, vt = np.linalg.svd(r, full_matrices=True)
        out.append((r @ vt[0]).reshape(a.shape[1:]))
    return np.float32(out)


def _reference_eigen_grad(model, module, x, classes):
    a, g = _hooked(model, module, x, classes)
    return _resize(np.maximum(_projection(g * a), 0), x.shape[2:])


def _scale(m):
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))


def _reference_full_grad(model, x, classes):
    """pytorch-grad-cam's FullGrad: hooks on every conv and batch norm, the input gradient."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))
              and m.bias is not None]
    grads = {}

    def keep(mod, inputs, output):
        output.register_hook(lambda g: grads.__setitem__(mod, g))

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        xt = torch.from_numpy(x).requires_grad_()
        out = model(xt)
        model.zero_grad()
        out[np.arange(len(x)), classes].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    total = _scale(np.abs(xt.grad.numpy() * x)).sum(1)
    for m in layers:
        b = m.bias if isinstance(m, torch.nn.Conv2d) else m.bias - m.running_mean * m.weight / torch.sqrt(
            m.running_var + m.eps)
        bg = np.abs(b.detach().numpy()[None, :, None, None] * grads[m].numpy())
        n, c, h, w = bg.shape
        total += _resize(_scale(bg.reshape(n * c, h, w)), x.shape[2:]).reshape(n, c, *x.shape[2:]).sum(1)
    return _scale(total)


def cam_cases(model, x, layer):
    import torch

    import convscope
    from convscope import attribution as A

    backend = convscope.load(model)
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        classes = model(torch.from_numpy(x)).argmax(1).numpy()
    xgrad = lambda a, g: (g * a / (a.sum((2, 3), keepdims=True) + 1e-7)).sum((2, 3))
    return {
        "hires_cam": (lambda: A.hires_cam(backend, x, classes, layer=layer),
                      lambda: _reference_cam(lambda a, g: g)(model, module, x, classes)),
        "xgrad_cam": (lambda: A.xgrad_cam(backend, x, classes, layer=layer),
                      lambda: _reference_cam(xgrad)(model, module, x, classes)),
        "eigen_grad_cam": (lambda: A.eigen_grad_cam(backend, x, classes, layer=layer),
                           lambda: _reference_eigen_grad(model, module, x, classes)),
        "full_grad": (lambda: A.full_grad(backend, x, classes),
                      lambda: _reference_full_grad(model, x, classes)),
        "ablation_cam": (lambda: A.ablation_cam(backend, x, classes, layer=layer),
                         lambda: _reference_ablation(model, module, x, classes)),
    }


def tcav_case(model, layer, n=30, r=4):
    """convscope's tcav against a plain loop: torch activations, SGDClassifier CAVs, autograd."""
    import torch
    from sklearn.linear_model import SGDClassifier

    from convscope.data import shapes
    from convscope.features import concept_vectors as cv
    from convscope.features import tcav

    x = shapes(20, seed=1).images
    concept = cv.concept_examples("red", n)
    sets = [cv.random_examples(n, seed=i) for i in range(2 * r)]
    module = dict(model.named_modules())[layer]

    def acts(imgs):
        store = {}
        h = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        with torch.no_grad():
            model(torch.from_numpy(imgs))
        h.remove()
        return store["a"].reshape(len(imgs), -1).numpy()

    def plain():
        pos = acts(concept)
        feats = [acts(s) for s in sets]
        vs = []
        for i in range(r):
            for a in (pos, feats[r + i]):
                clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3).fit(
                    np.concatenate([a, feats[i]]), np.r_[np.ones(len(a)), np.zeros(len(feats[i]))])
                vs.append(clf.coef_[0] / np.linalg.norm(clf.coef_[0]))
        store = {}

        def keep(m, i, o):
            o.retain_grad()
            store["a"] = o

        h = module.register_forward_hook(keep)
        out = model(torch.from_numpy(x))
        out[:, 0].sum().backward()
        h.remove()
        g = store["a"].grad.reshape(len(x), -1).numpy()
        return (g @ np.stack(vs).T > 0).mean(0)

    return {"tcav (1 class)": (lambda: tcav(model, x, 0, concept=concept, layer=layer, random_concepts=r), plain)}


def main(argv=None):
    import torch

    from convscope.data import demo_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeat = 3 if args.quick else 7
    print(machine(), "| torch threads: 1")
    demo = demo_model("torch").eval()
    x = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)
    suites = [("demo model, batch 8, 64 x 64, relu4", cam_cases(demo, x, "relu4")),
              ("TCAV, demo model, relu3, 4 random sets", tcav_case(demo, "relu3"))]
    if not args.quick:
        from .models import resnet18
        net = resnet18().eval()
        x224 = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
        cases = cam_cases(net, x224, "layer4")
        cases.pop("ablation_cam")  # 512 model copies; reported on the demo model
        suites.append(("ResNet-18, batch 2, 224 x 224, layer4", cases))
    for title, cases in suites:
        times = measure({f"{k}|{side}": fn for k, (ours, ref) in cases.items()
                         for side, fn in (("ours", ours), ("ref", ref))}, repeat=repeat, warmup=1)
        rows = [(k, times[f"{k}|ours"], times[f"{k}|ref"], 1.0) for k in cases]
        print(report(title, rows))


if __name__ == "__main__":
    main()
