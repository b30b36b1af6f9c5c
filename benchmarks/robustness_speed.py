"""Robustness and axiomatic metrics: convscope against Quantus 0.6 on the same torch model,
method, maps and noise, in one run.

    python -m benchmarks.robustness_speed            # demo model, 16 images
    python -m benchmarks.robustness_speed --quick    # 8 images, fewer repeats

Both sides get the same draws (Quantus through its ``perturb_func``) and must give the same
scores (the largest difference is printed). Quantus explains one draw of the batch per call
and runs the model once per replaced feature; convscope stacks the perturbed copies of several
draws and images into each call. Non-sensitivity runs on a one-channel net, where Quantus's
features (channel values) and convscope's (pixels) are the same. Target: ratio <= 0.5.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from convscope.app.bench import best_of

from ._timing import machine, report


def _draws(seed, radius):
    state = {"k": 0}

    def perturb(arr, indices, **_):
        noise = np.random.default_rng([seed, state["k"]]).uniform(-radius, radius, arr.shape)
        state["k"] += 1
        out = arr.copy()
        out[:] = arr + noise
        return out
    return perturb, state


def _explain(model, inputs, targets, **_):
    import convscope

    return convscope.saliency(model, np.asarray(inputs, np.float32), np.asarray(targets)).maps[:, None]


def robustness_rows(model, x, y, samples, repeat):
    import quantus

    from convscope import metrics as M

    rows, diffs = [], {}
    per_image = {"normalise_axes": (1, 2, 3)}
    for name, cls, radius, options in [("max_sensitivity", quantus.MaxSensitivity, 0.02, {"normalise": True}),
                                       ("avg_sensitivity", quantus.AvgSensitivity, 0.02, {"normalise": True}),
                                       ("local_lipschitz_estimate", quantus.LocalLipschitzEstimate, 0.1,
                                        {"normalise": False})]:
        perturb, state = _draws(0, radius)
        q = cls(nr_samples=samples, normalise_func_kwargs=per_image, perturb_func=perturb, disable_warnings=True,
                **options)
        ours = getattr(M, name)

        def theirs():
            state["k"] = 0
            return np.array(q(model, x, y, None, explain_func=_explain, channel_first=True, batch_size=len(x)))

        def mine():
            return ours(model, x, "saliency", samples=samples, radius=radius, seed=0, **options).scores
        diffs[name] = float(np.abs(theirs() - mine()).max())
        got = best_of({"convscope": mine, "quantus": theirs}, repeat=repeat)
        rows.append((f"{name}, saliency, {samples} draws", got["convscope"], got["quantus"], 0.5))
    return rows, diffs


def axiomatic_rows(model, x, y, repeat):
    import quantus
    import torch

    import convscope
    from convscope import metrics as M

    rows, diffs = [], {}
    ig = convscope.integrated_gradients(model, x, y, steps=16)
    seen = []
    q = quantus.Completeness(normalise=False, perturb_baseline=0.0, disable_warnings=True,
                             output_func=lambda d: seen.append(d) or d)
    theirs = lambda: q(model, x, y, ig.attributions, channel_first=True, batch_size=len(x))  # noqa: E731
    mine = lambda: M.completeness(model, x, ig)  # noqa: E731
    theirs()
    diffs["completeness (f(x) - f(0))"] = float(np.abs(mine().info["difference"] - seen[-1]).max())
    got = best_of({"convscope": mine, "quantus": theirs}, repeat=repeat)
    rows.append(("completeness, integrated gradients' maps", got["convscope"], got["quantus"], 0.5))

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 4)).eval()
    yy = convscope.load(net).forward(x).argmax(axis=1)
    q = quantus.InputInvariance(input_shift=-1, disable_warnings=True,
                                perturb_func=lambda arr, input_shift, **_: arr + input_shift)
    theirs = lambda: np.array(q(net, x, yy, None, explain_func=_explain, channel_first=True,  # noqa: E731
                                batch_size=len(x)), np.float64)
    mine = lambda: M.input_invariance(net, x, "saliency").scores  # noqa: E731
    diffs["input_invariance"] = float(np.abs(theirs() - mine()).max())
    got = best_of({"convscope": mine, "quantus": theirs}, repeat=repeat)
    rows.append(("input_invariance, saliency, unpadded conv net", got["convscope"], got["quantus"], 0.5))

    torch.manual_seed(2)
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 15 * 15, 4)).eval()
    g = x[:, :1, :32, :32].copy()
    sal = convscope.saliency(gray, g)
    q = quantus.NonSensitivity(abs=True, normalise=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
                               perturb_baseline=0.0, features_in_step=1, disable_warnings=True)
    theirs = lambda: np.array(q(gray, g, sal.target, sal.maps[:, None], channel_first=True,  # noqa: E731
                                softmax=False, batch_size=len(g)), np.float64)
    mine = lambda: M.non_sensitivity(gray, g, sal, fill=0.0).scores  # noqa: E731
    diffs["non_sensitivity"] = float(np.abs(theirs() - mine()).max())
    got = best_of({"convscope": mine, "quantus": theirs}, repeat=max(1, repeat // 2))
    rows.append(("non_sensitivity, saliency, 1 x 32 x 32 net, every pixel", got["convscope"], got["quantus"], 0.5))
    return rows, diffs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 images, fewer repeats")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    import convscope

    n, repeat = (8, 2) if args.quick else (16, 3)
    model = convscope.data.demo_model("torch")
    x = convscope.data.shapes(n, seed=0).images.astype(np.float32)
    y = convscope.load(model).forward(x).argmax(axis=1)
    print(f"# robustness and axiomatic metrics vs Quantus ({machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)\n")
    rows, diffs = robustness_rows(model, x, y, 10, repeat)
    more, more_diffs = axiomatic_rows(model, x, y, repeat)
    print(report(f"Demo model, 64 x 64, batch {n} (best of {repeat} interleaved calls)", rows + more))
    print("\nLargest score difference, convscope vs Quantus: "
          + ", ".join(f"{k} {v:.1e}" for k, v in {**diffs, **more_diffs}.items()))


if __name__ == "__main__":
    main()
