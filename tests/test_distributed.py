"""Several processes (torchrun, Gloo on CPU): the same numbers as one process with the same global batch, one
writer, resumption, and the refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from safetensors.torch import load_file

from mpdistil.distributed import World, launched_world_size
from tests.helpers import REPO, custom_task

# dropout off: with it each rank draws its own masks, and no two process counts could agree
NO_DROPOUT = ["+model.config_overrides.hidden_dropout_prob=0.0",
              "+model.config_overrides.attention_probs_dropout_prob=0.0"]
# long enough for the weights to move well beyond float noise
LEARN = ["method.teacher_epochs=2", "method.student_epochs=2", "method.teacher_lr=1e-3", "method.student_lr=1e-3"]
# Summing two ranks' gradients reorders float sums: parameters agree to ~1e-5 after a few Adam steps (Adam
# divides by the gradient's scale, so a tiny gradient's rounding moves a weight by up to a step). Metrics
# computed from the logits agree far closer.
WEIGHT_TOL, METRIC_TOL = 1e-4, 1e-5


def launch(run_dir: Path, cache: Path, *overrides: str, procs: int = 2, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """``main.py`` on ``procs`` processes through torchrun (one: plain python)."""
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*prefix, str(REPO / "main.py"), "debug=fast", f"hydra.run.dir={run_dir}", f"cache_dir={cache}",
           *NO_DROPOUT, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def floats(tree: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from floats(value, f"{path}/{key}")
    elif isinstance(tree, float):
        yield path, tree


def assert_same_numbers(one: Path, two: Path) -> None:
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    for section in ("agents", "fidelity"):
        va, vb = dict(floats(a[section])), dict(floats(b[section]))
        assert va.keys() == vb.keys()
        worst = max(abs(va[k] - vb[k]) for k in va)
        assert worst <= METRIC_TOL, (section, worst)
    wa, wb = (load_file(str(d / "student" / "model.safetensors")) for d in (one, two))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= WEIGHT_TOL


def test_shard_cuts_a_batch_into_contiguous_parts() -> None:
    batch = [10, 11, 12, 13, 14, 15, 16]
    parts = [World(rank, 3).shard(batch) for rank in range(3)]
    assert parts == [([10, 11, 12], 0, 3), ([13, 14], 3, 2), ([15, 16], 5, 2)]
    # a batch smaller than the world: the rank without examples reads one with weight 0
    assert World(1, 2).shard([7]) == ([7], 1, 0)
    assert World().shard(batch) == (batch, 0, 7)


def test_process_count_from_the_launcher_and_in_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "SUBMITIT_EXECUTOR", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("SLURM_NTASKS", "4")  # inside an allocation, a plain `python main.py` is one process
    assert launched_world_size() == 1
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # a job the submitit launcher started on 4 tasks
    assert launched_world_size() == 4
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's count wins
    assert launched_world_size() == 2
    assert World().identity_fields() == {} and World(1, 2).identity_fields() == {"world_size": 2}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return custom_task(tmp_path_factory.mktemp("task"))


@pytest.mark.parametrize("method", ["kd", "mpdistil"])
def test_two_processes_give_the_numbers_of_one(tmp_path: Path, task: list[str], method: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = [f"method={method}", *task, *LEARN, "trainer.batch_size=5"]  # parts of 3 and 2: unequal shares
    launch(tmp_path / "one", tmp_path / "cache1", *args, procs=1)
    launch(tmp_path / "two", tmp_path / "cache2", *args, env={"TMPDIR": str(scratch)})
    assert_same_numbers(tmp_path / "one", tmp_path / "two")
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["distributed"]["world_size"] == 2 and results["distributed"]["backend"] == "gloo"
    assert [r["rank"] for r in results["distributed"]["ranks"]] == [0, 1]
    # one writer: the run folder holds what a one-process run writes, and rank 1's folders are gone
    listing = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))  # noqa: E731
    assert listing(tmp_path / "two") == listing(tmp_path / "one")
    assert not [p for p in scratch.iterdir() if p.name.startswith("mpdistil-")]


def test_killed_run_resumes_and_refuses_another_world_size(tmp_path: Path, task: list[str]) -> None:
    args = ["method=kd", *task, *LEARN]
    launch(tmp_path / "whole", tmp_path / "cache1", *args)
    run_dir = tmp_path / "killed"
    killed = launch(run_dir, tmp_path / "cache2", *args, env={"MPDISTIL_KILL_AT": "distill:1:mid"}, check=False)
    assert killed.returncode != 0 and (run_dir / "checkpoint" / "meta.json").is_file()
    meta = (run_dir / "checkpoint" / "meta.json").read_text()

    refused = launch(run_dir, tmp_path / "cache2", *args, procs=1, check=False)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written by a run of 2 process(es), this one has 1" in errors[0]
    assert (run_dir / "checkpoint" / "meta.json").read_text() == meta  # nothing lost

    launch(run_dir, tmp_path / "cache2", *args)
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", run_dir))
    assert a["agents"] == b["agents"] and a["fidelity"] == b["fidelity"]  # same processes: exactly equal
    wa, wb = (load_file(str(d / "student" / "model.safetensors")) for d in (tmp_path / "whole", run_dir))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_meta_gradients_run_on_two_processes(tmp_path: Path, backend: str) -> None:
    """MetaDistil's pilot step on each rank's part of the batch, the teacher's meta-gradient summed across ranks;
    the run checks after every group that the ranks hold the same weights."""
    launch(tmp_path / "run", tmp_path / "cache", "method=metadistil", f"method.meta_backend={backend}")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["phases"]["metadistil"]["backend"] == backend
    assert results["distributed"]["world_size"] == 2


def test_per_device_batch_size_sets_the_global_batch(tmp_path: Path) -> None:
    launch(tmp_path / "run", tmp_path / "cache", "method=kd", "trainer.per_device_batch_size=3")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["trainer"]["batch_size"] == 6


def test_a_sweep_under_torchrun_is_refused(tmp_path: Path) -> None:
    proc = launch(tmp_path / "run", tmp_path / "cache", "-m", "seed=1,2", check=False)
    assert proc.returncode != 0 and "one torchrun runs one job" in proc.stderr


def test_learned_teacher_weights_stay_in_step_on_two_processes(tmp_path: Path) -> None:
    """Several teachers, weights learned by REINFORCE on each rank's part of the batches: the reward is the whole
    quiz batch's, so every rank keeps the same baseline and weights (the run checks them after each group)."""
    launch(tmp_path / "run", tmp_path / "cache", "method=kd", "teachers=[tiny,tiny]", "method.teacher_mix=learned",
           "method.mix_estimator=reinforce", "method.student_epochs=2")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["distributed"]["world_size"] == 2 and "teacher_2" in results["agents"]
    assert len(results["phases"]["distill"]["teacher_mix"]["history"]) == 2
