"""Same seed, same results: bit for bit on CPU, whether earlier phases were trained or came from a cache."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import run_cfg
from tests.test_resume import TINY, comparable


@pytest.fixture
def deterministic_flags_restored():
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


def test_seeded_runs_are_identical_and_cached_phases_change_nothing(tmp_path, deterministic_flags_restored, superglue):
    args = [*TINY, f"data_dir={superglue}", "method=mpdistil", "method.curriculum_tasks=[]",
            "method.episode_length=3", "trainer.deterministic=true"]
    run_cfg(tmp_path / "a", *args)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    counted = run_cfg(tmp_path / "b", *args, "trainer.count_flops=true")  # counting FLOPs must not change a number
    assert comparable(tmp_path / "b") == comparable(tmp_path / "a")
    assert set(counted["flops"]) == set(counted["time"]) - {"data", "models", "total"}
    assert all(v > 0 for v in counted["flops"].values())

    # Teacher and student groups reused from a's cache: the curriculum after them draws the same random numbers.
    reused = run_cfg(tmp_path / "c", *args, cache_dir=tmp_path / "a" / "cache")
    assert all(reused["phases"][p]["cached"] for p in ("teacher", "undistilled", "distill", "meta_teacher"))
    assert comparable(tmp_path / "c") == comparable(tmp_path / "a")

    run_cfg(tmp_path / "d", *args, "seed=7")
    assert comparable(tmp_path / "d")["phases"] != comparable(tmp_path / "a")["phases"]  # the check can fail


def test_caching_frozen_teacher_outputs_is_invisible_in_results(tmp_path, deterministic_flags_restored, superglue):
    """Caching the frozen teacher's outputs must not change a number: the same seeded run with those outputs
    cached once per run and recomputed at every use gives identical metrics, histories and weights."""
    args = [*TINY, f"data_dir={superglue}", "method=mpdistil", "method.curriculum_tasks=[rte]",
            "method.episode_length=3", "trainer.deterministic=true", "trainer.reuse_cache=false"]
    run_cfg(tmp_path / "on", *args, "trainer.cache_teacher_outputs=true")
    run_cfg(tmp_path / "off", *args, "trainer.cache_teacher_outputs=false")
    assert comparable(tmp_path / "off") == comparable(tmp_path / "on")
