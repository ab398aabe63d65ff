"""Random state: seeding a run and each phase group, and saving/restoring the generators for resumption."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (CPU and every GPU); ``deterministic`` also picks deterministic GPU kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede the first cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 results differ between GPU generations
        torch.backends.cudnn.allow_tf32 = False


def seed_group(seed: int, index: int) -> None:
    """Each phase group starts from random states fixed by (seed, group index), so it draws the same numbers
    whether the groups before it were trained here, loaded from a cache or restored from a checkpoint."""
    group_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    random.seed(group_seed)
    np.random.seed(group_seed)
    torch.manual_seed(group_seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain containers (a weights-only checkpoint holds it)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Dropout, new heads and the curriculum's sampling draw from these global generators."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
