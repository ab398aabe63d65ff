"""One wrapper for teacher and student: an HF sequence classifier plus one extra head per task.

The main task's head *is* the HF model's own classifier, so ``save_pretrained`` of
``agent.hf`` gives a folder that ``AutoModelForSequenceClassification`` loads with identical
predictions. Auxiliary (curriculum) tasks get their own heads of the same form on the same pooled vector.

Two forms of head are supported, and "pooled" means the vector the head reads:

- BERT-style (BERT, MiniLM, DeBERTa-v2, ALBERT): a linear ``classifier`` on the pooler's output
  (dense + tanh of the first token, part of the encoder); the agent applies the dropout in between.
- RoBERTa-style (RoBERTa, XLM-R, MPNet, ELECTRA): ``classifier.dense`` + ``classifier.out_proj`` on
  the first token's last hidden state. The dense layer and its activation are *inside* the head, so
  the pooled vector is the first token's last hidden state itself, and the head applies its own dropouts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from mpdistil.config import ConfigError
from mpdistil.models.loading import load_classifier, load_config, resolve_model_source


@dataclass
class AgentOutput:
    logits: torch.Tensor  # [B, C] (classification, multiple choice) or [B] (regression)
    pooled: torch.Tensor  # the vector the classifier reads, before dropout: [B(*choices), H]
    cls: Optional[torch.Tensor] = None  # last layer's [CLS] hidden state: [B(*choices), H]
    cls_states: Optional[tuple[torch.Tensor, ...]] = None  # [CLS] of each layer 1..L, [B(*choices), H]
    # what PKD compares with the teacher's [CLS] states: cls_states, through the learned maps if the agent has them
    pkd_states: Optional[tuple[torch.Tensor, ...]] = None


def is_first_token_head(head: Any) -> bool:
    """A RoBERTa-style classification head: ``dense`` and ``out_proj`` linear layers reading the first token."""
    return isinstance(getattr(head, "dense", None), nn.Linear) and isinstance(getattr(head, "out_proj", None),
                                                                               nn.Linear)


class FirstTokenHead(nn.Module):
    """A RoBERTa-style head applied to pooled vectors [N, H]: the HF head reads ``features[:, 0]`` of [N, T, H]."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled.unsqueeze(1))


class Agent(nn.Module):
    """An encoder with a head per task; forward takes keyword tensors so higher/func can call it."""

    def __init__(self, hf_model: PreTrainedModel, main_task: str, kind: str, view: str = "student") -> None:
        super().__init__()
        head = getattr(hf_model, "classifier", None)
        self.first_token = is_first_token_head(head)
        if not (isinstance(head, nn.Linear) or self.first_token):
            raise ConfigError(
                f"{type(hf_model).__name__} has neither a linear `classifier` head (BERT-style: BERT, MiniLM, "
                "DeBERTa-v2, ALBERT, ...) nor a `classifier.dense` + `classifier.out_proj` head (RoBERTa-style: "
                "RoBERTa, XLM-R, MPNet, ELECTRA, ...); choose an encoder with one of them"
            )
        self.hf = hf_model
        self.main_task = main_task
        self.kinds: dict[str, str] = {main_task: kind}
        self.heads = nn.ModuleDict()
        # whose tokenizer's encoding of the data this agent reads: "teacher" (the teacher and copies of it) or
        # "student"; the two differ when the models have different tokenizers
        self.view = view
        # learned maps to the teacher's width, one per layer, for PKD (``method.pkd_projection=linear``); empty
        # otherwise, so the agent's parameters and state are those of its encoder and heads alone
        self.pkd_projection = nn.ModuleList()
        # a RoBERTa-style head applies its own dropouts
        self.dropout = nn.Identity() if self.first_token else getattr(hf_model, "dropout", None) or nn.Identity()

    @property
    def num_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def layer_width(self) -> int:
        """Width of each layer's hidden states (the [CLS] states PKD compares)."""
        return int(self.hf.config.hidden_size)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled vector."""
        head = self.hf.classifier
        return int(head.dense.in_features if self.first_token else head.in_features)

    def add_task(self, name: str, num_outputs: int, kind: str) -> None:
        """A fresh head for an auxiliary task, of the main head's form, on the same pooled vector.

        BERT-style: a linear layer (the pooler before it is shared). RoBERTa-style: a copy of the main
        head's structure (dense, activation, dropouts) with fresh weights and ``num_outputs`` outputs,
        the head the HF model would build for that task.
        """
        if name in self.kinds:
            return
        std = getattr(self.hf.config, "initializer_range", 0.02)
        if self.first_token:
            body = copy.deepcopy(self.hf.classifier)
            body.out_proj = nn.Linear(body.out_proj.in_features, num_outputs)
            for layer in (body.dense, body.out_proj):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)
            head: nn.Module = FirstTokenHead(body)
        else:
            head = nn.Linear(self.hidden_size, num_outputs)
            nn.init.normal_(head.weight, std=std)
            nn.init.zeros_(head.bias)
        self.heads[name] = head.to(self.main_head_weight().device)
        self.kinds[name] = kind

    def add_pkd_projection(self, width: int, seed: int) -> None:
        """Learned maps Linear(layer width, ``width``), one per layer, applied to the [CLS] states that PKD compares
        with a teacher whose layers are ``width`` wide. They are initialised from ``seed`` alone (so every copy of
        the initial student gets the same maps, and the run's random stream is left as it was), are part of the
        agent's parameters and state (trained, selected, cached and checkpointed with it), and are not part of
        the saved HF model."""
        if len(self.pkd_projection):
            return
        std = getattr(self.hf.config, "initializer_range", 0.02)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            maps = [nn.Linear(self.layer_width, width) for _ in range(self.num_layers)]
            for layer in maps:
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)
        device = self.main_head_weight().device
        self.pkd_projection.extend(layer.to(device) for layer in maps)

    def main_head_weight(self) -> torch.Tensor:
        """The weight of the main head's first layer: [H, H] (dense) for RoBERTa-style heads, [C, H] for linear."""
        head = self.hf.classifier
        return head.dense.weight if self.first_token else head.weight

    def head(self, task: Optional[str]) -> nn.Module:
        """The head of ``task`` (the main task's when None) as a map from pooled vectors [N, H] to outputs."""
        if task not in (None, self.main_task):
            return self.heads[task]
        return FirstTokenHead(self.hf.classifier) if self.first_token else self.hf.classifier

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor],
             output_hidden: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[tuple[torch.Tensor, ...]]]:
        """Pooled vector exactly as the HF classifier reads it, the last [CLS], optionally every layer's."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.hf.base_model(**kwargs, output_hidden_states=output_hidden, return_dict=True)
        pooled = out.last_hidden_state[:, 0] if self.first_token else getattr(out, "pooler_output", None)
        if pooled is None:
            pooler = getattr(self.hf, "pooler", None)
            if pooler is None:
                raise ConfigError(f"{type(self.hf).__name__} exposes no pooled output; use a BERT-like encoder")
            pooled = pooler(out.last_hidden_state)
        cls_states = tuple(h[:, 0] for h in out.hidden_states[1:]) if output_hidden else None
        return pooled, out.last_hidden_state[:, 0], cls_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None, task: Optional[str] = None,
                output_hidden: bool = False, **_: Any) -> AgentOutput:
        choices = input_ids.shape[1] if input_ids.dim() == 3 else 0
        if choices:
            flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731
            input_ids, attention_mask, token_type_ids = flat(input_ids), flat(attention_mask), flat(token_type_ids)
        pooled, cls, cls_states = self.pool(input_ids, attention_mask, token_type_ids, output_hidden)
        pkd_states = cls_states
        if cls_states is not None and len(self.pkd_projection):
            pkd_states = tuple(proj(h) for proj, h in zip(self.pkd_projection, cls_states))
        logits = self.head(task)(self.dropout(pooled))
        kind = self.kinds.get(task or self.main_task)
        if choices:
            logits = logits.view(-1, choices)
        elif kind == "regression":
            logits = logits.squeeze(-1)
        return AgentOutput(logits=logits, pooled=pooled, cls=cls, cls_states=cls_states, pkd_states=pkd_states)

def _hf_kwargs(num_labels: int, kind: str, label_names: list[str], attn: Optional[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if kind == "regression":
        kwargs["problem_type"] = "regression"
    elif kind == "classification":
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if attn:
        kwargs["attn_implementation"] = attn
    return kwargs


def build_agents(model_cfg: Any, main_task: str, kind: str, num_labels: int, label_names: list[str],
                 seed: int, cache_dir: Optional[Any] = None) -> tuple[Agent, Agent, dict[str, str]]:
    """Teacher and student for the main task. The student defaults to the teacher's first layers."""
    kwargs = _hf_kwargs(num_labels, kind, label_names, model_cfg.attn_implementation)
    teacher_src, teacher_label = resolve_model_source(model_cfg.teacher, cache_dir)
    torch.manual_seed(seed)
    teacher_hf = teacher_model(teacher_src, model_cfg.random_init, dict(model_cfg.config_overrides), kwargs)
    if model_cfg.student:
        student_src, student_label = resolve_model_source(model_cfg.student, cache_dir)
        layers = model_cfg.student_layers
        if layers is not None:  # the first layers of another model, e.g. a 3-layer MiniLM under an MPNet teacher
            available = load_config(student_src).num_hidden_layers
            if layers > available:
                raise ConfigError(f"model.student_layers={layers} exceeds the {available} layers of model.student="
                                  f"{model_cfg.student}; set model.student_layers<={available} or null (all)")
            if layers < available:
                kwargs = {**kwargs, "num_hidden_layers": layers}
                student_label = f"{student_label}[:{layers} layers]"
        student_hf = load_classifier(student_src, **kwargs)
    else:
        layers = model_cfg.student_layers
        if layers is None:
            raise ConfigError("model.student or model.student_layers must be set; e.g. model.student_layers=3")
        if layers > teacher_hf.config.num_hidden_layers:
            raise ConfigError(
                f"model.student_layers={layers} exceeds the teacher's {teacher_hf.config.num_hidden_layers} layers"
            )
        student_label = f"{teacher_label}[:{layers} layers]"
        if model_cfg.random_init:
            overrides = {**dict(model_cfg.config_overrides), "num_hidden_layers": layers}
            config = load_config(teacher_src, **overrides, **kwargs)
            student_hf = AutoModelForSequenceClassification.from_config(config)
            student_hf.load_state_dict(teacher_hf.state_dict(), strict=False)
        else:
            student_hf = load_classifier(teacher_src, num_hidden_layers=layers, **kwargs)
        if model_cfg.student_init == "random":
            student_hf = reinitialised(student_hf, seed)
            student_label += " (random init)"
    return Agent(teacher_hf, main_task, kind, view="teacher"), Agent(student_hf, main_task, kind), {
        "teacher": teacher_label, "student": student_label}


def teacher_model(source: str, random_init: bool, overrides: dict[str, Any], kwargs: dict[str, Any]
                  ) -> PreTrainedModel:
    """A teacher's HF classifier: pretrained weights, or (the test presets) a random model of the given shape."""
    if random_init:
        return AutoModelForSequenceClassification.from_config(load_config(source, **overrides, **kwargs))
    return load_classifier(source, **kwargs)


def build_further_teacher(spec: Any, name: str, main_task: str, kind: str, num_labels: int, label_names: list[str],
                          seed: int, cache_dir: Optional[Any] = None) -> tuple[Agent, str]:
    """A further teacher (:class:`mpdistil.mixing.TeacherSpec`) and its source label. Built from ``seed`` as the
    model group's teacher is, in its own random stream: the run's stream is left as it was, and a further teacher
    identical to the first starts from the same weights."""
    source, label = resolve_model_source(spec.source, cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = teacher_model(source, spec.random_init, spec.overrides,
                           _hf_kwargs(num_labels, kind, label_names, spec.attn_implementation))
    return Agent(hf, main_task, kind, view=name), label


def reinitialised(hf: PreTrainedModel, seed: int) -> PreTrainedModel:
    """A model of ``hf``'s architecture and shape with every weight (embeddings too) freshly initialised
    (``model.student_init=random``): whether a student can pass its teacher may hang on ability it already holds.

    Drawn from its own stream of ``seed``, so it never repeats the draws of a random teacher built from ``seed``
    and leaves the run's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hash((int(seed), 11)) & 0x7FFFFFFF)
        fresh = AutoModelForSequenceClassification.from_config(copy.deepcopy(hf.config))
    return fresh.to(hf.dtype)


def check_pkd_widths(teacher: Agent, student: Agent, beta: float, projection: str) -> None:
    """PKD compares the [CLS] states of paired layers: of different widths only through learned maps. Checked as
    soon as both agents are built, before any training."""
    if beta > 0 and projection == "none" and student.layer_width != teacher.layer_width:
        raise ConfigError(f"method.beta={beta} compares [CLS] states of width {student.layer_width} (student) and "
                          f"{teacher.layer_width} (teacher) layer by layer; set method.pkd_projection=linear "
                          "(a learned map per layer) or method.beta=0")


def enable_gradient_checkpointing(hf: PreTrainedModel) -> None:
    """Recompute the encoder's layer activations in backward (``trainer.gradient_checkpointing``).

    The non-reentrant form keeps the RNG state of the forward, so dropout masks and every number stay as without
    it. Its recomputation reads the module's own parameters, which is why ``torch.func`` pilot steps (weights
    passed functionally) are refused with it (:func:`mpdistil.pilot.check_pilot`); ``higher``'s patched copy of the
    model does not checkpoint at all, so its pilot steps stay exact and keep their activations.
    """
    if not hf.supports_gradient_checkpointing:
        raise ConfigError(f"{type(hf).__name__} cannot recompute its activations (no gradient checkpointing "
                          "in transformers); set trainer.gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    enable = getattr(hf, "activation_checkpointing_enable", None)  # its name from transformers 5 on
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(agent: nn.Module) -> int:
    return sum(p.numel() for p in agent.parameters())
