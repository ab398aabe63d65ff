"""One run over several processes (``torchrun``, or SLURM tasks): data parallelism without a module wrapper.

Every rank holds the same agents and reads the same seeded batch order. A training batch of
``trainer.batch_size`` examples is cut into one contiguous part per rank; each rank scales its loss by its
share of the batch, and the gradients are summed across ranks before clipping and the optimizer step, so
every rank takes the step a single process takes on the whole batch (up to the order of float sums).
Inference batches go to the ranks in turn and their outputs are gathered, so each example is evaluated
once and every rank holds every output.

DistributedDataParallel's wrapper is not used because the meta-gradient engines (``higher`` and
``torch.func.functional_call``) call the student's own forward with substituted weights, which the
wrapper does not see; summing gradients explicitly gives the same update for plain steps and lets a
meta-gradient computed on each rank's part be summed the same way.
"""
from __future__ import annotations

import atexit
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes; ``World()`` is a run of one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and prints."""
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> tuple[list[int], int, int]:
        """This rank's contiguous part of a global batch: (its indices, offset in the batch, count).

        A batch smaller than the number of ranks leaves some ranks without examples: such a rank reads the batch's
        first example with count 0, so it runs the same forward and backward as the others, and its loss is
        scaled by a share of 0.
        """
        n = len(indices)
        base, extra = divmod(n, self.size)
        count = base + (1 if self.rank < extra else 0)
        offset = self.rank * base + min(self.rank, extra)
        if count == 0:
            return [indices[0]], offset, 0
        return list(indices[offset:offset + count]), offset, count

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum tensors across ranks in place, in one collective (one flat buffer)."""
        if not self.active or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else flat.device
        flat = flat.to(device)
        dist.all_reduce(flat)
        start = 0
        for t in tensors:
            t.copy_(flat[start:start + t.numel()].view_as(t).to(t.device, t.dtype))
            start += t.numel()

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """A dict of floats summed across ranks (every rank must hold the same keys)."""
        if not self.active or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        self.sum_([t])
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank: a check that stops one rank (a non-finite loss) stops them all
        at the same step, instead of leaving the others waiting in the next collective."""
        if not self.active:
            return flag
        return self.sum_floats({"false": 0.0 if flag else 1.0})["false"] == 0.0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank: a decision only one rank may take (a sampled action, a clock)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def batch_rows(self, values: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Per-example ``values`` of this rank's part of a training batch, completed with the other ranks' parts
        into the whole batch's rows in batch order (a single process: ``values`` itself)."""
        if "batch_index" not in batch:
            return values
        offset, count = int(batch["offset"]), int(batch["count"])
        full = torch.zeros((len(batch["batch_index"]),) + tuple(values.shape[1:]), dtype=torch.float32,
                           device=values.device)
        full[offset:offset + count] = values[:count].float()
        self.sum_([full])
        return full

    def identity_fields(self) -> dict[str, Any]:
        """What the process count adds to a run's and a cached group's identity: the split of every batch into
        parts (float sums) and each rank's own dropout stream change the numbers. Nothing for one process, so
        single-process identities stay as they were."""
        return {"world_size": self.size} if self.active else {}

    def describe(self, device: torch.device) -> dict[str, Any]:
        """What results.json records about the run's processes: every rank's host and device."""
        ranks = self.gather({"rank": self.rank, "local_rank": self.local_rank, "host": socket.gethostname(),
                             "device": str(device)})
        return {"world_size": self.size, "backend": self.backend or None, "ranks": ranks}


def launched_world_size() -> int:
    """How many processes the launcher started for this run (1 without torchrun or several SLURM tasks)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return int(os.environ.get("SLURM_NTASKS", "1")) if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else 1


_WORLD: Optional[World] = None


def init_world(device: str) -> World:
    """Join the run's process group once per process (NCCL for CUDA devices, Gloo otherwise).

    torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; under SLURM with several tasks (the
    submitit launcher) the same variables are derived from the task's SLURM environment.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if launched_world_size() <= 1:
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    if "RANK" not in os.environ:
        _export_slurm_environment()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
        atexit.register(dist.destroy_process_group)
    _WORLD = World(rank, size, local_rank, backend)
    return _WORLD


def _export_slurm_environment() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK and the master's address from a SLURM task's environment (via submitit)."""
    from mpdistil.config import ConfigError

    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        raise ConfigError("this SLURM job has several tasks but submitit is not installed to set up the process "
                          "group; pip install -r requirements-sweeps.txt, or use one task per job") from None
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each task picks cuda:<local rank>
