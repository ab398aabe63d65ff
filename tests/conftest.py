"""Shared settings: offline hub, the test fixtures, the official files behind --shared-data, no silent skips.

Tests read the synthetic files in ``tests/fixtures`` (``FIXTURES``), so they run on any fresh clone. Tests
marked ``shared_data`` check facts of the official files in ``$MPDISTIL_SHARED_DATA`` (default: ``shared/data``
beside the checkout): they are deselected unless pytest is given ``--shared-data``, and then fail if that folder
is missing. Tests marked ``gpu`` are skipped without a CUDA device; any other skip fails the run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n N`: N workers share the cores, one thread each (and their runs)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = Path(os.environ.get("MPDISTIL_SHARED_DATA") or REPO.parent / "shared" / "data")
GPU_SKIP_REASON = "GPU: no CUDA device"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine OpenMP barriers make each op slow."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def superglue() -> Path:
    """The fixture SuperGLUE folder (CB, COPA, RTE, WiC, WSC; no BoolQ)."""
    return FIXTURES / "superglue"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shared-data", action="store_true", default=False,
                     help="also run the tests marked shared_data, on the official files in ../shared/data "
                          "(or $MPDISTIL_SHARED_DATA)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --shared-data, tests marked shared_data are deselected (reported as such, never skipped)."""
    if config.getoption("--shared-data"):
        return
    kept = [item for item in items if item.get_closest_marker("shared_data") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("shared_data")])
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared_data") is not None and not SHARED_DATA.is_dir():
        pytest.fail(f"--shared-data was given but the official files are not at {SHARED_DATA}; put the shared "
                    f"data folder beside the checkout or set MPDISTIL_SHARED_DATA=<folder with glue/ and superglue/>",
                    pytrace=False)
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip(GPU_SKIP_REASON)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """A skip is a failure, except a gpu test's skip for want of a CUDA device (xfail is left as it is)."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if item.get_closest_marker("gpu") is not None and reason == GPU_SKIP_REASON:
        return
    report.outcome = "failed"
    report.longrepr = f"unexpected skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """A module skipped while it is collected (module-level skip, importorskip) fails the run too."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"unexpected skip: {_skip_reason(report)}"

