"""Distilling from the teacher's per-epoch checkpoints (method.teacher_schedule)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpdistil.config import ConfigError
from mpdistil.schedule import CheckpointBank, TeacherSchedule, spread
from tests.helpers import custom_task, run_cfg
from tests.test_resume import comparable, finish, launch

# selection on the last epoch: the kept teacher is the last of its three checkpoints
THREE = ["method=kd", "method.teacher_epochs=3", "method.student_epochs=3", "method.teacher_lr=1e-3",
         "method.student_lr=1e-3", "trainer.selection_split=last", "trainer.keep_teacher_checkpoints=true",
         "method.beta=10"]


def test_spread_uses_every_checkpoint_in_order_and_the_final_one_last() -> None:
    assert [spread(e, 3, 3) for e in range(3)] == [0, 1, 2]
    assert [spread(e, 5, 2) for e in range(5)] == [0, 0, 0, 1, 1]
    assert [spread(e, 2, 4) for e in range(2)] == [0, 2]
    assert [spread(e, 4, 1) for e in range(4)] == [0, 0, 0, 0]


def test_bank_keeps_each_epochs_weights_through_its_state_dict() -> None:
    layer = torch.nn.Linear(3, 2)
    bank = CheckpointBank()
    bank.add(0, layer)
    first = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        layer.weight.add_(1.0)
    bank.add(1, layer)
    other = CheckpointBank()
    other.load_state_dict(bank.state_dict())
    assert other.epochs == [0, 1]
    assert all(torch.equal(other.state(0)[k], first[k]) for k in first)
    assert torch.equal(other.state(1)["weight"], layer.weight)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return custom_task(tmp_path_factory.mktemp("task"))


def test_schedule_of_one_checkpoint_equals_the_final_teacher(tmp_path: Path, task: list[str]) -> None:
    """One teacher epoch: its only checkpoint is the final teacher, so the students are the same exactly."""
    one = ["method=kd", "method.teacher_epochs=1", "method.student_epochs=2", "trainer.keep_teacher_checkpoints=true",
           "method.beta=10", *task]
    final = run_cfg(tmp_path / "final", *one)
    scheduled = run_cfg(tmp_path / "scheduled", *one, "method.teacher_schedule=checkpoints")
    assert scheduled["phases"]["distill"]["teacher_schedule"]["checkpoints"] == [0]
    assert scheduled["agents"] == final["agents"] and scheduled["fidelity"] == final["fidelity"]


def test_checkpoints_are_spread_over_the_epochs_and_change_the_student(tmp_path: Path, task: list[str]) -> None:
    cache = tmp_path / "cache"
    final = run_cfg(tmp_path / "final", *THREE, *task, cache_dir=cache)
    scheduled = run_cfg(tmp_path / "scheduled", *THREE, *task, "method.teacher_schedule=checkpoints", cache_dir=cache)
    assert scheduled["phases"]["teacher"]["kept_checkpoints"] == [0, 1, 2]
    assert scheduled["phases"]["teacher"]["cached"]  # the cached teacher carries its checkpoints
    plan = scheduled["phases"]["distill"]["teacher_schedule"]["per_epoch"]
    assert [e["checkpoint_epoch"] for e in plan] == [0, 1, 2]
    assert scheduled["phases"]["distill"]["history"] != final["phases"]["distill"]["history"]
    assert scheduled["agents"]["teacher"] == final["agents"]["teacher"]  # the table's teacher is the final one


def test_agreement_moves_to_the_next_checkpoint_once_the_student_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = CheckpointBank()
    for epoch in range(3):
        bank.add(epoch, torch.nn.Linear(2, 2))
    method = SimpleNamespace(schedule_agreement=0.75, student_epochs=4)
    ctx = SimpleNamespace(teacher=torch.nn.Linear(2, 2), cfg=SimpleNamespace(method=method))
    schedule = TeacherSchedule(ctx, bank, best_epoch=2)
    teacher = torch.tensor([[1.0, 0.0]] * 4)  # every checkpoint predicts class 0 on train'
    monkeypatch.setattr(schedule, "outputs", lambda ctx, split, layers: {"logits": teacher})
    follows = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])  # agrees on 3 of 4
    lags = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2)  # on 2 of 4
    assert schedule.choose(ctx, 0, []) == 0
    assert schedule.choose(ctx, 1, [], lags) == 0
    assert schedule.choose(ctx, 2, [], follows) == 1
    assert schedule.choose(ctx, 3, [], follows) == 2
    assert schedule.choose(ctx, 4, [], follows) == 2  # the final teacher is the last
    assert [e.get("agreement_before") for e in schedule.history] == [None, 0.5, 0.75, 0.75, 0.75]
    assert [e["checkpoint_epoch"] for e in schedule.history] == [0, 0, 1, 2, 2]


def test_a_schedule_without_kept_checkpoints_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainer.keep_teacher_checkpoints=true"):
        run_cfg(tmp_path / "run", "method=kd", "method.teacher_schedule=checkpoints")
    assert not (tmp_path / "run").exists()


def test_killed_scheduled_run_resumes_exactly(tmp_path: Path, task: list[str]) -> None:
    args = ["debug=fast", "trainer.num_threads=1", *THREE, *task, "method.teacher_schedule=checkpoints",
            "method.schedule_agreement=0.5", "trainer.reuse_cache=false"]
    code, _, err = finish(launch(tmp_path / "whole", tmp_path / "cache1", *args))
    assert code == 0, err[-2000:]
    code, _, _ = finish(launch(tmp_path / "killed", tmp_path / "cache2", *args, kill_at="distill:2:mid"))
    assert code != 0
    code, _, err = finish(launch(tmp_path / "killed", tmp_path / "cache2", *args))
    assert code == 0, err[-2000:]
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "whole")
