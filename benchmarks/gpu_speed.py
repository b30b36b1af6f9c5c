"""GPU table: torch (the model on CUDA) and ONNX Runtime's CUDA provider side by side, against
Captum on the same GPU, ResNet-18 (random weights) at 224 x 224.

    python -m benchmarks.gpu_speed             # a few minutes where a GPU is present
    python -m benchmarks.gpu_speed --batch 16 --repeat 15
    python -m benchmarks.gpu_speed --device cpu --size 64 --batch 1 --repeat 1   # checks the script, no GPU

Rows: forward, saliency, Grad-CAM (layer4, upsampled), integrated gradients (32 steps,
Riemann midpoints), occlusion (32-pixel windows, stride 16, the image's mean colour), and
occlusion with ``incremental="auto"`` where convscope has it (plain occlusion where the model
has no incremental path). Columns: convscope on torch, Captum on the same module and GPU,
convscope on ONNX Runtime CUDA (the same weights exported), and the ratios torch / Captum and
ONNX / torch. Every call returns host NumPy arrays (Captum's
tensors are copied to the host too), so each side pays the same transfer. Times are medians of
interleaved calls after warm-up, all in this one run.

Where no GPU is present (torch sees no CUDA device, or ONNX Runtime lacks its CUDA provider),
the script prints the same table with the rows it could not measure marked unmeasured.
"""
from __future__ import annotations

import argparse
import inspect
import warnings

import numpy as np

from ._timing import machine, measure

ROWS = ("forward", "saliency", "grad_cam", "integrated_gradients", "occlusion", "occlusion (incremental)")
WINDOW, STRIDE, STEPS = (32, 32), (16, 16), 32


def _gpu_state():
    """(torch sees CUDA, ONNX Runtime has its CUDA provider, a line saying what was found)."""
    notes, torch_cuda, ort_cuda = [], False, False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if torch_cuda else "no CUDA device"
        notes.append(f"torch {torch.__version__}: {name}")
    except ImportError:
        notes.append("torch not installed")
    try:
        import onnxruntime as ort

        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        notes.append(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
    except ImportError:
        notes.append("onnxruntime not installed")
    return torch_cuda, ort_cuda, "; ".join(notes)


def _convscope_calls(backend, x, target, layer):
    from convscope import attribution

    incremental = "incremental" in inspect.signature(attribution.occlusion).parameters
    plain = {"incremental": False} if incremental else {}  # the whole network per occluded image
    calls = {"forward": lambda: backend.forward(x),
             "saliency": lambda: attribution.saliency(backend, x, target),
             "grad_cam": lambda: attribution.grad_cam(backend, x, target, layer=layer),
             "integrated_gradients": lambda: attribution.integrated_gradients(backend, x, target, steps=STEPS,
                                                                              batch_size=len(x) * STEPS),
             "occlusion": lambda: attribution.occlusion(backend, x, target, window=WINDOW, stride=STRIDE, fill="mean",
                                                        **plain)}
    if incremental:
        calls["occlusion (incremental)"] = lambda: attribution.occlusion(backend, x, target, window=WINDOW,
                                                                         stride=STRIDE, fill="mean", incremental="auto")
    return calls


def _captum_calls(model, x, target):
    import torch
    from captum import attr

    from convscope.app.bench_peers import captum_ready

    model = captum_ready(model)
    device = next(model.parameters()).device
    xt, tt = torch.from_numpy(x).to(device), torch.as_tensor(target, device=device)
    c = x.shape[1]

    def gradcam():
        maps = attr.LayerGradCam(model, model.layer4).attribute(xt, target=tt, relu_attributions=True)
        return attr.LayerAttribution.interpolate(maps, tuple(x.shape[2:]), "bilinear").detach().cpu().numpy()

    def forward():
        with torch.no_grad():
            return model(xt).cpu().numpy()

    return {"forward": forward,
            "saliency": lambda: attr.Saliency(model).attribute(
                xt.clone().requires_grad_(), target=tt).detach().cpu().numpy(),
            "grad_cam": gradcam,
            "integrated_gradients": lambda: attr.IntegratedGradients(model).attribute(
                xt, target=tt, n_steps=STEPS, method="riemann_middle", internal_batch_size=len(x) * STEPS,
                return_convergence_delta=True)[0].detach().cpu().numpy(),
            "occlusion": lambda: attr.Occlusion(model).attribute(
                xt, sliding_window_shapes=(c, *WINDOW), strides=(c, *STRIDE),
                baselines=xt.mean(dim=(2, 3), keepdim=True), target=tt,
                perturbations_per_eval=max(1, 32 // len(x))).detach().cpu().numpy()}


def measured(batch: int, repeat: int, device: str = "cuda", size: int = 224) -> dict:
    """{row: {column: seconds}} for what this machine can run; empty columns where it cannot.
    ``device="cpu"`` runs the same calls on the CPU (to check the script where no GPU is)."""
    torch_cuda, ort_cuda, _ = _gpu_state()
    if device == "cpu":
        torch_cuda = ort_cuda = True
    times = {row: {} for row in ROWS}
    if not (torch_cuda or ort_cuda):
        return times
    import torch

    import convscope

    from .models import resnet18
    from .onnx_speed import _export

    net = resnet18()
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    target = np.arange(batch) % 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _export(net, size=size)
    columns = {}
    if torch_cuda:
        net = net.to(device)
        columns["torch"] = _convscope_calls(convscope.load(net, device=device), x, target, "layer4")
        try:
            columns["Captum"] = _captum_calls(net, x, target)
        except ImportError:
            pass
    if ort_cuda:
        backend = convscope.load(data, providers=[device])
        if backend.providers[0] == ("CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"):
            layer = next(r.name for r in reversed(backend.layers()) if r.kind == "relu" and r.spatial)
            columns["ONNX CUDA"] = _convscope_calls(backend, x, target, layer)
    for row in ROWS:
        calls = {col: c[row] for col, c in columns.items() if row in c}
        if calls:
            times[row] = measure(calls, repeat=repeat, warmup=2)
            if device == "cuda" and torch.cuda.is_available():
                torch.cuda.synchronize()
    return times


def table(times: dict, batch: int, device: str = "cuda", size: int = 224) -> str:
    torch_cuda, ort_cuda, found = _gpu_state()
    if device == "cpu":
        torch_cuda = ort_cuda = True
        found = "run on the CPU (--device cpu), to check the script: not GPU figures"
    lines = [f"ResNet-18 (random weights), {size} x {size}, batch {batch}; occlusion window 32, stride 16; IG {STEPS} "
             f"steps in one call. Found: {found}.", "",
             "| case | convscope torch ms | Captum ms | convscope ONNX CUDA ms | torch / Captum | ONNX / torch |",
             "|---|---:|---:|---:|---:|---:|"]

    def ms(row, col, why):
        value = times[row].get(col)
        return f"{value * 1e3:.1f}" if value is not None else why

    for row in ROWS:
        t = times[row]
        no_torch = "unmeasured (no CUDA device for torch)" if not torch_cuda else "n/a"
        no_ort = "unmeasured (no CUDA provider in onnxruntime)" if not ort_cuda else "n/a"
        r1 = f"{t['torch'] / t['Captum']:.2f}" if "torch" in t and "Captum" in t else ""
        r2 = f"{t['ONNX CUDA'] / t['torch']:.2f}" if "torch" in t and "ONNX CUDA" in t else ""
        lines.append(f"| {row} | {ms(row, 'torch', no_torch)} | {ms(row, 'Captum', no_torch)} | "
                     f"{ms(row, 'ONNX CUDA', no_ort)} | {r1} | {r2} |")
    if not (torch_cuda or ort_cuda):
        lines += ["", "No GPU here: the GPU rows are unmeasured."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved timed calls per case")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same calls on the CPU, to check the script where no GPU is")
    parser.add_argument("--size", type=int, default=224, help="image size (smaller for a quick check)")
    args = parser.parse_args(argv)
    print(table(measured(args.batch, args.repeat, args.device, args.size), args.batch, args.device, args.size))
    print(f"\n{machine()}")


if __name__ == "__main__":
    main()
