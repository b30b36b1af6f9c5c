"""The calls :mod:`convscope.app.bench` times for each method: convscope's and the floor's, with
every input of the floors made beforehand (outside the timed calls)."""
from __future__ import annotations

import numpy as np

__all__ = ["cases_for", "onehot"]


def onehot(target, k, repeat=1):
    seeds = np.zeros((len(target), k), np.float32)
    seeds[np.arange(len(target)), target] = 1
    return np.tile(seeds, (repeat, 1))


def cases_for(backend, floor, x, target, k, *, layer, steps, window, stride, per_eval, visualize_steps,
              incremental=None):
    """{method: (convscope call, floor call or None/False, what the floor computes)}; every input
    of the floors is made here, outside the timed calls."""
    from .. import attribution as A
    from ..synthesis import class_logit, visualize

    n = len(x)
    occlusion_options = {} if incremental is None else {"incremental": incremental}
    xn = floor.native(x) if floor else None
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps
    path = floor.native(np.concatenate([a * x for a in alphas])) if floor else None
    path_seeds = onehot(target, k, steps)
    batches = None
    if floor:
        from .bench_peers import occluded_batches
        batches = [floor.native(b) for b in occluded_batches(x, window, stride, per_eval)]
    one = onehot(target, k)
    x1, one1 = (floor.native(x[:1]), one[:1]) if floor else (None, None)
    images = sum(len(b) for b in batches) if batches else 0
    at_layer = bool(floor) and layer is not None and floor.supports(layer)
    cases = {
        "activations": (lambda: backend.activations(x, [layer]),
                        at_layer and (lambda: floor.layer(xn, layer)), f"forward to {layer!r}"),
        "saliency": (lambda: A.saliency(backend, x, target), floor and (lambda: floor.input_grad(xn, one)),
                     "one gradient at the input"),
        "guided_backprop": (lambda: A.guided_backprop(backend, x, target),
                            floor and (lambda: floor.input_grad(xn, one)),
                            "one gradient at the input, plain ReLU rule (the framework has no other)"),
        "integrated_gradients": (
            lambda: A.integrated_gradients(backend, x, target, steps=steps, batch_size=n * steps),
            floor and (lambda: floor.input_grad(path, path_seeds)),
            f"one gradient of the {n * steps} path images"),
        "occlusion": (lambda: A.occlusion(backend, x, target, window=window, stride=stride,
                                          perturbations_per_eval=per_eval, **occlusion_options),
                      floor and (lambda: [floor.forward(b) for b in batches]),
                      f"forward of the same {images} occluded and clean images, same batches"),
        "grad_cam": (lambda: A.grad_cam(backend, x, target, layer=layer),
                     at_layer and (lambda: floor.layer_grad(xn, layer, one)), f"one gradient at {layer!r}"),
        "visualize": (lambda: visualize(backend, class_logit(int(target[0])), steps=visualize_steps, size=x.shape[2:],
                                        progress=False),
                      floor and (lambda: [floor.input_grad(x1, one1) for _ in range(visualize_steps)]),
                      "one gradient of one image at the input, per step"),
    }
    return cases
