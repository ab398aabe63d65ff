"""Phase 4's controls: who picks each step's task, which loss it trains on, whether the T' term has a gradient;
and what a run records of the policy (per-episode probabilities, the picture)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from mpdistil.config import ConfigError, validate
from mpdistil.data.encode import model_inputs
from mpdistil.loggers import Logger
from mpdistil.losses import curriculum_student_loss, episode_policy_loss, hard_loss, label_score, reinforce_loss
from mpdistil.phases.curriculum import CurriculumPhase
from tests.helpers import make_cfg, run_cfg

STEPS = 3  # debug=fast: two episodes of three steps


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the teacher and the distilled student are trained once, the curriculum every run."""
    return tmp_path_factory.mktemp("cache")


@dataclass
class Spied:
    """What a run's curriculum did, beyond results.json."""

    results: dict[str, Any] = field(default_factory=dict)
    policy_before: dict[str, torch.Tensor] = field(default_factory=dict)
    policy_after: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (task, quiz indices) per student step
    reward_batches: list[tuple[int, ...]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)
    grads: Optional[tuple[list, list, list]] = None  # phase's loss, CE − mean p_S, CE (first main-task step)
    out: Path = Path()


def student_grads(ctx: Any, loss: torch.Tensor) -> list[Optional[torch.Tensor]]:
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def spied_run(monkeypatch: pytest.MonkeyPatch, out: Path, cache: Path, superglue: Path, *overrides: str) -> Spied:
    """A tiny mpdistil run on CB; the curriculum's policy weights, batches, images and first main-task gradients
    are recorded."""
    spied = Spied(out=out)
    start, finish, loss, rew = (CurriculumPhase.start, CurriculumPhase.finish, CurriculumPhase.student_loss,
                                CurriculumPhase._reward)

    def spy_start(self: CurriculumPhase, ctx: Any) -> None:
        start(self, ctx)
        spied.policy_before = {k: v.clone() for k, v in self.policy.state_dict().items()}

    def spy_finish(self: CurriculumPhase, ctx: Any) -> dict[str, Any]:
        spied.policy_after = {k: v.clone() for k, v in self.policy.state_dict().items()}
        return finish(self, ctx)

    def spy_loss(self: CurriculumPhase, ctx: Any, name: str, batch: dict[str, Any]) -> torch.Tensor:
        spied.steps.append((name, tuple(batch["index"].tolist())))
        if name == ctx.task.name and spied.grads is None:
            was = ctx.student.training
            ctx.student.eval()  # no dropout: every forward below sees the same network
            phase = student_grads(ctx, loss(self, ctx, name, batch))
            logits, labels = ctx.student(**model_inputs(batch), task=name).logits, batch["labels"]
            ce = hard_loss(logits, labels, ctx.task.kind)
            without_mt = student_grads(ctx, ce - label_score(logits, labels, ctx.task.kind).mean())
            logits = ctx.student(**model_inputs(batch), task=name).logits
            spied.grads = (phase, without_mt, student_grads(ctx, hard_loss(logits, labels, ctx.task.kind)))
            ctx.student.train(was)
        return loss(self, ctx, name, batch)

    def spy_reward(self: CurriculumPhase, ctx: Any, batch: dict[str, Any], train_mode: bool) -> float:
        spied.reward_batches.append(tuple(batch["index"].tolist()))
        return rew(self, ctx, batch, train_mode)

    monkeypatch.setattr(CurriculumPhase, "start", spy_start)
    monkeypatch.setattr(CurriculumPhase, "finish", spy_finish)
    monkeypatch.setattr(CurriculumPhase, "student_loss", spy_loss)
    monkeypatch.setattr(CurriculumPhase, "_reward", spy_reward)
    monkeypatch.setattr(Logger, "image", lambda self, name, path: spied.images.append((name, path)))
    spied.results = run_cfg(out, "task=cb", f"data_dir={superglue}", "method=mpdistil", "trainer.num_threads=1",
                            *overrides, cache_dir=cache)
    return spied


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(out: Path) -> str:
    return hashlib.sha256((out / "student" / "model.safetensors").read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ config


def test_fixed_needs_an_action_as_its_task() -> None:
    validate(make_cfg("task=cb", "method=mpdistil", "method.policy=fixed", "method.policy_task=rte"))
    validate(make_cfg("task=cb", "method=mpdistil", "method.policy=fixed", "method.policy_task=cb"))
    for bad in ([], ["method.policy_task=rte", "method.curriculum_tasks=[copa]"], ["method.policy_task=sst2"]):
        with pytest.raises(ConfigError, match="method.policy=fixed needs method.policy_task=<one of the actions"):
            validate(make_cfg("task=cb", "method=mpdistil", "method.policy=fixed", *bad))
    with pytest.raises(ConfigError, match="method.policy='random' is not one of"):
        validate(make_cfg("method=mpdistil", "method.policy=random"))
    with pytest.raises(ConfigError, match="method.curriculum_loss='kl' is not one of"):
        validate(make_cfg("method=mpdistil", "method.curriculum_loss=kl"))
    validate(make_cfg("method=mpdistil", "method.policy_task=rte"))  # read only by policy=fixed: a sweep may set it


def test_fixed_task_left_out_for_missing_files_stops_at_phase_start(tmp_path: Path, cache: Path,
                                                                   superglue: Path) -> None:
    """BoolQ is a default partner of CB with no files in the fixture folder: the check before the run cannot
    know that, the phase does."""
    with pytest.raises(ConfigError, match=r"method.policy_task=boolq is not an action of this run"):
        run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "method=mpdistil", "method.policy=fixed",
                "method.policy_task=boolq", "method.phases=[curriculum]", cache_dir=cache)


# ------------------------------------------------------------------------------------- what the controls do

ACTIONS = "method.curriculum_tasks=[rte,copa]"


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, cache: Path, superglue: Path) -> Spied:
    with pytest.MonkeyPatch.context() as mp:
        return spied_run(mp, tmp_path_factory.mktemp("learned"), cache, superglue, ACTIONS)


@pytest.mark.parametrize("control", ["uniform", "main_only", "fixed"])
def test_a_control_chooses_the_tasks_and_changes_nothing_else(control: str, learned: Spied, tmp_path: Path,
                                                              cache: Path, superglue: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ["method.policy_task=rte"] if control == "fixed" else []
    run = spied_run(monkeypatch, tmp_path, cache, superglue, ACTIONS, f"method.policy={control}", *extra)
    cur, ref = run.results["phases"]["curriculum"], learned.results["phases"]["curriculum"]
    steps = [a for t in cur["trajectories"] for a in t]
    assert len(cur["trajectories"]) == 2 and all(len(t) == STEPS for t in cur["trajectories"])
    if control == "uniform":
        assert len(set(steps)) >= 2
        assert cur["episode_action_probs"] == [{t: pytest.approx(1 / 3) for t in ("cb", "rte", "copa")}] * 2
    else:
        task = "rte" if control == "fixed" else "cb"
        assert set(steps) == {task}
        assert cur["episode_action_probs"] == [{"cb": float(task == "cb"), "rte": float(task == "rte"),
                                                "copa": 0.0}] * 2
        assert cur["episode_action_frequencies"] == cur["episode_action_probs"]
    assert cur["policy"] == control and cur["policy_task"] == ("rte" if control == "fixed" else None)
    # the policy is not trained under a control, and is under the learned policy
    assert same(run.policy_before, run.policy_after)
    assert not same(learned.policy_before, learned.policy_after)
    # rewards are still computed and recorded; the same selection
    assert len(cur["episode_rewards"]) == 2 and all(r >= 0 for r in cur["episode_rewards"])
    assert cur["selection"].keys() == ref["selection"].keys()
    # the same batch streams: each task's batches within an episode, and the reward batches, as under learned
    assert run.reward_batches == learned.reward_batches
    for episode in range(2):
        for task in ("cb", "rte", "copa"):
            mine = [b for t, b in run.steps[episode * STEPS:(episode + 1) * STEPS] if t == task]
            theirs = [b for t, b in learned.steps[episode * STEPS:(episode + 1) * STEPS] if t == task]
            shorter = min(len(mine), len(theirs))
            assert mine[:shorter] == theirs[:shorter], (episode, task)
    assert (tmp_path / "policy_mpdistil.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learned_policy_records_its_probabilities_and_draws_its_picture(learned: Spied) -> None:
    cur = learned.results["phases"]["curriculum"]
    assert cur["policy"] == "learned" and cur["curriculum_loss"] == "mpdistil" and cur["curriculum_mt_grad"] is True
    assert cur["action_probs_from"] == "the policy at each episode's first step"
    for probs, freqs, trajectory in zip(cur["episode_action_probs"], cur["episode_action_frequencies"],
                                        cur["trajectories"], strict=True):
        assert list(probs) == cur["tasks"] and sum(probs.values()) == pytest.approx(1.0)
        assert 0 < min(probs.values()) and max(probs.values()) < 1
        assert freqs == {t: trajectory.count(t) / STEPS for t in cur["tasks"]}
    png = learned.out / "policy_mpdistil.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("curriculum/policy", png) in learned.images
    assert (learned.out / "reliability_mpdistil.png").is_file()  # beside the reliability diagrams


def test_with_one_action_main_only_trains_the_student_of_the_learned_policy(tmp_path: Path, cache: Path,
                                                                            superglue: Path) -> None:
    """A control's own draws leave the global random stream (dropout) as the learned policy leaves it: where both
    train on the same tasks, the students are bit-identical, though only the learned policy was trained."""
    one = ("task=cb", f"data_dir={superglue}", "method=mpdistil", "method.curriculum_tasks=[]",
           "trainer.num_threads=1")
    a = run_cfg(tmp_path / "learned", *one, cache_dir=cache)
    b = run_cfg(tmp_path / "main_only", *one, "method.policy=main_only", cache_dir=cache)
    assert weights(tmp_path / "learned") == weights(tmp_path / "main_only")
    assert a["agents"]["mpdistil"] == b["agents"]["mpdistil"]
    ca, cb = a["phases"]["curriculum"], b["phases"]["curriculum"]
    assert ca["episode_rewards"] == cb["episode_rewards"] and ca["trajectories"] == cb["trajectories"]
    c = run_cfg(tmp_path / "ce", *one, "method.policy=main_only", "method.curriculum_loss=ce", cache_dir=cache)
    assert weights(tmp_path / "ce") != weights(tmp_path / "main_only")  # the comparison can tell students apart
    assert c["phases"]["curriculum"]["curriculum_loss"] == "ce"


# ------------------------------------------------------------------------------------------ the losses


def flat(grads: list[Optional[torch.Tensor]]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads if g is not None])


@pytest.mark.parametrize("setting", ["default", "method.curriculum_mt_grad=false", "method.curriculum_loss=ce"])
def test_student_gradient_of_the_phase_loss(setting: str, tmp_path: Path, cache: Path, superglue: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The phase's loss on its first main-task batch, differentiated for every student parameter: without the T'
    gradient it is that of CE − mean p_S (the T' term a constant); with plain CE it is CE's; by default the
    T' term adds a gradient of its own."""
    overrides = [] if setting == "default" else [setting]
    run = spied_run(monkeypatch, tmp_path, cache, superglue, "method.curriculum_tasks=[]", *overrides)
    assert run.grads is not None
    phase, without_mt, ce = (flat(g) for g in run.grads)
    assert [g is None for g in run.grads[0]] == [g is None for g in run.grads[1]]
    if setting == "default":
        assert not torch.allclose(phase, without_mt, rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(phase, ce if setting.endswith("ce") else without_mt)
        assert not torch.allclose(ce, without_mt, rtol=1e-4, atol=1e-6)
    assert run.results["phases"]["curriculum"]["curriculum_mt_grad"] is (setting != "method.curriculum_mt_grad=false")


def test_authors_pairing_credits_reward_t_to_action_t_plus_1() -> None:
    """Three steps, γ = 0.5, rewards (1, 0, 0.5): the authors' pairing (log π of steps 1, 2 with rewards 0, 1)
    has returns (1, 0), advantages (0.5, −0.5), and leaves the first action without credit."""
    rewards, gamma = [1.0, 0.0, 0.5], 0.5
    lp = torch.tensor([-1.0, -0.5, -2.0], requires_grad=True)
    loss = episode_policy_loss(lp, rewards, gamma, credit_next=True)
    assert loss.item() == pytest.approx(-(0.5 * -0.5 + -0.5 * -2.0) / 2)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == pytest.approx([0.0, -0.25, 0.25])
    # the default pairs reward t with action t: returns (1.125, 0.25, 0.5), advantages (0.5, −0.375, −0.125)
    loss = episode_policy_loss(lp, rewards, gamma)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.tolist() == pytest.approx([-0.5 / 3, 0.375 / 3, 0.125 / 3])
    assert loss.item() == pytest.approx(reinforce_loss(lp, rewards, gamma).item())
    one = episode_policy_loss(lp[:1], rewards[:1], gamma, credit_next=True)  # nothing to shift: the default pairing
    assert one.item() == pytest.approx(reinforce_loss(lp[:1], rewards[:1], gamma).item())


@pytest.mark.parametrize("meta_input", ["pooled", "cls"])
def test_the_curriculum_t_prime_term_reads_what_t_prime_was_trained_on(meta_input: str, tmp_path: Path,
                                                                        cache: Path, superglue: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The phase-4 loss on the first main-task batch is the curriculum loss with T' applied to the student's
    vector that method.meta_input names (pooled or last [CLS]), as in phase 3, and not the other one."""
    loss = CurriculumPhase.student_loss
    seen: dict[str, torch.Tensor] = {}

    def spy_loss(self: CurriculumPhase, ctx: Any, name: str, batch: dict[str, Any]) -> torch.Tensor:
        if name == ctx.task.name and not seen:
            was = ctx.student.training
            ctx.student.eval()
            with torch.no_grad():
                seen["phase"] = loss(self, ctx, name, batch)
                out = ctx.student(**model_inputs(batch), task=name)
                for form, h in (("pooled", out.pooled), ("cls", out.cls)):
                    seen[form] = curriculum_student_loss(out.logits, batch["labels"], ctx.task.kind,
                                                         self.mt(h, "student", 0))
            ctx.student.train(was)
        return loss(self, ctx, name, batch)

    monkeypatch.setattr(CurriculumPhase, "student_loss", spy_loss)
    run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "method=mpdistil", "trainer.num_threads=1",
            "method.curriculum_tasks=[]", f"method.meta_input={meta_input}", cache_dir=cache)
    other = "cls" if meta_input == "pooled" else "pooled"
    torch.testing.assert_close(seen["phase"], seen[meta_input])
    assert not torch.allclose(seen["phase"], seen[other])
