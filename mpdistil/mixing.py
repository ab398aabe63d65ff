"""Several teachers: which they are, how their soft targets are mixed, and how learned mixing weights are trained.

A run's teachers are ``model.teacher`` alone, or the list ``teachers=[...]`` (model presets or sources) whose first
entry is the model group's teacher: the student is cut from it, T' copies its head and PKD reads its layers. Phase 1
fine-tunes every teacher on its own encoding of the data (:mod:`mpdistil.ensemble`). Wherever a phase reads soft
targets it then reads their mixture,

    p_mix(c | x) = Σ_k w_k(x) · softmax(z_k(x) / τ)_c,   handed to the soft loss as the logits τ · log p_mix,

(the weighted mean of the predictions for regression), so that K identical teachers give exactly the loss of one.
The weights ``w(x)`` over the K teachers come from a registered mix (``method.teacher_mix``): ``mean``; ``confidence``
(each teacher's probability of the gold label, normalised over teachers); ``random`` (one teacher per example, drawn
afresh each epoch); ``learned`` (a softmax over trained logits, one per teacher or per teacher and gold class). A
new mix is one :class:`TeacherMix` subclass decorated with :func:`register_mix`.

Learned weights are trained after every distillation epoch on the student's feedback: the quiz loss of the student
after a differentiable pilot step on the mixed targets (``method.mix_estimator=pilot``, the engine of
:mod:`mpdistil.pilot`), or REINFORCE with the negative of that quiz loss as the reward for one teacher drawn per
example (``reinforce``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mpdistil.config import CONF_DIR, ConfigError

MIXES: dict[str, type[TeacherMix]] = {}


@dataclass(frozen=True)
class TeacherSpec:
    """How to build one teacher: its source and, for the test presets' random models, their shape."""

    name: str  # as written in ``teachers=[...]``, or the model group's name
    source: str
    random_init: bool = False
    config_overrides: str = "{}"  # JSON, keys sorted
    attn_implementation: Optional[str] = None

    def same_model(self, other: TeacherSpec) -> bool:
        return (self.source, self.random_init, self.config_overrides if self.random_init else "") == \
            (other.source, other.random_init, other.config_overrides if other.random_init else "")

    @property
    def overrides(self) -> dict[str, Any]:
        return json.loads(self.config_overrides)


def _overrides(node: Any) -> str:
    plain = OmegaConf.to_container(node, resolve=True) if node is not None and OmegaConf.is_config(node) else node
    return json.dumps(plain or {}, sort_keys=True)


def group_spec(cfg: Any) -> TeacherSpec:
    m = cfg.model
    return TeacherSpec(m.name, m.teacher, bool(m.random_init), _overrides(m.config_overrides), m.attn_implementation)


def resolve_spec(name: str) -> TeacherSpec:
    """A model preset (``conf/model/<name>.yaml``: its teacher, with its random shape if it has one) or a source."""
    preset = CONF_DIR / "model" / f"{name}.yaml"
    if "/" not in name and preset.is_file():
        node = OmegaConf.load(preset)
        return TeacherSpec(name, str(node.teacher), bool(node.get("random_init", False)),
                           _overrides(node.get("config_overrides")), node.get("attn_implementation"))
    return TeacherSpec(name, name)


def teacher_specs(cfg: Any) -> list[TeacherSpec]:
    """Every teacher of the run, the model group's first."""
    return [group_spec(cfg)] + [resolve_spec(str(n)) for n in list(cfg.teachers)[1:]]


def teacher_names(cfg: Any) -> list[str]:
    """The agents' names: ``teacher`` (the model group's), then ``teacher_2``, ``teacher_3``, ..."""
    return ["teacher"] + [f"teacher_{k}" for k in range(2, max(len(cfg.teachers), 1) + 1)]


def several(cfg: Any) -> bool:
    return len(cfg.teachers) > 1


def check_teachers(cfg: Any) -> None:
    """The list's first entry must be the model group's teacher (its preset's name, whatever the command line
    overrides in it, or the same model); every entry must name a model. Cheap: reads the presets and resolves the
    sources, loads nothing."""
    from mpdistil.models.loading import resolve_model_source

    if not cfg.teachers:
        return
    first, group = resolve_spec(str(cfg.teachers[0])), group_spec(cfg)
    if str(cfg.teachers[0]) != cfg.model.name and not first.same_model(group):
        raise ConfigError(f"teachers[0]={cfg.teachers[0]} is not the model group's teacher (model.teacher="
                          f"{cfg.model.teacher}): list it first (the student is cut from it; T' and PKD build on it), "
                          f"or pick the model group of the teacher you want first, e.g. model={cfg.teachers[0]}")
    for spec in teacher_specs(cfg)[1:]:
        resolve_model_source(spec.source, cfg.cache_dir)
    if several(cfg):
        from mpdistil.data.registry import get_task_spec

        kind = get_task_spec(cfg.task.name, cfg.task).kind
        m = cfg.method
        if m.teacher_mix == "confidence" and kind == "regression":
            raise ConfigError("method.teacher_mix=confidence weighs teachers by their probability of the gold label, "
                              f"which a regression task ({cfg.task.name}) has not; use mean, random or learned")
        if m.teacher_mix == "learned" and m.mix_scope == "class" and kind != "classification":
            raise ConfigError(f"method.mix_scope=class keeps weights per gold class; {cfg.task.name} is {kind}, "
                              "without classes: set method.mix_scope=global")
        if m.mix_lr <= 0:
            raise ConfigError(f"method.mix_lr={m.mix_lr} must be > 0")


def register_mix(name: str) -> Callable[[type[TeacherMix]], type[TeacherMix]]:
    def wrap(cls: type[TeacherMix]) -> type[TeacherMix]:
        cls.name = name
        MIXES[name] = cls
        return cls

    return wrap


class TeacherMix(nn.Module):
    """Per-example weights over K teachers, [B, K] with rows summing to 1, from the teachers' logits [K, B, ...].

    ``weights`` may read the gold labels (the distillation loss has them); ``label_free`` is what the mixture is
    evaluated with on dev and test, where a weight must not read the label it is scored on."""

    name: ClassVar[str] = "mix"
    learned: ClassVar[bool] = False

    def __init__(self, teachers: int, classes: int, scope: str = "global") -> None:
        super().__init__()
        self.k, self.classes, self.scope = teachers, classes, scope
        self.history: list[dict[str, Any]] = []

    def begin_epoch(self, sizes: dict[str, int], generator: torch.Generator) -> None:
        """Called before each distillation epoch with the sizes of the splits it reads."""

    def weights(self, logits: torch.Tensor, labels: Optional[torch.Tensor], split: Optional[str] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def label_free(self, logits: torch.Tensor) -> torch.Tensor:
        return self.weights(logits, None)

    def summary(self) -> dict[str, Any]:
        """What the run's record keeps about the weights (learned ones: their values)."""
        return {}

    def uniform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.new_full((logits.shape[1], self.k), 1.0 / self.k, dtype=torch.float32)


@register_mix("mean")
class MeanMix(TeacherMix):
    def weights(self, logits: torch.Tensor, labels: Optional[torch.Tensor], split: Optional[str] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.uniform(logits)


@register_mix("confidence")
class ConfidenceMix(TeacherMix):
    """Each teacher weighted by its probability of the gold label (of its own top class where there is no label)."""

    def weights(self, logits: torch.Tensor, labels: Optional[torch.Tensor], split: Optional[str] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = torch.softmax(logits.float(), dim=-1)
        conf = p.max(-1).values if labels is None else \
            p.gather(2, labels.view(1, -1, 1).expand(p.shape[0], -1, 1).to(p.device)).squeeze(2)
        return (conf / conf.sum(0, keepdim=True).clamp_min(1e-12)).T


@register_mix("random")
class RandomMix(TeacherMix):
    """One teacher per example, drawn uniformly and afresh each epoch (seeded); its expectation, the mean, where
    nothing was drawn (evaluation)."""

    def begin_epoch(self, sizes: dict[str, int], generator: torch.Generator) -> None:
        self.draws = {split: torch.randint(self.k, (n,), generator=generator) for split, n in sorted(sizes.items())}
        counts = torch.stack([torch.bincount(d, minlength=self.k) for d in self.draws.values()]).sum(0)
        self.history.append({"draws": counts.tolist()})

    def weights(self, logits: torch.Tensor, labels: Optional[torch.Tensor], split: Optional[str] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        draws = getattr(self, "draws", {})
        if split not in draws or idx is None:
            return self.uniform(logits)
        return F.one_hot(draws[split][idx.cpu()], self.k).float().to(logits.device)


@register_mix("learned")
class LearnedMix(TeacherMix):
    """softmax(θ) over teachers, θ one logit per teacher (``global``) or per gold class and teacher (``class``),
    starting from the mean and trained on the student's feedback (:func:`learn_epoch`)."""

    learned = True

    def __init__(self, teachers: int, classes: int, scope: str = "global") -> None:
        super().__init__(teachers, classes, scope)
        self.theta = nn.Parameter(torch.zeros((classes, teachers) if scope == "class" else (teachers,)))
        self.register_buffer("baseline", torch.zeros(()))  # REINFORCE's running mean reward
        self.register_buffer("baseline_set", torch.zeros((), dtype=torch.bool))

    def weights(self, logits: torch.Tensor, labels: Optional[torch.Tensor], split: Optional[str] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = torch.softmax(self.theta, dim=-1).to(logits.device)
        if self.scope == "global":
            return w.expand(logits.shape[1], -1)
        if labels is None:  # each class's weights, weighted by the teachers' mean probability of that class
            return torch.softmax(logits.float(), dim=-1).mean(0) @ w
        return w[labels.to(w.device)]

    def summary(self) -> dict[str, Any]:
        return {"weights": torch.softmax(self.theta.detach().float(), dim=-1).cpu().tolist()}


def build_mix(cfg: Any, teachers: int, classes: int) -> TeacherMix:
    m = cfg.method
    return MIXES[m.teacher_mix](teachers, classes, m.mix_scope)


def mix_logits(stack: torch.Tensor, weights: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """τ · log Σ_k w_k softmax(z_k / τ) for logits ``stack`` [K, B, C] and ``weights`` [B, K]; the weighted mean of
    the predictions [K, B] for regression. Exact for one teacher (or several identical): the soft loss is invariant
    to the shift this adds to the logits."""
    w = weights.T.to(stack.device, torch.float32)
    if kind == "regression":
        return (w * stack.float()).sum(0)
    log_p = F.log_softmax(stack.float() / temperature, dim=-1)
    return temperature * torch.logsumexp(torch.log(w).unsqueeze(-1) + log_p, dim=0)


def learn_epoch(ctx: Any, mix: LearnedMix, opt: torch.optim.Optimizer, agent: str,
                stack: Callable[[dict[str, Any]], torch.Tensor], epoch: int, salt: int,
                teacher_cls: Optional[Callable[[dict[str, Any]], list[torch.Tensor]]] = None) -> dict[str, float]:
    """One pass over the quiz split, one update of the mixing weights per quiz batch, on the feedback of the
    student ``agent`` (the phase's): ``stack(batch)`` gives the K teachers' soft-target logits of a train′ batch.

    pilot: d L_quiz(θ′) / dθ, θ′ one differentiable pilot step on the mixed targets. reinforce: a teacher drawn per
    example of the pilot's batches from the weights, the quiz loss after a pilot step on its targets as −reward, and
    the score-function gradient against a running mean of the rewards."""
    from mpdistil.pilot import apply_gradient, pilot_gradient

    m, rt = ctx.cfg.method, ctx.rt
    kind, temperature = ctx.task.kind, m.temperature
    train_iter = ctx.endless_batches(ctx.splits["train"], salt, epoch, 7)
    quiz = list(rt.batches(ctx.splits["quiz"], ctx.cfg.trainer.batch_size, shuffle=True,
                           generator=ctx.generator(salt, epoch, 8)))
    draw_gen = ctx.generator(salt, epoch, 9)
    sums: dict[str, float] = {}
    for batch in quiz:
        inner = [next(train_iter) for _ in range(m.unroll_steps)]
        if m.mix_estimator == "pilot":
            def soft(b: dict[str, Any]) -> torch.Tensor:
                z = stack(b)
                return mix_logits(z, mix.weights(z, b["labels"], "train", b["index"]), kind, temperature)

            grads, stats = pilot_gradient(ctx, [mix.theta], soft, inner, [batch], teacher_cls, agent=agent)
        else:
            log_prob = mix.theta.new_zeros(())
            chosen: dict[int, torch.Tensor] = {}  # by batch: the drawn teacher's logits of each example
            for b in inner:
                z = stack(b)
                w = mix.weights(z, b["labels"], "train", b["index"])
                pick = torch.multinomial(w.detach().float().cpu(), 1, generator=draw_gen).squeeze(1).to(w.device)
                log_prob = log_prob + torch.log(w.gather(1, pick.view(-1, 1))).mean()
                chosen[id(b)] = z.detach()[pick, torch.arange(z.shape[1], device=z.device)]
            _, stats = pilot_gradient(ctx, [mix.theta], lambda b, picked=chosen: picked[id(b)], inner, [batch],
                                      teacher_cls, agent=agent)
            reward = -stats["outer_loss"]
            if rt.world.active:  # the whole quiz batch's loss, so every process keeps the same baseline
                reward = -rt.world.sum_floats({"loss": stats["outer_loss"] * rt.share(batch)})["loss"]
            if not bool(mix.baseline_set):
                mix.baseline.fill_(reward)
                mix.baseline_set.fill_(True)
            advantage = reward - float(mix.baseline)
            mix.baseline.mul_(0.9).add_(0.1 * reward)
            grads = list(torch.autograd.grad(-advantage * log_prob / len(inner), [mix.theta]))
            stats["advantage"] = advantage
        apply_gradient([mix.theta], grads, opt, rt, "teacher mixing weights", batch)
        for key in ("outer_loss", "advantage"):
            if key in stats:
                sums[f"mix_{key}"] = sums.get(f"mix_{key}", 0.0) + float(stats[key])
    mix.history.append({"epoch": epoch, **mix.summary(), **{k: v / max(len(quiz), 1) for k, v in sums.items()}})
    return {k: v / max(len(quiz), 1) for k, v in sums.items()}


def weights_plot(path: Path, mix: TeacherMix, names: list[str]) -> Optional[Path]:
    """The learned weights after every epoch, one line per teacher (and class): what the student's feedback chose."""
    points = [h for h in mix.history if "weights" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in points]
    values = torch.tensor([h["weights"] for h in points])  # [E, K] or [E, C, K]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    series: Iterator[tuple[str, torch.Tensor]] = ((names[k], values[:, k]) for k in range(len(names))) \
        if values.dim() == 2 else ((f"{names[k]} | class {c}", values[:, c, k]) for c in range(values.shape[1])
                                   for k in range(len(names)))
    for label, line in series:
        ax.plot(epochs, line.numpy(), marker="o", label=label)
    ax.axhline(1.0 / len(names), color="grey", linestyle=":", label="mean")
    ax.set_xlabel("distillation epoch")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
