"""Shared fixtures. Backend tests skip cleanly when their framework is missing, except
where the full suite is required (CONVSCOPE_FULL_SUITE=1, set by .ci/run: see _full_suite.py);
``--backend NAME`` restricts a run to one backend's tests."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest_plugins = ["_full_suite"]  # in CI (CONVSCOPE_FULL_SUITE=1) a skip is a failure


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[],
                     help="run only the tests of this backend (torch, onnxruntime, tensorflow); repeatable")


def pytest_collection_modifyitems(config, items):
    chosen = config.getoption("--backend")
    if not chosen:
        return
    for item in items:
        marks = {m.args[0] for m in item.iter_markers("backend")}
        if marks and not marks & set(chosen):
            item.add_marker(pytest.mark.skip(reason=f"--backend {' '.join(chosen)} given"))


def pytest_configure(config):
    config.addinivalue_line("markers", "backend(name): test of one backend, selected with --backend")


@pytest.fixture(scope="session")
def demo_data():
    from convscope.data import shapes

    return shapes(16, seed=5)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
