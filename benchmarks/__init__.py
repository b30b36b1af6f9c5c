"""Speed and memory benchmarks: each prints ratios measured in one run."""
