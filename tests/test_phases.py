"""What each phase of the method changes, and that its meta-gradients are the gradients of its own objectives.

Runs use the real config tree on a tiny random model (``debug=fast``). A phase is checked either inside a full
run (the state of every agent after each phase group) or alone, on the context of a real run stopped just
before its group. Finite differences recompute the quiz loss after a real optimizer step of a copy of the
student, independently of :mod:`mpdistil.meta`, and score it in float64.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpdistil import run as run_module
from mpdistil.config import ConfigError, validate
from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.groups import run_group
from mpdistil.losses import distillation_loss, layer_map
from mpdistil.phases import PHASES
from mpdistil.phases import metadistil as metadistil_module
from mpdistil.pilot import cached_teacher_cls, pilot_gradient
from tests.helpers import custom_task, make_cfg, run_cfg

States = dict[str, dict[str, torch.Tensor]]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def task(tmp_path: Path) -> list[str]:
    return [*custom_task(tmp_path), "method.curriculum_tasks=[]"]


class _Stop(Exception):
    """Ends a run (or an epoch) at the point a test wants to inspect."""


def states(ctx: RunContext) -> States:
    return {name: {k: v.detach().clone() for k, v in agent.state_dict().items()}
            for name, agent in ctx.all_agents().items()}


def largest_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """The largest absolute change of any entry; inf when the two states do not have the same tensors."""
    if before.keys() != after.keys():
        return float("inf")
    return max((float((after[k].double() - before[k].double()).abs().max()) for k in before
                if before[k].numel() and before[k].is_floating_point()), default=0.0)


def context_before(out: Path, group: str, *overrides: str) -> tuple[RunContext, int]:
    """The context of a real run just before ``group`` would run (every group before it done), and its index."""
    captured: dict[str, Any] = {}
    real = run_module.run_group

    def stop(ctx: RunContext, names: list[str], index: int, *args: Any) -> Any:
        if "+".join(names) == group:
            captured.update(ctx=ctx, index=index)
            raise _Stop
        return real(ctx, names, index, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "run_group", stop)
        with pytest.raises(_Stop):
            run_cfg(out, *overrides)
    return captured["ctx"], captured["index"]


def run_recording(out: Path, *overrides: str) -> tuple[RunContext, list[tuple[list[str], States]]]:
    """A full run; the state of every agent before the first group and after each group."""
    record: list[tuple[list[str], States]] = []
    captured: dict[str, RunContext] = {}
    real = run_module.run_group

    def recording(ctx: RunContext, names: list[str], *args: Any) -> Any:
        if not record:
            record.append(([], states(ctx)))
        produced = real(ctx, names, *args)
        record.append((names, states(ctx)))
        captured["ctx"] = ctx
        return produced

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "run_group", recording)
        run_cfg(out, *overrides)
    return captured["ctx"], record


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def quiz_loss64(student: nn.Module, quiz: list[dict[str, Any]]) -> float:
    """Mean CE on the quiz batches, in float64 (the reference's own scoring, not the code under test)."""
    with torch.no_grad():
        return float(sum(F.cross_entropy(student(**model_inputs(b)).logits.double(), b["labels"]) for b in quiz)
                     / len(quiz))


def directional_fd(params: list[torch.Tensor], direction: list[torch.Tensor], objective: Callable[[], float],
                   eps: float = 1e-2) -> float:
    """Central difference of ``objective`` along a unit ``direction`` of ``params`` (restored afterwards)."""
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=sign * eps)
        values.append(objective())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(d, alpha=sign * eps)
    return (values[0] - values[1]) / (2 * eps)


def check_against_fd(params: list[torch.Tensor], grads: list[torch.Tensor], objective: Callable[[], float],
                     n_entries: int = 2) -> None:
    """The meta-gradient's component along itself and along its largest entries match finite differences."""
    g = flat(grads)
    assert float(g.norm()) > 0, "a zero meta-gradient would make the comparison vacuous"
    unit = [t / g.norm() for t in grads]
    assert directional_fd(params, unit, objective) == pytest.approx(float(g.norm()), rel=1e-3)
    sizes = [t.numel() for t in grads]
    for index in g.abs().argsort(descending=True)[:n_entries].tolist():
        which = next(i for i in range(len(sizes)) if index < sum(sizes[:i + 1]))
        basis = [torch.zeros_like(t) for t in grads]
        basis[which].view(-1)[index - sum(sizes[:which])] = 1.0
        assert directional_fd(params, basis, objective) == pytest.approx(float(g[index]), rel=1e-2, abs=1e-3 * float(
            g.abs().max()))


# 1. Each phase group changes exactly the agents it trains ---------------------------------------

@pytest.mark.parametrize("overrides", [
    ("method=mpdistil", "method.meta_loss=com"),
    ("method=mpdistil", "method.meta_objective=pilot"),
    ("method=mpdistil", "method.meta_objective=pilot", "method.pilot_optimizer=adam"),
    ("method=metadistil",),
    ("method=metadistil", "method.pilot_optimizer=adam"),
], ids=["mpdistil-com", "mpdistil-pilot", "mpdistil-pilot-adam", "metadistil", "metadistil-adam"])
def test_each_group_changes_exactly_the_agents_it_trains(tmp_path: Path, task: list[str],
                                                         overrides: tuple[str, ...]) -> None:
    ctx, record = run_recording(tmp_path / "run", *task, *overrides)
    for (_, before), (names, after) in zip(record, record[1:]):
        trains = {a for n in names for a in PHASES[n].trains}
        for agent in after:
            if agent in before:
                moved = largest_change(before[agent], after[agent])
                assert (moved > 0) == (agent in trains), f"{'+'.join(names)} {'left' if moved == 0 else 'moved'} "\
                                                         f"{agent} ({moved})"
            else:
                assert agent in trains, f"{'+'.join(names)} created {agent}, which it does not train"
    final = states(ctx)
    if "method=metadistil" in overrides:
        # the meta-trained copy moved away from the phase-1 teacher, which stayed as it was
        assert largest_change(final["teacher"], final["metadistil_teacher"]) > 1e-6
        assert "meta_teacher" not in final
    else:
        # T' starts as a copy of the teacher's head: its phase-3 passes (pilot only, or com) moved it
        head = {f"body.{k}": v for k, v in ctx.teacher.hf.classifier.state_dict().items()}
        assert largest_change(head, final["meta_teacher"]) > 1e-6
        assert ctx.records["meta_teacher"]["meta_objective"] == ("pilot" if "pilot" in str(overrides) else "direct")
    assert largest_change(ctx.initial_student_state, final["student"]) > 1e-6


# 2. Phases alone, on a prepared context ---------------------------------------------------------

@pytest.mark.parametrize("pilot", ["sgd", "adam"])
def test_meta_teacher_pass_changes_only_the_meta_teacher(tmp_path: Path, task: list[str], pilot: str) -> None:
    """A phase-3 pass (direct + pilot, with PKD) moves T' alone: teacher, student and the student's optimizer are
    bit-identical; the student moves only in its own distillation epochs."""
    ctx, _ = context_before(tmp_path / "run", "distill+meta_teacher", *task, "method=mpdistil",
                            "method.meta_objective=mixed", f"method.pilot_optimizer={pilot}")
    assert ctx.cfg.method.beta > 0
    distill, meta = PHASES["distill"](), PHASES["meta_teacher"]()
    for phase in (distill, meta):
        phase.prepare(ctx)
        phase.start(ctx)
    try:
        student_before = states(ctx)["student"]
        distill.run_epoch(ctx, 0)
        assert largest_change(student_before, states(ctx)["student"]) > 0
        assert ctx.optimizers["student"] is distill.opt
        before, opt_before = states(ctx), copy.deepcopy(distill.opt.state_dict())
        row = meta.run_epoch(ctx, 0)
        after = states(ctx)
        assert row["pilot_quiz_loss"] > 0 and row["loss"] > 0
        assert largest_change(before["meta_teacher"], after["meta_teacher"]) > 0
        for agent in ("teacher", "student"):
            assert largest_change(before[agent], after[agent]) == 0.0, agent
        for key, value in opt_before["state"].items():
            for name, tensor in value.items():
                assert torch.equal(tensor, distill.opt.state_dict()["state"][key][name]), (key, name)
    finally:
        for phase in (distill, meta):
            phase.close(ctx)
    assert "student" not in ctx.optimizers


def test_curriculum_leaves_the_meta_teacher_and_the_teacher_bit_identical(tmp_path: Path, task: list[str]) -> None:
    ctx, index = context_before(tmp_path / "run", "curriculum", *task, "method=mpdistil",
                                "method.meta_objective=mixed")
    before = states(ctx)
    run_group(ctx, ["curriculum"], index)
    after = states(ctx)
    assert largest_change(before["student"], after["student"]) > 0
    for agent in ("meta_teacher", "teacher"):
        assert largest_change(before[agent], after[agent]) == 0.0, agent


# 3. Meta-gradients are the gradients of the phases' own pilot objectives -------------------------

def test_metadistil_teacher_update_is_the_gradient_of_its_pilot_objective(tmp_path: Path, task: list[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradient the MetaDistil phase applies to its teacher is d L_quiz(θ')/d teacher, where θ' is one SGD
    step (method.pilot_lr) of the student on α·D(z_S, z_teacher) + (1 − α)·CE (no PKD, as its real step)."""
    ctx, _ = context_before(tmp_path / "run", "metadistil", *task, "method=metadistil", "method.beta=100",
                            "method.authors_no_dropout=true")  # dropout off: the objective is deterministic
    phase = PHASES["metadistil"]()
    phase.prepare(ctx)
    phase.start(ctx)
    seen: dict[str, Any] = {}

    def recording_pilot(*args: Any, **kwargs: Any) -> Any:
        seen["inner"], seen["quiz"] = args[3], args[4]
        return pilot_gradient(*args, **kwargs)

    def stop(params: list[torch.Tensor], grads: list[torch.Tensor], *args: Any) -> None:
        seen["params"], seen["grads"] = params, grads
        raise _Stop

    monkeypatch.setattr(metadistil_module, "pilot_gradient", recording_pilot)
    monkeypatch.setattr(metadistil_module, "apply_gradient", stop)
    with pytest.raises(_Stop):
        phase.run_epoch(ctx, 0)
    phase.close(ctx)
    assert not ctx.student.training and len(seen["inner"]) == ctx.cfg.method.unroll_steps == 1
    teacher, m, kind = ctx.agents["metadistil_teacher"], ctx.cfg.method, ctx.task.kind
    trainable = [p for p in teacher.parameters() if p.requires_grad]
    assert len(seen["params"]) == len(trainable) and all(a is b for a, b in zip(seen["params"], trainable))

    def objective() -> float:
        student = copy.deepcopy(ctx.student).double()
        opt = torch.optim.SGD(student.parameters(), lr=m.pilot_lr)
        for batch in seen["inner"]:
            with torch.no_grad():
                soft = teacher(**model_inputs(batch)).logits
            loss, _ = distillation_loss(student(**model_inputs(batch)).logits, soft, batch["labels"], kind, m.alpha,
                                        m.temperature, m.soft_loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return quiz_loss64(student, seen["quiz"])

    check_against_fd(seen["params"], seen["grads"], objective)


def _phase3_pilot(tmp_path: Path, task: list[str], *overrides: str) -> tuple[RunContext, Any, dict[str, Any]]:
    """A context before phase 3 with T' ready, T''s soft targets and one train' and one quiz batch."""
    ctx, _ = context_before(tmp_path / "run", "distill+meta_teacher", *task, "method=mpdistil",
                            "method.meta_objective=pilot", *overrides)
    meta = PHASES["meta_teacher"]()
    meta.prepare(ctx)
    meta.start(ctx)
    ctx.student.eval()  # dropout off: the objective is deterministic
    train = ctx.rt.batches(ctx.splits["train"], 8, shuffle=True, generator=torch.Generator().manual_seed(0))
    pilot = {"soft": meta._soft_targets(ctx, ctx.representation(ctx.teacher_cache("train"))),
             "inner": [next(iter(train))], "quiz": [next(iter(ctx.rt.batches(ctx.splits["quiz"], 8)))],
             "params": [p for p in meta.mt.parameters() if p.requires_grad]}
    return ctx, meta, pilot


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_phase3_pilot_has_the_pkd_term_of_the_real_distillation_loss(tmp_path: Path, task: list[str],
                                                                    backend: str) -> None:
    """With β > 0, T''s pilot meta-gradient is that of L_quiz after a step on α·D + (1 − α)·CE + β·PKD, with the
    teacher's cached [CLS] states; without PKD it is another gradient, that of the loss without the term."""
    ctx, _, pilot = _phase3_pilot(tmp_path, task, f"method.meta_backend={backend}")
    m, kind, params = ctx.cfg.method, ctx.task.kind, pilot["params"]
    assert m.beta == 100
    with_pkd, _ = pilot_gradient(ctx, params, pilot["soft"], pilot["inner"], pilot["quiz"],
                                 cached_teacher_cls(ctx, "train"))
    without, _ = pilot_gradient(ctx, params, pilot["soft"], pilot["inner"], pilot["quiz"])
    # PKD changes the meta-gradient; the finite-difference checks below, each at 0.1%, tell the two apart
    assert float((flat(with_pkd) - flat(without)).norm()) > 0.01 * float(flat(without).norm())
    pairs = layer_map(ctx.student.num_layers, ctx.teacher.num_layers, m.layer_map)
    cache = ctx.teacher_cache("train")["cls"]

    def objective(beta: float) -> float:
        student = copy.deepcopy(ctx.student).double()
        opt = torch.optim.SGD(student.parameters(), lr=m.pilot_lr)
        for batch in pilot["inner"]:
            out = student(**model_inputs(batch), output_hidden=True)
            teacher = cache[batch["index"]].view(-1, len(pairs), cache.shape[-1])
            loss, _ = distillation_loss(out.logits, pilot["soft"](batch).detach(), batch["labels"], kind, m.alpha,
                                        m.temperature, m.soft_loss, beta, [out.cls_states[s - 1] for s, _ in pairs],
                                        [teacher[:, j] for j in range(len(pairs))])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return quiz_loss64(student, pilot["quiz"])

    check_against_fd(params, with_pkd, lambda: objective(m.beta))
    check_against_fd(params, without, lambda: objective(0.0))


def test_phase3_adam_pilot_continues_the_distillation_optimizer(tmp_path: Path, task: list[str]) -> None:
    """Phase 3's Adam pilot reads the moments of phase 2's optimizer (higher == func); with them its meta-gradient
    differs from a fresh Adam step's."""
    ctx, _, pilot = _phase3_pilot(tmp_path, task, "method.pilot_optimizer=adam", "method.pilot_adam_lr=1e-3")
    distill = PHASES["distill"]()
    distill.prepare(ctx)
    distill.start(ctx)
    args = (ctx, pilot["params"], pilot["soft"], pilot["inner"], pilot["quiz"], cached_teacher_cls(ctx, "train"))
    fresh, _ = pilot_gradient(*args)  # the optimizer has not stepped yet: no moments, a fresh first Adam step
    assert float(flat(fresh).norm()) > 0
    distill.run_epoch(ctx, 0)
    ctx.student.eval()
    grads = {}
    for backend in ("higher", "func"):
        ctx.cfg.method.meta_backend = backend
        grads[backend] = flat(pilot_gradient(*args)[0])
    distill.close(ctx)
    assert torch.allclose(grads["higher"], grads["func"], rtol=1e-5, atol=1e-6 * float(grads["func"].abs().max()))
    without_moments = flat(pilot_gradient(*args)[0])  # the optimizer is gone: a fresh first Adam step
    assert float((grads["func"] - without_moments).norm()) > 0.1 * float(grads["func"].norm())


# 4. Config checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "needle"), [
    (("method.first_order=true", "method.pilot_optimizer=adam"), "method.first_order=true supports only the SGD"),
    (("method.pilot_adam_lr=0",), "method.pilot_adam_lr=0"),
    (("method.pilot_optimizer=rmsprop",), "method.pilot_optimizer"),
])
def test_pilot_settings_are_checked(overrides: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        validate(make_cfg("method=metadistil", *overrides))
    assert "\n" not in str(info.value)
