"""Caches of trained agents shared between runs (a fine-tuned teacher, a distilled student).

An entry is keyed by a hash of everything that determines its weights, written atomically and
checked by checksum on load; a lock makes concurrent sweep jobs build an entry once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from filelock import FileLock

from mpdistil.atomic import torch_save, write_json
from mpdistil.data.encode import EncodedSplit


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def split_fingerprint(split: EncodedSplit) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(split.input_ids).encode())
    if split.labels is not None:
        h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:20]


def file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheEntry:
    """One cached agent state: ``state.pt`` plus ``meta.json`` (key, checksum, record)."""

    def __init__(self, root: Path, kind: str, key: dict[str, Any]) -> None:
        self.key = key
        self.folder = Path(root) / kind / fingerprint(key)
        self.lock = FileLock(str(self.folder) + ".lock")

    def load(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """(state, record) when a complete, uncorrupted entry exists; None otherwise."""
        meta_path, state_path = self.folder / "meta.json", self.folder / "state.pt"
        if not (meta_path.is_file() and state_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("checksum") != file_checksum(state_path) or meta.get("key") != json.loads(
                    json.dumps(self.key, default=str)):
                return None
            return torch.load(state_path, map_location="cpu", weights_only=False), meta.get("record", {})
        except (OSError, ValueError, RuntimeError):
            return None

    def save(self, state: dict[str, Any], record: dict[str, Any]) -> None:
        state_path = self.folder / "state.pt"
        torch_save(state, state_path)
        meta = {"key": self.key, "checksum": file_checksum(state_path), "record": record}
        write_json(self.folder / "meta.json", meta, indent=1)


def teacher_cache_key(ctx: Any) -> dict[str, Any]:
    c = ctx.cfg
    return {
        "teacher": ctx.sources.get("teacher"), "model": {k: c.model[k] for k in ("teacher", "config_overrides",
                                                                                  "attn_implementation")},
        "task": ctx.task.name, "train": split_fingerprint(ctx.splits["train"]),
        "selection": split_fingerprint(ctx.splits[ctx.selection_split]), "seed": c.seed,
        "epochs": c.method.teacher_epochs, "lr": c.method.teacher_lr, "batch": c.trainer.batch_size,
        "bucket": c.trainer.length_bucket, "precision": c.trainer.precision, "clip": c.trainer.grad_clip, "wd": c.trainer.weight_decay,
        "dropout_off": c.method.authors_no_dropout,
    }


CURRICULUM_ONLY = ("curriculum", "curriculum_tasks", "reward", "episodes", "episode_length", "gamma", "policy_lr",
                   "policy_state", "curriculum_lr", "select_every", "authors_episode_update", "phases", "name")


UNDISTILLED_FIELDS = ("student_epochs", "student_lr", "authors_no_dropout")


def student_cache_key(ctx: Any, group: str) -> dict[str, Any]:
    """Everything that shapes a student trained by a distill/undistilled group (not the curriculum's switches),
    so ablations over phase-4 settings reuse phases 1–3."""
    c = ctx.cfg
    if group == "undistilled":  # labels only: the same baseline serves every method
        method = {k: c.method[k] for k in UNDISTILLED_FIELDS}
    else:
        method = {k: v for k, v in c.method.items() if k not in CURRICULUM_ONLY}
    return {"teacher": teacher_cache_key(ctx), "group": group, "method": method,
            "model": {k: c.model[k] for k in ("student", "student_layers", "config_overrides")},
            "batch": c.trainer.batch_size, "bucket": c.trainer.length_bucket, "cache_outputs": c.trainer.cache_teacher_outputs}
