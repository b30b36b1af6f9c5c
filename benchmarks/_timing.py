"""Timing helpers shared by the benchmarks: interleaved repeats, medians, peak memory."""
from __future__ import annotations

import platform
import statistics
import time


def measure(candidates: dict, *, repeat: int = 15, warmup: int = 2) -> dict:
    """Median seconds per call of each zero-argument callable, timed interleaved
    (A, B, A, B, ...) so that drift on a shared machine hits all of them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(title: str, rows: list, targets: dict | None = None) -> str:
    """Format rows of (label, seconds_ours, seconds_reference, target_or_None) as a table."""
    lines = [f"## {title}", "", "| case | convscope ms | reference ms | ratio | target |", "|---|---|---|---|---|"]
    for label, ours, ref, target in rows:
        ratio = ours / ref
        flag = "" if target is None else (" ok" if ratio <= target else " MISSED")
        lines.append(f"| {label} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ratio:.2f} | "
                     f"{'' if target is None else f'<= {target:.2f}'}{flag} |")
    return "\n".join(lines)
