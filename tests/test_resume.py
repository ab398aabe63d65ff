"""Kill a run (SIGKILL, in every phase) and start it again: it resumes and ends exactly as an uninterrupted run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mpdistil.checkpoints import KILL_ENV, KILL_SIGNAL_ENV, CheckpointError
from mpdistil.config import ConfigError
from tests.helpers import FAST, REPO, run_cfg

# Two epochs per phase so each has a checkpoint inside it; one thread so runs on a shared machine stay fast.
EPOCHS = ["method.teacher_epochs=2", "method.student_epochs=2", "method.episodes=2"]
TINY = [a for a in FAST if not a.startswith(("method.teacher_epochs", "method.student_epochs", "method.episodes"))] + \
    EPOCHS + ["trainer.num_threads=1", "model=tiny", "task=cb"]
MPDISTIL = ["method=mpdistil", "method.curriculum_tasks=[rte]", "method.episode_length=3", "trainer.reuse_cache=false"]

# (MPDISTIL_KILL_AT, where the next start must resume): after a checkpoint, or mid-epoch after one optimizer step
# (that partial epoch is redone). The teacher is killed while it holds the teacher cache's lock.
KILLS = [("teacher:1:mid", "after epoch 1 of teacher"),
         ("undistilled:0", "after epoch 1 of undistilled"),
         ("distill:1:mid", "after epoch 1 of distill+meta_teacher"),
         ("curriculum:1:mid", "after epoch 1 of curriculum")]


def launch(run_dir: Path, cache: Path, *args: str, kill_at: str = "") -> subprocess.Popen:
    """``python main.py ... hydra.run.dir=<run_dir>``, the command a user (or a requeued job) runs again."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", KILL_ENV: kill_at}
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *args, f"cache_dir={cache}",
                             f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def comparable(run_dir: Path) -> dict[str, Any]:
    """Everything a run computed (metrics, fidelity, histories, curriculum trajectories, final weights);
    not wall time, memory, paths or whether an agent came from a cache."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("cached", "cache")}
        return [strip(v) for v in node] if isinstance(node, list) else node

    results = json.loads((run_dir / "results.json").read_text())
    weights = hashlib.sha256((run_dir / "student" / "model.safetensors").read_bytes()).hexdigest()
    return {**{k: strip(results[k]) for k in ("agents", "fidelity", "ood", "phases")}, "student_weights": weights}


def test_kill_in_every_phase_and_resume_matches_an_uninterrupted_run(tmp_path, superglue):
    args = [*TINY, *MPDISTIL, f"data_dir={superglue}"]
    reference = launch(tmp_path / "reference", tmp_path / "cache_ref", *args)
    run_dir = tmp_path / "killed"
    kill_at, resumed_at = "", None
    for kill_at, next_resume in [*KILLS, ("", None)]:
        code, out, err = finish(launch(run_dir, tmp_path / "cache", *args, kill_at=kill_at))
        if resumed_at is not None:
            assert f"resuming from {run_dir / 'checkpoint'} ({resumed_at})" in out, (kill_at, out[-1500:])
        if kill_at:
            assert code == -signal.SIGKILL, (kill_at, code, err[-2000:])
            assert (run_dir / "checkpoint" / "meta.json").is_file()
        resumed_at = next_resume
    assert code == 0, err[-3000:]
    assert not (run_dir / "checkpoint").exists(), "a finished run keeps no checkpoint"
    ref_code, _, ref_err = finish(reference)
    assert ref_code == 0, ref_err[-3000:]
    killed, uninterrupted = comparable(run_dir), comparable(tmp_path / "reference")
    for key in uninterrupted:
        assert killed[key] == uninterrupted[key], key
    assert len(killed["phases"]["curriculum"]["trajectories"]) == 2


@pytest.fixture
def kept_checkpoint(tmp_path, superglue) -> tuple[Path, list[str]]:
    args = [*TINY, "method=undistilled", f"data_dir={superglue}", f"cache_dir={tmp_path / 'cache'}"]
    run_cfg(tmp_path / "run", *args, "trainer.keep_checkpoint=true")
    assert (tmp_path / "run" / "checkpoint" / "meta.json").is_file()
    return tmp_path / "run", args


def test_truncated_checkpoint_is_refused_with_one_line(kept_checkpoint):
    run_dir, args = kept_checkpoint
    state = next((run_dir / "checkpoint").glob("state-*.pt"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ConfigError) as refused:  # main.py prints a ConfigError as `error: <line>`, exit code 2
        run_cfg(run_dir, *args)
    line = str(refused.value)
    assert isinstance(refused.value, CheckpointError) and "\n" not in line
    assert line.startswith("checkpoint") and "corrupt" in line and f"delete {run_dir / 'checkpoint'}" in line


def test_checkpoint_of_another_config_is_refused(kept_checkpoint):
    run_dir, args = kept_checkpoint
    with pytest.raises(CheckpointError, match=r"another config \(method.student_lr=3e-05\).*original config"):
        run_cfg(run_dir, *args, "method.student_lr=1e-4")
    again = run_cfg(run_dir, *args, "trainer.progress=true")  # display settings do not make another run
    assert again["agents"]["undistilled"]


def test_resume_true_without_a_checkpoint_says_which_folder_to_pass(tmp_path, superglue):
    with pytest.raises(CheckpointError, match="holds no checkpoint; run with hydra.run.dir="):
        run_cfg(tmp_path, *TINY, "method=undistilled", f"data_dir={superglue}", "resume=true")


def test_skip_finished_leaves_a_finished_run_of_the_same_config_alone(tmp_path, superglue, monkeypatch):
    args = [*TINY, "method=undistilled", f"data_dir={superglue}", "skip_finished=true"]
    first = run_cfg(tmp_path, *args)
    written = (tmp_path / "results.json").read_bytes()

    def no_training(*_: Any) -> None:
        raise RuntimeError("trained again")

    monkeypatch.setattr("mpdistil.run.run_group", no_training)
    again = run_cfg(tmp_path, *args, "trainer.progress=true")  # display settings do not make another run
    assert again == json.loads(written) and again["agents"] == first["agents"]
    assert (tmp_path / "results.json").read_bytes() == written
    with pytest.raises(RuntimeError, match="trained again"):  # another config runs
        run_cfg(tmp_path, *args, "method.student_lr=1e-4")
    with pytest.raises(RuntimeError, match="trained again"):  # without the switch every launch runs
        run_cfg(tmp_path, *args, "skip_finished=false")
    assert (tmp_path / "results.json").read_bytes() == written


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_resumes(tmp_path, superglue):
    """The launcher's checkpoint() resubmits the same job (same output dir); it finds the checkpoint and resumes.
    submitit's local executor handles the pre-emption signal and the requeue as SLURM's does (bar scontrol)."""
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (requirements.txt; an ImportError says what is missing)

    args = [*TINY, "method=undistilled", "method.student_epochs=3", f"data_dir={superglue}",
            f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", KILL_ENV: "undistilled:0", KILL_SIGNAL_ENV: "SIGUSR2"}
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "-m", "hydra/launcher=submitit_local",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=job", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    assert f"resuming from {tmp_path / 'sweep' / 'job' / 'checkpoint'} (after epoch 1 of undistilled)" in log
    run_cfg(tmp_path / "uninterrupted", *args)
    assert comparable(tmp_path / "sweep" / "job") == comparable(tmp_path / "uninterrupted")
