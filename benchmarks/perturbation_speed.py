"""Sampling and perturbation speed: convscope against its peers on the demo model (torch), every
ratio from one run.

    python -m benchmarks.perturbation_speed            # 4 images of 64 x 64
    python -m benchmarks.perturbation_speed --quick    # fewer repeats

Peers: Captum's NoiseTunnel(Saliency), FeatureAblation, ShapleyValueSampling, KernelShap and
Lime; shap's KernelExplainer and lime's LimeImageExplainer (one image at a time, as they work).
Each pair evaluates the same number of images (same features, samples, batch per call); RISE
has no peer and is compared with the raw batched forward of its masked images. Target: <= 1.0x
the peer on torch. Timings interleave the contenders (A, B, A, B, ...), median of the repeats.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from ._timing import machine, measure, report


def _cases(samples):
    import torch
    from captum import attr as captum

    import convscope
    from convscope import attribution as A

    torch.set_num_threads(1)
    model = convscope.data.demo_model("torch").eval()
    backend = convscope.load(model)
    data = convscope.data.shapes(4, seed=0)
    x, target = data.images, data.labels
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    grid = ((np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None] // 16).astype(np.int64)  # 16 features
    mask = torch.from_numpy(grid[None, None].copy())
    per = 16

    def raw_rise():
        masks = A.rise_masks(samples, (64, 64), seed=0)
        with torch.no_grad():
            for start in range(0, samples, per):
                images = (x[None] * masks[start:start + per, None, None]).reshape(-1, 3, 64, 64)
                model(torch.from_numpy(images))

    def shap_kernel():
        import shap

        for n in range(len(x)):
            def f(z, n=n):
                keep = z[:, grid].astype(bool)[:, None]
                with torch.no_grad():
                    return model(torch.from_numpy(np.where(keep, x[n][None], 0).astype(np.float32)))[:, target[n]].numpy()
            shap.KernelExplainer(f, np.zeros((1, 16))).shap_values(np.ones((1, 16)), nsamples=samples, silent=True,
                                                                   l1_reg=False)

    def lime_image():
        from lime.lime_image import LimeImageExplainer

        def classify(images):
            with torch.no_grad():
                return model(torch.from_numpy(np.moveaxis(images, -1, 1).astype(np.float32))).numpy()
        for n in range(len(x)):
            LimeImageExplainer(random_state=0).explain_instance(
                np.moveaxis(x[n], 0, -1).astype(np.float64), classify, labels=(int(target[n]),), top_labels=None,
                hide_color=0.0, num_samples=samples, batch_size=per * len(x), segmentation_fn=lambda image: grid,
                random_seed=0)

    nt = captum.NoiseTunnel(captum.Saliency(model))
    draws = np.random.default_rng(0).standard_normal((64, 3, 64, 64), dtype=np.float32)
    noisy = np.concatenate([x] * 16) + draws * np.float32(0.15)
    noisy_t, noisy_target = torch.from_numpy(noisy), np.tile(target, 16)
    return {
        "noise_tunnel (saliency, 16 draws)": (
            lambda: A.noise_tunnel(backend, x, target, samples=16, perturbations_per_eval=16),
            lambda: nt.attribute(xt, nt_type="smoothgrad", nt_samples=16, nt_samples_batch_size=16, stdevs=0.15,
                                 target=tt), "Captum NoiseTunnel"),
        # the tunnel's one backend call alone: the rest of its ratio is the noise it draws (Box-Muller,
        # convscope._noise) and its float64 sums; with a target given it makes no clean pass
        "saliency of the tunnel's 64 noisy images": (
            lambda: A.saliency(backend, noisy, noisy_target),
            lambda: captum.Saliency(model).attribute(noisy_t.clone().requires_grad_(),
                                                     target=torch.from_numpy(noisy_target)),
            "Captum Saliency"),
        "feature_ablation (16 features)": (
            lambda: A.feature_ablation(backend, x, target, features=grid, perturbations_per_eval=per),
            lambda: captum.FeatureAblation(model).attribute(xt, target=tt, feature_mask=mask,
                                                            perturbations_per_eval=per), "Captum FeatureAblation"),
        "shapley_sampling (16 features, 5 orders)": (
            lambda: A.shapley_sampling(backend, x, target, features=grid, samples=5, perturbations_per_eval=per),
            lambda: captum.ShapleyValueSampling(model).attribute(xt, target=tt, feature_mask=mask, n_samples=5,
                                                                 perturbations_per_eval=per),
            "Captum ShapleyValueSampling"),
        f"kernel_shap ({samples} coalitions)": (
            lambda: A.kernel_shap(backend, x, target, features=grid, samples=samples, perturbations_per_eval=per),
            lambda: [captum.KernelShap(model).attribute(xt[n:n + 1], target=int(target[n]), feature_mask=mask,
                                                        n_samples=samples, perturbations_per_eval=per * 4)
                     for n in range(len(x))], "Captum KernelShap"),
        f"kernel_shap ({samples} coalitions) vs shap": (
            lambda: A.kernel_shap(backend, x, target, features=grid, samples=samples, perturbations_per_eval=per),
            shap_kernel, "shap KernelExplainer"),
        f"lime ({samples} samples)": (
            lambda: A.lime(backend, x, target, features=grid, samples=samples, perturbations_per_eval=per),
            lambda: [captum.Lime(model).attribute(xt[n:n + 1], target=int(target[n]), feature_mask=mask,
                                                  n_samples=samples, perturbations_per_eval=per * 4)
                     for n in range(len(x))], "Captum Lime"),
        f"lime ({samples} samples) vs lime": (
            lambda: A.lime(backend, x, target, features=grid, samples=samples, perturbations_per_eval=per),
            lime_image, "lime LimeImageExplainer"),
        f"rise ({samples} masks)": (
            lambda: A.rise(backend, x, target, masks=samples, batch_size=per * len(x)), raw_rise,
            "raw batched forward of the masked images"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    repeat = 3 if args.quick else 7
    rows = []
    for label, (ours, peer, name) in _cases(256).items():
        times = measure({"ours": ours, "peer": peer}, repeat=repeat, warmup=1)
        rows.append((f"{label} vs {name}", times["ours"], times["peer"], 1.0))
    print(f"machine: {machine()}, one thread\n")
    print(report("Sampling and perturbation on the demo model (4 images of 64 x 64, torch)", rows))


if __name__ == "__main__":
    main()
