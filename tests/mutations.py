"""A mutation probe over the critical lines of the library: each mutation is one deliberate bug;
the test files that guard that line must catch it (fail). Run it by hand::

    python tests/mutations.py              # every mutation, one at a time
    python tests/mutations.py occlusion    # those whose name contains "occlusion"

It edits one file at a time in place, runs the named tests in a subprocess and restores the
file (also on Ctrl-C), then prints each mutation as caught or survived and the score. A
mutation whose text is not found is reported as stale: the line moved, update the list.
Not a pytest module (the name does not start with ``test_``): it takes minutes.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (name, file, the text, its mutation, the test files that must catch it)
MUTATIONS = [
    ("relu6 guided upper mask", "backends/torch/_rules.py", "grad = grad * ((out > 0) & (out < ctx.upper))",
     "grad = grad * (out > 0)", ["tests/test_torch_rectifiers.py"]),
    ("occlusion default stride", "core/attribution/occlusion.py", "(max(1, window[0] // 2), max(1, window[1] // 2))",
     "(window[0], window[1])", ["tests/test_references_by_hand.py"]),
    ("occlusion per-channel fill", "core/_imageops.py", "np.broadcast_to(values[None, :, None, None], x.shape)",
     "np.broadcast_to(values[None, ::-1, None, None], x.shape)", ["tests/test_references_by_hand.py"]),
    ("total variation horizontal term", "core/synthesis/regularizers.py", "    s = dx * dx + dy * dy + eps",
     "    s = dy * dy + eps", ["tests/test_references_by_hand.py", "tests/test_synthesis.py"]),
    ("insertion class on the start image", "core/metrics/curves.py",
     'clean = outputs[0] if kind == "deletion" else outputs[-1]', "clean = outputs[0]",
     ["tests/test_references_by_hand.py", "tests/test_metrics.py"]),
    ("deletion AUC trapezoid", "core/metrics/curves.py", "auc = ((scores[:, 1:] + scores[:, :-1]) / 2",
     "auc = ((scores[:, 1:] + scores[:, 1:]) / 2", ["tests/test_metrics.py"]),
    ("default target is the top class", "core/_targets.py", "classes = outputs.argmax(axis=1)",
     "classes = outputs.argmin(axis=1)", ["tests/test_attribution.py"]),
    ("Grad-CAM channel weights", "core/attribution/cam.py",
     'lambda p: p.grads.mean(axis=(2, 3)), "gradient", clip', 'lambda p: p.grads.max(axis=(2, 3)), "gradient", clip',
     ["tests/test_attribution_cam.py"]),
    ("integrated gradients quadrature", "core/attribution/gradients.py",
     "return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)",
     "return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / (steps + 1))", ["tests/test_attribution.py"]),
    ("squeeze-excitation gate ignored", "core/features/receptive_field.py",
     "branches = [p for p in parents if not _is_gate(by_name.get(p), grid)] or parents", "branches = parents",
     ["tests/test_receptive_field_records.py"]),
    ("default CAM layer on the data path", "core/_layers.py", "        if is_map(r):\n            return (\"tokens\"",
     "        if is_map(r) and False:\n            return (\"tokens\"", ["tests/test_cam_layers.py"]),
    ("preprocessing adjoint", "core/preprocess.py", "return np.ascontiguousarray(self._reorder(g * gain), dtype=np.float32)",
     "return np.ascontiguousarray(self._reorder(g), dtype=np.float32)", ["tests/test_preprocess.py"]),
    ("dissection IoU union", "core/dissection/dissect.py", "union = above[:, None] + mask_counts[None, :] - inter",
     "union = above[:, None] + mask_counts[None, :]", ["tests/test_dissection.py"]),
    ("pointing game peak", "core/metrics/pointing.py", "hits = 2 * on >= peak.sum(axis=1)",
     "hits = on >= peak.sum(axis=1)", ["tests/test_metrics.py"]),
    ("Adam relative epsilon", "core/synthesis/optim.py", "return (params + self.lr * m_hat / (root + floor))",
     "return (params + self.lr * m_hat / (root + floor + 1e-8))", ["tests/test_synthesis_scale.py"]),
    ("ONNX Sigmoid rule", "backends/onnxruntime/adjoint/rules_pointwise.py",
     'em.op("Mul", [y, em.op("Sub", [em.const(1.0), y])])', 'em.op("Mul", [y, em.op("Sub", [em.const(2.0), y])])',
     ["tests/test_onnx_graphs.py"]),
    ("final softmax kept by default", "core/_outputs.py", 'return output or "scores", select, select_param',
     'return output or "probabilities", select, select_param', ["tests/test_torch_output.py"]),
]


def _run(name, path, old, new, tests):
    file = ROOT / path
    text = file.read_text()
    if text.count(old) < 1:
        return "stale"
    file.write_text(text.replace(old, new, 1))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        return "caught" if done.returncode != 0 else "SURVIVED"
    except subprocess.TimeoutExpired:
        return "caught (timeout)"
    finally:
        file.write_text(text)


def main(argv) -> int:
    chosen = [m for m in MUTATIONS if not argv or any(a in m[0] for a in argv)]
    results = []
    for name, path, old, new, tests in chosen:
        start = time.perf_counter()
        outcome = _run(name, path, old, new, tests)
        results.append(outcome)
        print(f"{outcome:16} {name:40} {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    caught = sum(r.startswith("caught") for r in results)
    print(f"score: {caught} of {len(results)} mutations caught"
          f"{'' if caught == len(results) else '; ' + str(results.count('SURVIVED')) + ' survived'}"
          f"{'; ' + str(results.count('stale')) + ' stale' if 'stale' in results else ''}")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
