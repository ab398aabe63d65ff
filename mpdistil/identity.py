"""One identity for everything a run reuses or resumes: cached agents, tokenised splits and checkpoints.

An identity is the values of the config fields that determine a result, the content hash of the data
it was computed from, and the identities of the results it started from. Its fingerprint names the
cache folder; the full identity is stored beside the entry and compared on load, so a collision or a
hand-edited entry is never trusted.

Which fields matter is declared where the result is produced: each phase lists its own
(``Phase.fields``); :data:`COMMON_FIELDS` shape every trained agent, :data:`FROZEN_TEACHER_FIELDS` every
phase that reads the teacher without training it; the data fields act through the
data's hash and the structure fields through the identity's kind; :data:`OUTSIDE_RESULTS` change how a
run is shown, logged or stored, never what it computes. A test walks the config schema and checks that
every field is in one of these places.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from omegaconf import OmegaConf

# Fields every trained agent depends on, whichever phase trains it.
COMMON_FIELDS = ("seed", "trainer.precision", "trainer.batch_size", "trainer.length_bucket", "trainer.grad_clip",
                 "trainer.weight_decay", "trainer.selection_split", "model.random_init", "model.config_overrides",
                 "model.attn_implementation")
# Fields that shape the frozen teacher's outputs: part of every phase that reads the teacher without training it.
FROZEN_TEACHER_FIELDS = ("model.teacher_dtype",)
# Fields that shape the mixture of several teachers (teachers=[...]): part of every phase that reads the frozen
# teachers, in runs with more than one (mpdistil/groups.py), so single-teacher identities are unchanged.
MIX_FIELDS = ("teachers", "method.teacher_mix", "method.mix_estimator", "method.mix_scope", "method.mix_lr")
# Fields that act only through the data they select or encode: their effect is in the data's content hash (for
# data.*, the transfer split's, in the identity of the phases that read it).
DATA_FIELDS = ("task", "model.tokenizer", "trainer.heldout_fraction", "data")
# Which phases run, grouped how: their names and the group's position are the kind of a group's identity.
STRUCTURE_FIELDS = ("method.phases",)
# How agents are measured after training: part of a run's identity (its checkpoint), never of a cached agent's.
EVALUATION_FIELDS = ("eval",)
# Fields that change what a run shows, where it reads or writes, or how fast it goes, never a number it computes
# (``audit`` is read by the teacher audit alone, which sets the run fields it needs from it).
# trainer.cache_teacher_outputs, trainer.gradient_checkpointing and trainer.eval_* are checked to be invisible in
# results by the tests.
OUTSIDE_RESULTS = ("resume", "skip_finished", "logger", "audit", "experiment_name", "data_dir", "task.data_dir",
                   "cache_dir", "model.name", "method.name",
                   "trainer.device", "trainer.deterministic", "trainer.progress", "trainer.num_threads",
                   "trainer.cache_teacher_outputs", "trainer.reuse_cache", "trainer.eval_batch_size",
                   "trainer.eval_max_padding", "trainer.per_device_batch_size", "trainer.save_student",
                   "trainer.save_teacher", "trainer.checkpoint_every", "trainer.checkpoint_min_interval_s",
                   "trainer.keep_checkpoint", "trainer.count_flops", "trainer.gradient_checkpointing")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def content_hash(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if not isinstance(node, Mapping) or (prefix and not node):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def covered(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies under one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def resolved_fields(cfg: Any) -> dict[str, Any]:
    """Every leaf of the resolved config, as ``dotted.key: value`` (JSON-normalised)."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return json.loads(json.dumps(flatten(container), default=str))


def field_values(cfg: Any, fields: Iterable[str]) -> dict[str, Any]:
    """The resolved values of the listed fields (a field naming a group takes every leaf under it)."""
    wanted = tuple(fields)
    return {k: v for k, v in sorted(resolved_fields(cfg).items()) if covered(k, wanted)}


def run_fields(cfg: Any) -> dict[str, Any]:
    """Every field that can change a number the run computes: the whole config minus :data:`OUTSIDE_RESULTS`."""
    return {k: v for k, v in sorted(resolved_fields(cfg).items()) if not covered(k, OUTSIDE_RESULTS)}


def identity(kind: str, fields: Mapping[str, Any], data: str,
             upstream: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """What determines one cached or resumable result: its kind, field values, data hash and inputs."""
    return {"kind": kind, "fields": dict(fields), "data": data, "upstream": dict(upstream or {})}
