"""Agents cached between runs: fine-tuned teachers and distilled students, keyed by :mod:`mpdistil.identity`.

An entry is a folder ``<cache>/<kind>/<fingerprint>/`` with ``state.pt`` (tensors only, read with
``weights_only=True``) and ``meta.json`` (the full identity, the state's checksum and the phases'
records). An entry whose identity, checksum or contents do not check out is ignored and rebuilt,
never trusted. The folder's file lock is held while an entry is looked up and built, so concurrent
sweep jobs build it once; it is an OS lock (flock), released when a killed process dies.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock

from mpdistil.atomic import torch_load, torch_save, write_json
from mpdistil.identity import file_checksum, fingerprint


class CacheEntry:
    """One cached result: module states (``state.pt``) plus ``meta.json`` (identity, checksum, records)."""

    def __init__(self, root: Path, kind: str, identity: dict[str, Any]) -> None:
        self.identity = json.loads(json.dumps(identity, default=str))
        self.folder = Path(root) / kind / fingerprint(self.identity)
        self.lock = FileLock(str(self.folder) + ".lock")

    def load(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """(state, records) when a complete entry of exactly this identity exists; None otherwise."""
        meta_path, state_path = self.folder / "meta.json", self.folder / "state.pt"
        if not (meta_path.is_file() and state_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("identity") != self.identity or meta.get("checksum") != file_checksum(state_path):
                return None
            return torch_load(state_path), meta.get("records", {})
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError):
            return None

    def save(self, state: dict[str, Any], records: dict[str, Any]) -> None:
        state_path = self.folder / "state.pt"
        torch_save(state, state_path)
        write_json(self.folder / "meta.json", {"identity": self.identity, "checksum": file_checksum(state_path),
                                               "records": records}, indent=1)
