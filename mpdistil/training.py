"""The one training/evaluation loop every phase shares: device, precision, clipping, best keeping."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn

from mpdistil.checkpoints import kill_point
from mpdistil.data.encode import EncodedSplit, iterate, model_inputs


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN/inf; the run stops and keeps its last good checkpoint."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from mpdistil.config import ConfigError

        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
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
             params: Optional[Iterable[nn.Parameter]] = None) -> None:
        """Backward, clip, step, zero; a non-finite loss stops the run before it corrupts weights."""
        self.backward(loss, what)
        self.apply(optimizer, params)

    def backward(self, loss: torch.Tensor, what: str) -> None:
        """Accumulate the gradient of ``loss`` (scaled under fp16, so small gradients do not underflow)."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) while training the {what}; lower the learning rate or "
                "use trainer.precision=fp32 — the last good checkpoint is kept"
            )
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def apply(self, optimizer: torch.optim.Optimizer, params: Optional[Iterable[nn.Parameter]] = None) -> None:
        """Clip and apply the accumulated gradients, then zero them."""
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
                generator: Optional[torch.Generator] = None):
        pad_id = self.pad_id if split.pad_id is None else split.pad_id  # a teacher's own encoding pads with its id
        return iterate(split, batch_size, pad_id, shuffle=shuffle, generator=generator, device=self.device,
                       bucket=self.bucket, max_padding=self.max_padding)


@torch.inference_mode()
def predict(agent: nn.Module, split: EncodedSplit, rt: Runtime, task: Optional[str] = None,
            with_pooled: bool = False) -> dict[str, torch.Tensor]:
    """Logits (and pooled / last-[CLS] vectors, [N, choices or 1, H]) for a split, in split order, on the CPU."""
    was_training = agent.training
    agent.eval()
    keys = ("logits", "pooled", "cls") if with_pooled else ("logits",)
    store: dict[str, Optional[torch.Tensor]] = dict.fromkeys(keys)
    try:
        for batch in rt.batches(split, rt.eval_batch_size):
            with rt.autocast():
                out = agent(**model_inputs(batch), task=task)
            idx = batch["index"].cpu()
            for key in keys:
                val = getattr(out, key).float()
                if key != "logits":
                    val = val.view(idx.shape[0], -1, val.shape[-1])
                if store[key] is None:
                    store[key] = torch.zeros((len(split),) + tuple(val.shape[1:]))
                store[key][idx] = val.cpu()
    finally:
        agent.train(was_training)
    return {k: v for k, v in store.items() if v is not None}


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

