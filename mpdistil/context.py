"""What the phases share during one run: data, agents, runtime, logger and the run's record."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mpdistil.data.encode import EncodedSplit, collate, to_device
from mpdistil.distributed import World
from mpdistil.loggers import Logger
from mpdistil.losses import layer_map
from mpdistil.metrics.task_metrics import compute_metrics
from mpdistil.models.agent import Agent
from mpdistil.models.meta_teacher import MetaTeacher
from mpdistil.training import BestKeeper, Runtime, predict, predictions_from_logits, split_outputs


@dataclass
class TaskInfo:
    name: str
    kind: str
    label_names: list[str]
    metrics: list[str]
    main_metric: str

    @property
    def num_outputs(self) -> int:
        return len(self.label_names) if self.kind == "classification" else 1


@dataclass
class AuxTask:
    """A curriculum action: another task's quiz split and how to score it."""

    info: TaskInfo
    quiz: EncodedSplit


@dataclass
class RunContext:
    cfg: Any
    rt: Runtime
    out_dir: Path
    cache_dir: Path
    logger: Logger
    task: TaskInfo
    splits: dict[str, EncodedSplit]  # "train", "quiz", dev split names, "test..." split names: the student's encoding
    dev_names: list[str]
    teacher: Agent
    student: Agent
    initial_student_state: dict[str, torch.Tensor]
    aux: dict[str, AuxTask] = field(default_factory=dict)
    agents: dict[str, nn.Module] = field(default_factory=dict)  # agents beyond teacher and student, by name
    records: dict[str, Any] = field(default_factory=dict)  # per phase, for results.json
    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # evaluated table rows, in order
    row_phase: dict[str, str] = field(default_factory=dict)  # row -> the phase that produced it
    predictions: dict[str, dict[str, list]] = field(default_factory=dict)  # row -> dev split -> per-example
    lineage: dict[str, str] = field(default_factory=dict)  # agent -> identity of the group that last trained it
    # content of the splits agents are trained and selected on, by the encodings a group reads: "teacher",
    # "student" or "both" (all three equal when teacher and student read one encoding)
    data_hashes: dict[str, str] = field(default_factory=dict)
    transfer_hash: str = ""  # content of the transfer split ("" without one): only the phases reading it depend on it
    timings: dict[str, float] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)  # per timed label, filled when trainer.count_flops is on
    flop_counter: Optional[FlopCounterMode] = None
    teacher_outputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # the optimizer training each agent while its group runs, by agent name (an Adam pilot continues its moments)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # the teacher's encoding of ``splits`` when its tokenizer differs from the student's (None: it reads ``splits``)
    teacher_view: Optional[dict[str, EncodedSplit]] = None
    tokenizers: dict[str, Any] = field(default_factory=dict)  # "teacher", "student": one object when shared
    # further teachers (``teachers=[...]``, agents "teacher_2", ...): each one's encoding of ``splits`` when its
    # tokenizer differs from the student's (None: it reads ``splits``)
    views: dict[str, Optional[dict[str, EncodedSplit]]] = field(default_factory=dict)

    @property
    def teacher_splits(self) -> dict[str, EncodedSplit]:
        """The splits as the teacher's tokenizer encodes them: the same examples in the same order as ``splits``."""
        return self.splits if self.teacher_view is None else self.teacher_view

    def splits_for(self, agent: nn.Module) -> dict[str, EncodedSplit]:
        """The encoding ``agent`` reads: the teacher's for the teacher and its copies, a further teacher's own, else
        the student's."""
        view = getattr(agent, "view", "student")
        if view == "teacher":
            return self.teacher_splits
        return self.views.get(view) or self.splits

    def data_hash(self, agents: Iterable[str]) -> str:
        """The data identity of a group that trains or reads ``agents``: the teacher's encoding alone for the
        teacher (so one fine-tuned teacher serves students of any tokenizer), the student's alone for agents that
        never see the teacher, both otherwise."""
        names = set(agents)
        kind = "both" if "teacher" in names and names - {"teacher"} else "teacher" if "teacher" in names else "student"
        return self.data_hashes[kind]

    @property
    def further_teachers(self) -> list[str]:
        """The names of the teachers beyond the model group's (``teachers=[...]``), in order."""
        return list(self.views)

    def teacher_batch(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        """The teacher's encoding of the examples of a (student's) batch of ``split``, matched by index; the batch
        itself when both read one encoding."""
        if self.teacher_view is None:
            return batch
        view = self.teacher_view[split]
        return to_device(collate(view, batch["index"].cpu().tolist(), view.pad_id), self.rt.device)

    @property
    def selection_split(self) -> Optional[str]:
        """The split every "keep the best" choice reads (None: ``trainer.selection_split=last``, no choice)."""
        protocol = self.cfg.trainer.selection_split
        return {"dev": self.dev_names[0], "last": None}.get(protocol, protocol)

    def select(self, keeper: BestKeeper, module: nn.Module, epoch: int,
               metrics: Callable[[str], dict[str, float]]) -> dict[str, float]:
        """Offer ``module`` after ``epoch`` to ``keeper``, scored by ``metrics(selection split)``; without a
        selection split the latest epoch is kept and nothing is evaluated."""
        split = self.selection_split
        if split is None:
            keeper.offer(module, float(epoch), epoch, {})
            return {}
        scores = metrics(split)
        keeper.offer(module, self.score(scores), epoch, scores)
        return scores

    def agent(self, name: str) -> nn.Module:
        return self.all_agents()[name]

    def all_agents(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "student": self.student, **self.agents}

    def generator(self, *salt: int) -> torch.Generator:
        """A seeded generator per (phase, epoch): data order is reproducible and resumable."""
        g = torch.Generator()
        g.manual_seed(hash((int(self.cfg.seed),) + salt) & 0x7FFFFFFF)
        return g

    def endless_batches(self, split: EncodedSplit, *salt: int) -> Iterator[dict[str, Any]]:
        """Shuffled training batches of ``split`` without end, reshuffled on each pass by ``(*salt, pass)``."""
        sweep = 0
        while True:
            yield from self.rt.batches(split, self.cfg.trainer.batch_size, shuffle=True,
                                       generator=self.generator(*salt, sweep))
            sweep += 1

    def score(self, metrics: dict[str, float]) -> float:
        return float(metrics[self.task.main_metric])

    def evaluate(self, agent: nn.Module, split: str) -> dict[str, float]:
        out = predict(agent, self.splits_for(agent)[split], self.rt)
        return self.metrics_from_logits(out["logits"], split)

    def metrics_from_logits(self, logits: torch.Tensor, split: str) -> dict[str, float]:
        labels = self.splits[split].labels
        preds = predictions_from_logits(logits, self.task.kind)
        return compute_metrics(self.task.metrics, preds.numpy(), labels.numpy())

    def mapped_teacher_layers(self) -> list[int]:
        return [t for _, t in layer_map(self.student.num_layers, self.teacher.num_layers, self.cfg.method.layer_map)]

    def teacher_cache(self, split: str, name: str = "teacher") -> dict[str, torch.Tensor]:
        """Frozen-teacher outputs for a split, computed once per run (the teacher never changes after phase 1), on
        the teacher's encoding, in example order: row i belongs to example i of the student's split too. ``name``:
        a further teacher's (logits and pooled vectors; PKD reads the model group's teacher alone)."""
        key = split if name == "teacher" else f"{name}/{split}"
        if key not in self.teacher_outputs or not self.cfg.trainer.cache_teacher_outputs:
            agent = self.agent(name)
            view = self.splits_for(agent)[split]
            if len(view) != len(self.splits[split]):
                raise RuntimeError(f"the {name}'s encoding of {split} has {len(view)} examples, the student's "
                                   f"{len(self.splits[split])}: teacher outputs would not align by index")
            layers = self.mapped_teacher_layers() if self.cfg.method.beta > 0 and name == "teacher" else []
            self.teacher_outputs[key] = teacher_outputs(agent, view, self.rt, layers)
        return self.teacher_outputs[key]

    def teacher_stack(self, split: str, idx: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """[K, B, ...]: ``first`` (the model group's teacher's, or T''s, logits of examples ``idx``) and each further
        teacher's frozen logits of the same examples, on ``first``'s device."""
        rest = [self.teacher_cache(split, name)["logits"][idx].to(first.device, first.dtype)
                for name in self.further_teachers]
        return torch.stack([first, *rest])

    def mixture(self, owner: str = "student") -> Optional[nn.Module]:
        """The teacher mix (:mod:`mpdistil.mixing`) of the student ``owner`` distils, in a run with several teachers;
        the main student's for T' and the curriculum."""
        return self.agents.get(f"{owner}_teacher_mix")

    def representation(self, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """What T' reads from a frozen-teacher cache: pooled vectors or the last [CLS]."""
        return cache["pooled"] if self.cfg.method.meta_input == "pooled" else cache["last_cls"]

    def meta_teacher(self) -> MetaTeacher:
        """T', created on first use from the teacher's head (or as an MLP), shared by phases 2–4."""
        if "meta_teacher" not in self.agents:
            m = self.cfg.method
            self.agents["meta_teacher"] = MetaTeacher(
                m.meta_teacher, self.teacher.hidden_size, self.student.hidden_size, self.task.num_outputs,
                teacher_head=self.teacher.head(None), regression=self.task.kind == "regression",
            ).to(self.rt.device)
        return self.agents["meta_teacher"]

    @torch.no_grad()
    def meta_teacher_logits(self, split: str) -> torch.Tensor:
        """T' over the frozen teacher encoder: the meta-teacher row of the table."""
        mt = self.meta_teacher()
        h = self.representation(self.teacher_cache(split))
        logits = mt(h.view(-1, h.shape[-1]).to(self.rt.device), "teacher", self.splits[split].num_choices).float()
        return self.mixed_teacher_logits(split, logits) if self.further_teachers else logits.cpu()

    @torch.no_grad()
    def mixed_teacher_logits(self, split: str, first: Optional[torch.Tensor] = None,
                             owner: str = "student") -> torch.Tensor:
        """The teachers' mixture on a split as a model of its own (an ensemble at τ = 1), with label-free weights:
        those of the student ``owner`` distils (else the main student's, else the mean). ``first``: logits in the
        model group's teacher's place (T''s, for the meta-teacher row), else that teacher's."""
        from mpdistil.mixing import MeanMix, mix_logits

        if first is None:
            first = self.teacher_cache(split)["logits"]
        stack = self.teacher_stack(split, torch.arange(first.shape[0]), first.float())
        mix = self.mixture(owner) or self.mixture() or MeanMix(stack.shape[0], self.task.num_outputs)
        return mix_logits(stack, mix.label_free(stack), self.task.kind, 1.0).cpu()

    def timed(self, name: str) -> _Timer:
        return _Timer(self, name)


def build_context(cfg: Any, data: Any, out_dir: Path, cache_dir: Path, world: Optional[World] = None) -> RunContext:
    """Teacher and student on the run's device, the runtime every phase trains through, and the logger (rank 0's
    alone with several processes)."""
    from omegaconf import OmegaConf

    from mpdistil.atomic import write_json
    from mpdistil.data.prepare import encoding_hashes
    from mpdistil.loggers import build_logger
    from mpdistil.models.agent import build_agents, check_pkd_widths, enable_gradient_checkpointing
    from mpdistil.training import resolve_device

    info, t = data.task, cfg.trainer
    teacher, student, sources = build_agents(cfg.model, info.name, info.kind, info.num_outputs, info.label_names,
                                             cfg.seed, cache_dir)
    check_pkd_widths(teacher, student, cfg.method.beta, cfg.method.pkd_projection)
    if t.gradient_checkpointing:
        for agent in (teacher, student):  # copies of either (clones, MetaDistil's teacher) inherit it
            enable_gradient_checkpointing(agent.hf)
    world = world or World()
    rt = Runtime(resolve_device(t.device, world), t.precision, t.grad_clip, t.weight_decay, t.eval_batch_size,
                 data.pad_id, t.progress and world.is_main, bucket=t.length_bucket, max_padding=t.eval_max_padding,
                 world=world)
    teacher.to(rt.device)
    student.to(rt.device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_json(out_dir / "config.json", resolved)
    logger = build_logger(cfg.logger, resolved, out_dir, f"{info.name}-{cfg.method.name}-s{cfg.seed}") \
        if world.is_main else Logger()
    ctx = RunContext(cfg=cfg, rt=rt, out_dir=out_dir, cache_dir=cache_dir, logger=logger, task=info,
                     splits=data.splits, dev_names=data.dev_names, teacher=teacher, student=student,
                     initial_student_state={k: v.detach().clone() for k, v in student.state_dict().items()},
                     aux=data.aux, sources=sources, teacher_view=data.teacher_splits, tokenizers=data.tokenizers)
    if len(cfg.teachers) > 1:
        from mpdistil.ensemble import add_further_teachers

        add_further_teachers(ctx)
    ctx.data_hashes = encoding_hashes(ctx.splits, ctx.teacher_view, ctx.selection_split)
    ctx.transfer_hash = data.transfer_hash()
    return ctx


@torch.inference_mode()
def teacher_outputs(teacher: Agent, split: EncodedSplit, rt: Runtime, layers: list[int]) -> dict[str, torch.Tensor]:
    """Logits, pooled vectors and the [CLS] of the requested layers, in split order, on the CPU."""
    was = teacher.training
    teacher.eval()

    def outputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with rt.autocast():
            out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch.get("token_type_ids"), output_hidden=bool(layers))
        b = batch["index"].shape[0]
        values = {"logits": out.logits.float().cpu(),
                  "pooled": out.pooled.float().view(b, -1, out.pooled.shape[-1]).cpu(),
                  "last_cls": out.cls.float().view(b, -1, out.cls.shape[-1]).cpu()}
        if layers:
            values["cls"] = torch.stack([out.cls_states[layer - 1].float() for layer in layers], 1).view(
                b, -1, len(layers), out.cls_states[0].shape[-1]).cpu()
        return values

    try:
        return split_outputs(split, rt, outputs)
    finally:
        teacher.train(was)


class _Timer:
    """Wall time of a labelled stretch of the run, and its matmul FLOPs while a counter is on; summed per label."""

    def __init__(self, ctx: RunContext, name: str) -> None:
        self.ctx, self.name = ctx, name

    def __enter__(self) -> _Timer:
        counter = self.ctx.flop_counter
        self.flops = counter.get_total_flops() if counter is not None else 0
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        ctx, name = self.ctx, self.name
        ctx.timings[name] = ctx.timings.get(name, 0.0) + time.perf_counter() - self.start
        if ctx.flop_counter is not None:
            ctx.flops[name] = ctx.flops.get(name, 0) + ctx.flop_counter.get_total_flops() - self.flops
