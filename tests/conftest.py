"""Shared fixtures: offline hub, a temporary cache, the benchmark files beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MPDISTIL_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_or_skip(sub: str = "") -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"benchmark files not found at {path} (set MPDISTIL_SHARED_DATA to the shared/data folder)")
    return path
