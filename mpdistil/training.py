"""The one training/evaluation loop every phase shares: device, precision, clipping, best keeping."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from mpdistil.checkpoints import kill_point
from mpdistil.data.encode import EncodedSplit, batch_indices, collate, iterate, model_inputs, to_device
from mpdistil.distributed import World


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN/inf; the run stops and keeps its last good checkpoint."""


def resolve_device(name: str, world: Optional[World] = None) -> torch.device:
    """The run's device; with several processes on CUDA, each rank's own GPU (``cuda:<local rank>``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from mpdistil.config import ConfigError

        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if name == "cuda" and world is not None and world.active:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


@dataclass
class Runtime:
    """Device and precision for a run; every phase gets tensors onto the device through it."""

    device: torch.device
    precision: str = "fp32"
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    pad_id: int = 0
    progress: bool = True
    bucket: int = 1  # shuffled batches of similar length: chunks of this many batches sorted by length
    max_padding: Optional[float] = None  # unshuffled (inference) batches: pad tokens at most this × real tokens
    scaler: Optional[Any] = field(default=None, repr=False)
    stage: str = ""  # "<phase>:<epoch>" being trained, set by run_group (for the MPDISTIL_KILL_AT test hook)
    world: World = field(default_factory=World)  # the run's processes (mpdistil/distributed.py)

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def optimizer(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        # The fused kernel updates all parameters in one pass; on CPU the default per-tensor loop made AdamW over
        # MiniLM's 11.7M-parameter embedding matrix a large share of every step.
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=self.weight_decay,
                                 fused=fused or None)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, what: str,
             params: Optional[Iterable[nn.Parameter]] = None, batch: Optional[dict[str, Any]] = None) -> None:
        """Backward, clip, step, zero; a non-finite loss stops the run before it corrupts weights.

        ``batch``: the training batch ``loss`` is the mean over (this rank's part of it, with several processes);
        without one the loss is the same on every rank (the policy's) and the ranks' gradients are averaged.
        """
        self.backward(loss, what, batch)
        self.apply(optimizer, params)

    def share(self, batch: Optional[dict[str, Any]]) -> float:
        """The weight of this rank's loss in the sum over ranks that makes the whole batch's mean loss."""
        if not self.world.active:
            return 1.0
        return float(batch["share"]) if batch is not None and "share" in batch else 1.0 / self.world.size

    def backward(self, loss: torch.Tensor, what: str, batch: Optional[dict[str, Any]] = None) -> None:
        """Accumulate the gradient of ``loss`` (scaled under fp16, so small gradients do not underflow)."""
        if not self.world.all_true(bool(torch.isfinite(loss.detach()).all())):
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) while training the {what}; lower the learning rate or "
                "use trainer.precision=fp32 — the last good checkpoint is kept"
            )
        if self.world.active:
            loss = loss * self.share(batch)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def apply(self, optimizer: torch.optim.Optimizer, params: Optional[Iterable[nn.Parameter]] = None) -> None:
        """Sum the ranks' gradients (several processes), clip and apply them, then zero them."""
        if self.world.active:
            self.world.sum_([p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None])
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip > 0:
            params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        kill_point(f"{self.stage}:mid")

    def batches(self, split: EncodedSplit, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[dict[str, Any]]:
        """Shuffled batches are training batches, unshuffled ones inference batches (length-sorted). With several
        processes each rank reads its part of every training batch and every n-th inference batch."""
        pad_id = self.pad_id if split.pad_id is None else split.pad_id  # a teacher's own encoding pads with its id
        if not self.world.active:
            return iterate(split, batch_size, pad_id, shuffle=shuffle, generator=generator, device=self.device,
                           bucket=self.bucket, max_padding=self.max_padding)
        return self._rank_batches(split, batch_size, shuffle, generator, pad_id)

    def _rank_batches(self, split: EncodedSplit, batch_size: int, shuffle: bool,
                      generator: Optional[torch.Generator], pad_id: int) -> Iterator[dict[str, Any]]:
        world = self.world
        lengths = split.lengths() if not shuffle or self.bucket > 1 else None
        for i, idx in enumerate(batch_indices(len(split), batch_size, shuffle, generator, lengths, self.bucket,
                                              self.max_padding)):
            if shuffle:
                part, offset, count = world.shard(idx)
                batch = collate(split, part, pad_id)
                batch.update(share=count / len(idx), offset=offset, count=count, batch_index=torch.tensor(idx))
            elif i % world.size == world.rank:
                batch = collate(split, idx, pad_id)
            else:
                continue
            yield to_device(batch, self.device)


def split_outputs(split: EncodedSplit, rt: Runtime, outputs: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
                  ) -> dict[str, torch.Tensor]:
    """``outputs(batch)`` (per-example CPU tensors) over a split's inference batches, assembled in split order.

    With several processes each rank computes its batches and every rank receives all of them: each example is
    computed once, and every rank holds the whole split's outputs.
    """
    parts = [(batch["index"].cpu(), outputs(batch)) for batch in rt.batches(split, rt.eval_batch_size)]
    if rt.world.active:
        parts = [part for rank_parts in rt.world.gather(parts) for part in rank_parts]
    store: dict[str, torch.Tensor] = {}
    for idx, values in parts:
        for key, val in values.items():
            if key not in store:
                store[key] = torch.zeros((len(split),) + tuple(val.shape[1:]))
            store[key][idx] = val
    return store


@torch.inference_mode()
def predict(agent: nn.Module, split: EncodedSplit, rt: Runtime, task: Optional[str] = None,
            with_pooled: bool = False) -> dict[str, torch.Tensor]:
    """Logits (and pooled / last-[CLS] vectors, [N, choices or 1, H]) for a split, in split order, on the CPU."""
    was_training = agent.training
    agent.eval()
    keys = ("logits", "pooled", "cls") if with_pooled else ("logits",)

    def outputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with rt.autocast():
            out = agent(**model_inputs(batch), task=task)
        n = batch["index"].shape[0]
        return {key: (val if key == "logits" else val.view(n, -1, val.shape[-1])).cpu()
                for key in keys for val in [getattr(out, key).float()]}

    try:
        return split_outputs(split, rt, outputs)
    finally:
        agent.train(was_training)


def predictions_from_logits(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return logits if kind == "regression" else logits.argmax(-1)


class BestKeeper:
    """Keeps the best state (in memory, on the CPU) by a selection score; higher is better."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.score = -math.inf
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.epoch: Optional[int] = None
        self.metrics: dict[str, Any] = {}

    def offer(self, module: nn.Module, score: float, epoch: int, metrics: Optional[dict[str, Any]] = None) -> bool:
        if not score > self.score and self.state is not None:
            return False
        self.score, self.epoch, self.metrics = score, epoch, dict(metrics or {})
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        return True

    def restore(self, module: nn.Module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "state": self.state, "epoch": self.epoch, "metrics": self.metrics}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.score, self.state = saved["score"], saved["state"]
        self.epoch, self.metrics = saved["epoch"], saved["metrics"]

