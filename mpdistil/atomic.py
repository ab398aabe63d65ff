"""Every file a run or a cache writes goes through here: temporary file beside the target, fsync,
rename. A kill at any moment leaves the old file or the new one, never a truncated one. Torch files hold
tensors and plain containers only and are read back with ``weights_only=True``."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # after a node crash the rename never points at unwritten blocks
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run folders and caches are shared between jobs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(path: PathLike, writer: Callable[[str], None]) -> Path:
    """``writer(tmp_path)`` fills a temporary file that then replaces ``path``."""
    target = Path(path)
    with _temporary_beside(target) as tmp:
        writer(tmp)
    return target


def write_bytes(path: PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return write_with(path, write)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=_jsonable) + "\n")


def plain(obj: Any) -> Any:
    """Tensors and plain containers only: NumPy scalars become Python numbers and NumPy arrays tensors, so that
    everything written with :func:`torch_save` loads with ``weights_only=True``."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [plain(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Tensor, str, int, float, bool, type(None))):
        return obj
    raise TypeError(f"{type(obj).__name__} cannot be stored in a weights-only file")


def torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` of tensors and plain containers to a path (not a Python file object), atomically."""
    import torch

    data = plain(obj)
    return write_with(path, lambda tmp: torch.save(data, tmp))


def torch_load(path: PathLike) -> Any:
    """Read a file written by :func:`torch_save` without unpickling code: caches and checkpoints live in folders
    that several jobs and users share, so a file that needs more than tensors and containers is an error
    (``pickle.UnpicklingError``) for the caller to refuse, never something to run."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
