"""tests/conftest.py: a skip fails the run (bar a gpu test without CUDA); shared_data tests are opt-in."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from tests.conftest import GPU_SKIP_REASON
from tests.helpers import REPO

SAMPLE = '''
import pytest


def test_passes():
    pass


def test_skips():
    pytest.skip("x")


@pytest.mark.skipif(True, reason="a condition")
def test_skipif():
    pass


def test_importorskip():
    pytest.importorskip("no_such_module_anywhere")


@pytest.fixture
def skipping_fixture():
    pytest.skip("from a fixture")


def test_fixture_skips(skipping_fixture):
    pass


@pytest.mark.gpu
def test_gpu():
    import torch

    assert torch.cuda.is_available()


@pytest.mark.shared_data
def test_shared():
    pass
'''


def run_pytest(path: Path, *args: str, shared: str = "/nonexistent-shared-data") -> tuple[subprocess.CompletedProcess,
                                                                                          dict[str, str]]:
    """pytest on one file outside tests/, with this repo's conftest loaded as a plugin and its pytest settings;
    the run and each test's outcome (passed, failed, error, skipped) from its JUnit XML report."""
    env = {**os.environ, "MPDISTIL_SHARED_DATA": shared}
    report = path.parent / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(REPO / "pyproject.toml"),
                           "--rootdir", str(path.parent), "-p", "no:cacheprovider", "-rA", f"--junitxml={report}",
                           str(path), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[case.get("name")] = kinds[0] if kinds else "passed"
    return proc, found


def test_a_skip_fails_the_run_and_a_gpu_test_skips_only_without_cuda(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    proc, got = run_pytest(sample)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert got == {"test_passes": "passed", "test_skips": "failure", "test_skipif": "error",
                   "test_importorskip": "failure", "test_fixture_skips": "error",
                   "test_gpu": "passed" if torch.cuda.is_available() else "skipped"}, out
    assert "unexpected skip: x" in out and "unexpected skip: a condition" in out  # skipif acts at setup: an error
    assert "unexpected skip: could not import 'no_such_module_anywhere'" in out
    assert "unexpected skip: from a fixture" in out
    gpu_skip = rf"^SKIPPED \[1\] tests/conftest.py:\d+: {GPU_SKIP_REASON}$"
    assert torch.cuda.is_available() or re.search(gpu_skip, out, flags=re.M)
    assert "1 deselected" in out  # test_shared, without --shared-data


def test_a_gpu_test_skipped_for_another_reason_fails(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import pytest\n\n\n@pytest.mark.gpu\ndef test_gpu_other():\n    pytest.skip('not today')\n")
    proc, got = run_pytest(sample)
    if torch.cuda.is_available():
        assert proc.returncode == 1 and got == {"test_gpu_other": "failure"}, proc.stdout
        assert "unexpected skip: not today" in proc.stdout
    else:  # the setup hook skips it before the test body runs
        assert proc.returncode == 0 and got == {"test_gpu_other": "skipped"}, proc.stdout
        assert GPU_SKIP_REASON in proc.stdout


def test_a_module_skipped_at_collection_fails(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import pytest\n\npytest.importorskip('no_such_module_anywhere')\n\n\ndef test_x():\n    pass\n")
    proc, got = run_pytest(sample)
    assert proc.returncode != 0, proc.stdout
    assert list(got.values()) == ["error"], got
    assert "unexpected skip: could not import 'no_such_module_anywhere'" in proc.stdout
    assert "skipped" not in proc.stdout.splitlines()[-1]


def test_shared_data_tests_are_deselected_unless_asked_and_fail_without_the_folder(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import pytest\n\n\n@pytest.mark.shared_data\ndef test_shared():\n    pass\n\n\n"
                      "def test_plain():\n    pass\n")
    without, got = run_pytest(sample, shared=str(tmp_path))
    assert without.returncode == 0 and got == {"test_plain": "passed"}, without.stdout
    assert "1 deselected" in without.stdout
    there, got = run_pytest(sample, "--shared-data", shared=str(tmp_path))
    assert there.returncode == 0 and got == {"test_shared": "passed", "test_plain": "passed"}, there.stdout
    missing, got = run_pytest(sample, "-m", "shared_data", "--shared-data")
    assert missing.returncode == 1 and got == {"test_shared": "error"}, missing.stdout
    assert "--shared-data was given but the official files are not at /nonexistent-shared-data" in missing.stdout
    assert "MPDISTIL_SHARED_DATA=" in missing.stdout
