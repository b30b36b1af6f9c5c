"""A pytest plugin: where the full suite is required (``CONVSCOPE_FULL_SUITE=1``, set by
``.ci/run``), a skipped test or module is a failure, so a broken install (a framework, a
peer library or the browser missing) cannot turn into skips and a green run. Skips asked for
on the command line (``--backend``) stay skips. Elsewhere the README's test command runs on
a machine without the extras, and their tests skip, saying why."""
import os

import pytest

VARIABLE = "CONVSCOPE_FULL_SUITE"


def _required() -> bool:
    return os.environ.get(VARIABLE, "") not in ("", "0")


def _reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail(report, where: str) -> None:
    reason = _reason(report)
    if "--backend" in reason:
        return
    report.outcome = "failed"
    report.longrepr = (f"{where} skipped, but {VARIABLE}=1 requires the full suite (install every extra, and the "
                       f"browser): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _required() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report, f"test {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _required() and report.skipped:
        _fail(report, f"module {collector.nodeid}")
