"""First run on a GPU: prove the CUDA path of this codebase in one command (about 10 minutes on one GPU).

    python experiments/gpu_check.py [--out experiments/results/gpu_check.json] [--data-dir SUPERGLUE]

Without a CUDA device it prints one line and exits with code 2 before importing anything but torch.
With one it runs these checks, each recorded with its numbers, tolerance and peak GPU memory:

- ``tiny_cpu_vs_cuda``, ``minilm_cpu_vs_cuda``: the same fp32 run (``trainer.deterministic=true``, same
  seed) on the CPU and on CUDA; every phase's last training losses and every row's dev predictions must
  agree within a tolerance, not exactly (see ``Tolerance`` and ``TINY``/``MINILM`` below, and why);
- ``minilm_bf16``, ``minilm_fp16``: the MiniLM run under bf16 autocast and under fp16 with GradScaler must
  finish with finite losses and metrics, and every row well above chance on a task it learns easily;
- ``meta_gradient_cpu_vs_cuda``: the second-order pilot meta-gradient (``mpdistil.meta.meta_gradient``,
  both backends, MATH attention kernel) of a MiniLM-L6 student on CUDA against the CPU, in fp32;
- ``anchor_timing``: the reference job of ``bench_anchor.py`` at a reduced size, timed on the GPU;
- ``meta_step_timing``: a plain step against a second-order meta step (``bench_meta_step.py``) on the GPU;
- ``two_gpus_vs_one`` (with two GPUs or more): the tiny run data-parallel on two GPUs (torchrun, NCCL) against
  the same run on one, with the same global batch and no pilot meta-gradient (each process takes its own
  pilot step on its part of a batch, which one process does not reproduce), within the tiny run's tolerance.

Every run is a fresh ``main.py`` process with its own empty cache folder, so each one trains every agent
(a cached CPU teacher is never reused by the CUDA run) and reports its own peak GPU memory. The report
(GPU model, driver, CUDA and torch versions, every check) goes to one JSON file; the exit code is 0 only
if every check passed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT = 2
NO_CUDA_MESSAGE = ("gpu_check: no CUDA device is visible to torch {version} (torch.cuda.is_available() is False); "
                   "run this on a machine with a GPU and a CUDA build of torch")
DEFAULT_OUT = REPO / "experiments" / "results" / "gpu_check.json"
FIXTURE_SUPERGLUE = REPO / "tests" / "fixtures" / "superglue"
SEED = 1


@dataclass(frozen=True)
class Tolerance:
    """How far a CUDA run may be from the same run on the CPU.

    CUDA and CPU kernels sum in other orders and fuse other ops, so fp32 results agree to rounding, not
    bit for bit, and training carries those differences forward. Every training loss a phase records for its
    last epoch (the mean over its batches) may differ by ``loss_rtol`` relative; ``examples`` dev predictions
    of each row may differ, since a prediction whose two top classes are within rounding of each other can
    flip.
    """

    loss_rtol: float
    examples: int = 1

    def describe(self) -> str:
        return (f"each phase's last-epoch training losses within {self.loss_rtol:g} relative; at most "
                f"{self.examples} dev prediction(s) of each row changed, so its accuracy within as many examples")


# Rounding-level differences barely move these runs: on the CPU, computing every linear layer in float64
# (a different kernel, correctly rounded to fp32) changed the MiniLM run's last-epoch losses by at most 6e-6
# relative and no dev prediction, and left the tiny run's losses unchanged. 1e-3 leaves a margin of over a
# hundredfold for the GPU's other kernels (softmax, layer norm, attention) and still catches a wrong kernel,
# a lost loss term or tensors mixed across devices.
TINY = Tolerance(loss_rtol=1e-3)
MINILM = Tolerance(loss_rtol=1e-3)
# The second-order meta-gradient, fp32 on both devices: relative L2 distance of the whole gradient (all of the
# meta-teacher's parameters). On the CPU, fp32 is 4e-7 from float64 on this problem; 1e-4 leaves a
# 250-fold margin for the GPU's rounding, which TF32 (about 1e-3) would exceed.
META_RTOL = 1e-4
# bf16/fp16 runs: on the polarity task every row reaches 100% dev accuracy in fp32 on the CPU (3 epochs per
# agent); any row at or below this dev accuracy (chance is 0.5) means the reduced precision broke training.
SANE_ACCURACY = 0.75

COMMON = ["logger=none", "trainer.progress=false", "trainer.reuse_cache=false", "trainer.save_student=false",
          "eval.write_test_predictions=false", f"seed={SEED}", "trainer.deterministic=true"]
# CPU and CUDA draw different random numbers from the same seed (dropout masks, the policy's samples), so the
# compared runs use none: dropout off, a uniform curriculum control (drawn from a CPU generator) and no
# selection (a near-tie in a selection score would pick another epoch and amplify rounding into a jump).
COMPARABLE = ["method.authors_no_dropout=true", "method.policy=uniform", "trainer.selection_split=last"]


def tiny_overrides(superglue: Path) -> list[str]:
    """debug=fast on the SuperGLUE fixture: every phase, the pilot meta-gradient, four curriculum partners."""
    return ["debug=fast", "task=cb", f"data_dir={superglue}", "method=mpdistil", "method.meta_objective=mixed",
            "method.curriculum_tasks=[copa,rte,wic,wsc]", *COMMON]


def minilm_overrides(task_dir: Path) -> list[str]:
    """MiniLM-L6 → 3 layers on the polarity task, every phase with the pilot meta-gradient, 3 epochs per agent."""
    return ["model=minilm", "task=custom", f"task.train={task_dir / 'train.csv'}",
            f"task.dev={task_dir / 'dev.csv'}", "task.text_fields=[text]", "task.label_field=label",
            "method=mpdistil", "method.meta_objective=mixed", "method.teacher_epochs=3", "method.student_epochs=3",
            "method.teacher_lr=1e-4", "method.student_lr=3e-4", "method.episodes=3", "trainer.batch_size=8",
            *COMMON]


def on(device: str, precision: str = "fp32") -> list[str]:
    return [f"trainer.device={device}", f"trainer.precision={precision}"]


def portable(overrides: Iterable[str], workdir: Path) -> list[str]:
    """Overrides as the report records them: no temporary folders or checkout location of this machine."""
    out = []
    for o in overrides:
        for folder, name in ((workdir.parent, "<work>"), (REPO, ".")):
            o = o.replace(str(folder), name)
        out.append(o)
    return out


def replace_overrides(base: Iterable[str], changes: Iterable[str]) -> list[str]:
    """``base`` with each ``key=value`` of ``changes`` put in place of the same key (appended if new)."""
    out = list(base)
    keys = [o.split("=", 1)[0] for o in out]
    for change in changes:
        key = change.split("=", 1)[0]
        if key in keys:
            out[keys.index(key)] = change
        else:
            out.append(change)
            keys.append(key)
    return out


def benchmarks_importable() -> None:
    """The benchmark scripts beside this one are imported as modules (the repository root too, for mpdistil)."""
    for folder in (str(REPO / "experiments"), str(REPO)):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def anchor_overrides(data_dir: Path, device: str, precision: str) -> list[str]:
    """``bench_anchor.py``'s job (CB, MiniLM-L6 → 3 layers, curriculum over CB alone) with 2 epochs per agent
    and 20 episodes instead of 10, 10 and 200."""
    benchmarks_importable()
    from bench_anchor import overrides

    return replace_overrides(overrides(str(data_dir), SEED, "[]", []),
                             ["method.teacher_epochs=2", "method.student_epochs=2", "method.episodes=20",
                              f"trainer.device={device}", f"trainer.precision={precision}"])


POSITIVE = ("good", "great", "lovely", "wonderful", "excellent", "pleasant", "delightful", "superb")
NEGATIVE = ("bad", "awful", "terrible", "poor", "dreadful", "boring", "horrible", "dull")
TRAIN_NOUNS = ("film", "meal", "trip", "book", "show", "concert", "hotel", "game")
DEV_NOUNS = ("play", "lecture", "party", "album")
TEMPLATES = ("the {noun} was {adj}", "what a {adj} {noun}", "i thought the {noun} was {adj}",
             "honestly, a {adj} {noun}")


def write_polarity_task(folder: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """A two-class task a pretrained encoder learns in a few epochs (positive or negative adjective); dev uses
    nouns never seen in training. Written from a fixed seed: the same files on every machine."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, nouns, n in (("train", TRAIN_NOUNS, n_train), ("dev", DEV_NOUNS, n_dev)):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                label, words = ("positive", POSITIVE) if i % 2 == 0 else ("negative", NEGATIVE)
                writer.writerow([rng.choice(TEMPLATES).format(noun=rng.choice(nouns), adj=rng.choice(words)), label])
    return folder


def final_losses(results: Mapping[str, Any]) -> dict[str, float]:
    """``phase/name`` → each loss a phase recorded for its last epoch (``loss``, the pilot's quiz loss, ...)."""
    out = {}
    for phase, record in results.get("phases", {}).items():
        history = record.get("history") or []
        for key, value in (history[-1] if history else {}).items():
            if key == "loss" or key.endswith("_loss"):
                out[f"{phase}/{key}"] = float(value)
    return out


def dev_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``row/split/metric`` → value for every row on every reported dev split."""
    dev = results.get("protocol", {}).get("reported") or ["dev"]
    return {f"{row}/{split}/{metric}": float(value)
            for row, per_split in results.get("agents", {}).items()
            for split, metrics in per_split.items() if split in dev
            for metric, value in metrics.items()}


def dev_size(results: Mapping[str, Any]) -> int:
    sizes = results.get("task", {}).get("sizes", {})
    dev = [int(n) for split, n in sizes.items() if split.startswith("dev")]
    return min(dev) if dev else 0


def relative_difference(a: float, b: float) -> float:
    """|a − b| / max(|a|, |b|), 0 when both are 0; inf when either is not finite."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare_runs(reference: Mapping[str, Any], other: Mapping[str, Any], tol: Tolerance,
                 reference_predictions: Optional[Mapping[str, Any]] = None,
                 predictions: Optional[Mapping[str, Any]] = None,
                 names: tuple[str, str] = ("cpu", "cuda")) -> tuple[bool, dict]:
    """Whether ``other`` (the CUDA run's results.json) matches ``reference`` (the CPU run's) within ``tol``;
    ``names`` label the two runs in the numbers and messages.

    Both runs must record the same losses and metrics. Each loss must be within ``tol.loss_rtol``; each
    row's dev accuracy within ``tol.examples`` examples' weight; with both runs' predictions.json, at most
    ``tol.examples`` dev predictions of each row may differ. Other metrics (F1, MCC) are reported, not
    gated: one flipped prediction can move them by more than one example's weight.
    """
    problems = []
    ref_loss, loss = final_losses(reference), final_losses(other)
    ref_metric, metric = dev_metrics(reference), dev_metrics(other)
    if set(ref_loss) != set(loss):
        problems.append(f"recorded losses differ: {sorted(set(ref_loss) ^ set(loss))}")
    if set(ref_metric) != set(metric):
        problems.append(f"dev metrics differ: {sorted(set(ref_metric) ^ set(metric))}")
    if not ref_loss or not ref_metric:
        problems.append("nothing to compare: no training loss or no dev metric in the reference run")
    n = dev_size(reference)
    metric_tol = tol.examples / n if n else 0.0
    losses = {}
    for key in sorted(set(ref_loss) & set(loss)):
        rel = relative_difference(ref_loss[key], loss[key])
        losses[key] = {names[0]: ref_loss[key], names[1]: loss[key], "relative_difference": rel,
                       "ok": rel <= tol.loss_rtol}
        if not losses[key]["ok"]:
            problems.append(f"{key} {ref_loss[key]:.6g} ({names[0]}) vs {loss[key]:.6g} ({names[1]}): "
                            f"relative difference {rel:.3g} > {tol.loss_rtol:g}")
    metrics = {}
    for key in sorted(set(ref_metric) & set(metric)):
        diff = abs(ref_metric[key] - metric[key]) if math.isfinite(ref_metric[key] - metric[key]) else math.inf
        gated = key.endswith("/accuracy")
        ok = diff <= metric_tol + 1e-9 if gated else None
        metrics[key] = {names[0]: ref_metric[key], names[1]: metric[key], "difference": diff, "ok": ok}
        if ok is False:
            problems.append(f"{key} {ref_metric[key]:.4f} ({names[0]}) vs {metric[key]:.4f} ({names[1]}): "
                            f"difference {diff:.4f} > {metric_tol:.4f} ({tol.examples} of {n} dev examples)")
    numbers = {"final_losses": losses, "dev_metrics": metrics, "dev_examples": n, "metric_tolerance": metric_tol}
    if reference_predictions is not None and predictions is not None:
        numbers["changed_predictions"] = changed = changed_predictions(reference_predictions, predictions)
        problems += [f"{key}: {count} dev predictions differ (at most {tol.examples})"
                     for key, count in changed.items() if count > tol.examples]
    numbers["problems"] = problems
    return not problems, numbers


def changed_predictions(reference: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, int]:
    """``row/split`` → how many dev predictions differ between two predictions.json (every example, when a row
    or split is missing from one of them or the lengths differ)."""
    out = {}
    for row, splits in reference.get("rows", {}).items():
        for split, ref in splits.items():
            got = other.get("rows", {}).get(row, {}).get(split)
            if got is None or len(got) != len(ref):
                out[f"{row}/{split}"] = len(ref)
            else:
                out[f"{row}/{split}"] = sum(a != b for a, b in zip(ref, got))
    return out


def _numbers(obj: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    """Every int or float inside nested dicts and lists, with its dotted path (booleans left out)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}{i}.")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix.rstrip("."), float(obj)


def sane_run(results: Mapping[str, Any], min_accuracy: Optional[float]) -> tuple[bool, dict]:
    """A reduced-precision run is sane if every number in its phases' histories and its fidelity is finite,
    every dev metric lies in [0, 1] and (unless ``min_accuracy`` is None) every row's dev accuracy is above
    ``min_accuracy`` (on a task every row learns easily in fp32)."""
    problems = []
    histories = {p: r.get("history", []) for p, r in results.get("phases", {}).items()}
    bad = [k for k, v in _numbers(histories) if not math.isfinite(v)]
    bad += [f"fidelity.{k}" for k, v in _numbers(results.get("fidelity", {})) if not math.isfinite(v)]
    if bad:
        problems.append(f"non-finite values: {bad[:8]}")
    metrics = dev_metrics(results)
    out_of_range = {k: v for k, v in metrics.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
    if out_of_range:
        problems.append(f"metrics outside [0, 1]: {out_of_range}")
    if not metrics:
        problems.append("no dev metric recorded")
    if min_accuracy is not None:
        accuracy = {k: v for k, v in metrics.items() if k.endswith("/accuracy")}
        low = {k: v for k, v in accuracy.items() if not v > min_accuracy}
        if not accuracy:
            problems.append("no dev accuracy recorded")
        elif low:
            problems.append(f"dev accuracy not above {min_accuracy}: {low}")
    numbers = {"final_losses": final_losses(results), "dev_metrics": metrics, "problems": problems}
    return not problems, numbers


def compare_gradients(reference: list[torch.Tensor], other: list[torch.Tensor],
                      rtol: float = META_RTOL) -> tuple[bool, dict]:
    """Whether two gradients (lists of tensors, any devices) are within ``rtol`` relative L2 distance of
    each other; their cosine is reported too. Computed in float64."""
    shapes = [tuple(t.shape) for t in reference], [tuple(t.shape) for t in other]
    if shapes[0] != shapes[1]:
        return False, {"problems": [f"shapes differ: {shapes[0]} vs {shapes[1]}"]}
    a = torch.cat([t.detach().double().cpu().reshape(-1) for t in reference])
    b = torch.cat([t.detach().double().cpu().reshape(-1) for t in other])
    problems = []
    norm_a, norm_b = float(a.norm()), float(b.norm())
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    rel = float((a - b).norm()) / max(norm_a, norm_b) if finite and max(norm_a, norm_b) > 0 else math.inf
    cosine = float(a @ b) / (norm_a * norm_b) if finite and norm_a > 0 and norm_b > 0 else -math.inf
    if not finite:
        problems.append("non-finite gradient")
    elif norm_a == 0 or norm_b == 0:
        problems.append(f"a gradient is zero (norms {norm_a:.3g}, {norm_b:.3g}): nothing was compared")
    elif rel > rtol:
        problems.append(f"relative L2 difference {rel:.3g} > {rtol:g}")
    return not problems, {"norm_cpu": norm_a, "norm_cuda": norm_b, "relative_difference": rel, "cosine": cosine,
                          "problems": problems}


@dataclass
class CheckResult:
    name: str
    passed: bool
    tolerance: str
    numbers: dict[str, Any] = field(default_factory=dict)
    peak_gpu_mb: Optional[float] = None
    seconds: float = 0.0
    error: Optional[str] = None


def run_check(name: str, tolerance: str, body: Callable[[], tuple[bool, dict, Optional[float]]]) -> CheckResult:
    """Run one check; an exception fails that check (its last lines kept) and the next one still runs."""
    print(f"gpu_check: {name} ...", flush=True)
    start = time.perf_counter()
    try:
        passed, numbers, peak = body()
        result = CheckResult(name, passed, tolerance, numbers, peak, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, reported with the rest
        tail = traceback.format_exc().strip().splitlines()[-6:]
        result = CheckResult(name, False, tolerance, {}, None, time.perf_counter() - start,
                             f"{type(exc).__name__}: {exc}\n" + "\n".join(tail))
    print(f"gpu_check: {name} {'passed' if result.passed else 'FAILED'} ({result.seconds:.0f}s)", flush=True)
    return result


def json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "nan", "inf", "-inf"; tuples become lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def build_report(environment: Mapping[str, Any], checks: list[CheckResult], command: str) -> dict[str, Any]:
    return {"command": command, "environment": dict(environment), "passed": all(c.passed for c in checks),
            "failed": [c.name for c in checks if not c.passed], "checks": [asdict(c) for c in checks]}


def write_report(path: Path, report: Mapping[str, Any]) -> Path:
    """The report as strict JSON (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def summary(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    lines = [f"GPU {env.get('gpu')} (driver {env.get('driver')}, CUDA {env.get('cuda')}, torch {env.get('torch')})"]
    for c in report["checks"]:
        peak = f"{c['peak_gpu_mb']:.0f} MB" if c["peak_gpu_mb"] is not None else "-"
        why = c["error"].splitlines()[0] if c["error"] else "; ".join(c["numbers"].get("problems", [])[:2])
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']:<26} {c['seconds']:7.1f}s  peak GPU {peak:>9}"
                     + (f"  {why}" if why else ""))
    lines.append("all checks passed" if report["passed"] else f"failed: {', '.join(report['failed'])}")
    return "\n".join(lines)


def driver_version() -> Optional[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    proc = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def environment() -> dict[str, Any]:
    from mpdistil.results import machine_info

    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
            "driver": driver_version(), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "torch": torch.__version__, "git_commit": git_commit(), "machine": machine_info(),
            # some containers force TF32 matmuls through this variable; the fp32 comparisons then fail
            "tf32_override": os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")}


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False)
    return proc.stdout.strip() or "unknown"


@dataclass
class Run:
    """One finished ``main.py`` process: its results.json and predictions.json, wall time and the warnings it
    printed."""

    results: dict[str, Any]
    predictions: dict[str, Any]
    wall_s: float
    warnings: list[str]

    @property
    def peak_gpu_mb(self) -> Optional[float]:
        return self.results.get("memory", {}).get("peak_cuda_mb")


def main_py(overrides: list[str], workdir: Path, timeout: float = 900, processes: int = 1) -> Run:
    """``main.py`` with ``overrides`` in a fresh process (``processes`` > 1: that many, through torchrun) and a
    fresh cache folder under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    cmd = [*launcher, str(REPO / "main.py"), *overrides, f"hydra.run.dir={out}", f"cache_dir={workdir / 'cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}  # every model comes from PyPI
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"main.py exited {proc.returncode}: {' '.join(overrides)}\n{proc.stderr[-2000:]}")
    # ops without a deterministic CUDA kernel warn (trainer.deterministic uses warn_only): worth knowing
    warnings = sorted({line.split("Warning: ", 1)[-1].strip() for line in proc.stderr.splitlines()
                       if "deterministic implementation" in line})
    return Run(json.loads((out / "results.json").read_text()), json.loads((out / "predictions.json").read_text()),
               wall, warnings)


def check_cpu_vs_cuda(overrides: list[str], tol: Tolerance, workdir: Path) -> tuple[bool, dict, Optional[float]]:
    cpu = main_py([*overrides, *on("cpu")], workdir / "cpu")
    cuda = main_py([*overrides, *on("cuda")], workdir / "cuda")
    passed, numbers = compare_runs(cpu.results, cuda.results, tol, cpu.predictions, cuda.predictions)
    if cuda.results.get("device", "").split(":")[0] != "cuda":
        passed = False
        numbers["problems"].append(f"the CUDA run reports device {cuda.results.get('device')!r}")
    numbers.update({"wall_s": {"cpu": cpu.wall_s, "cuda": cuda.wall_s},
                    "phase_s": {"cpu": cpu.results.get("time"), "cuda": cuda.results.get("time")},
                    "nondeterministic_op_warnings": cuda.warnings, "overrides": portable(overrides, workdir)})
    return passed, numbers, cuda.peak_gpu_mb


def check_two_gpus(overrides: list[str], tol: Tolerance, workdir: Path) -> tuple[bool, dict, Optional[float]]:
    """The same run on one GPU and data-parallel on two (torchrun, NCCL), with the same global batch."""
    one = main_py([*overrides, *on("cuda")], workdir / "one")
    two = main_py([*overrides, *on("cuda")], workdir / "two", processes=2)
    passed, numbers = compare_runs(one.results, two.results, tol, one.predictions, two.predictions,
                                   names=("one_gpu", "two_gpus"))
    world = two.results.get("distributed", {})
    if world.get("world_size") != 2 or world.get("backend") != "nccl":
        passed = False
        numbers["problems"].append(f"the two-GPU run reports {world.get('world_size')} process(es) on "
                                   f"{world.get('backend')!r}, not 2 on 'nccl'")
    numbers.update({"wall_s": {"one_gpu": one.wall_s, "two_gpus": two.wall_s}, "ranks": world.get("ranks"),
                    "overrides": portable(overrides, workdir)})
    return passed, numbers, two.peak_gpu_mb


def check_precision(overrides: list[str], precision: str, workdir: Path) -> tuple[bool, dict, Optional[float]]:
    run = main_py([*overrides, *on("cuda", precision)], workdir)
    passed, numbers = sane_run(run.results, SANE_ACCURACY)
    if run.results.get("precision") != precision:
        passed = False
        numbers["problems"].append(f"the run reports precision {run.results.get('precision')!r}")
    numbers.update({"wall_s": run.wall_s, "phase_s": run.results.get("time"),
                    "overrides": portable(overrides, workdir)})
    return passed, numbers, run.peak_gpu_mb


def meta_problem(device: torch.device, seed: int = 0) -> tuple[Any, ...]:
    """MiniLM-L6's first 3 layers (SDPA attention, eval mode: no dropout), a linear meta-teacher over fixed
    random 384-d features and two batches, all in fp32 on ``device``; the same weights and data on any device."""
    benchmarks_importable()
    from bench_meta_step import default_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    student = AutoModelForSequenceClassification.from_pretrained(
        default_model(), num_labels=3, num_hidden_layers=3, attn_implementation="sdpa").float().eval()
    meta_teacher = torch.nn.Linear(student.config.hidden_size, 3)
    gen = torch.Generator().manual_seed(seed)

    def batch() -> dict[str, Any]:
        ids = torch.randint(1000, student.config.vocab_size, (8, 32), generator=gen)
        mask = torch.ones_like(ids)
        mask[:2, 24:] = 0  # padded rows: the attention mask path matters too
        return {"inputs": {"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                "labels": torch.randint(0, 3, (8,), generator=gen).to(device),
                "features": 2 * torch.randn(8, student.config.hidden_size, generator=gen).to(device)}

    inner_batch, quiz_batch = batch(), batch()
    return student.to(device), meta_teacher.to(device), inner_batch, quiz_batch


def meta_gradient_on(device: torch.device, backend: str) -> tuple[list[torch.Tensor], dict[str, float]]:
    from mpdistil.meta import MetaStepConfig, meta_gradient

    student, meta_teacher, inner_batch, quiz_batch = meta_problem(device)
    temperature = 2.0

    def inner(forward: Callable[..., Any], b: dict[str, Any]) -> torch.Tensor:
        logits = forward(**b["inputs"]).logits
        soft = torch.softmax(meta_teacher(b["features"]) / temperature, dim=-1)
        kd = -(soft * torch.log_softmax(logits / temperature, dim=-1)).sum(-1).mean() * temperature**2
        return 0.5 * kd + 0.5 * torch.nn.functional.cross_entropy(logits, b["labels"])

    def outer(forward: Callable[..., Any], b: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(forward(**b["inputs"]).logits, b["labels"])

    cfg = MetaStepConfig(lr=1e-2, steps=1, backend=backend)
    return meta_gradient(student, list(meta_teacher.parameters()), inner, outer, [inner_batch], [quiz_batch], cfg)


def check_meta_gradient() -> tuple[bool, dict, Optional[float]]:
    torch.cuda.reset_peak_memory_stats()
    numbers: dict[str, Any] = {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    passed = True
    for backend in ("higher", "func"):
        cpu, _ = meta_gradient_on(torch.device("cpu"), backend)
        cuda, stats = meta_gradient_on(torch.device("cuda"), backend)
        ok, numbers[backend] = compare_gradients(cpu, cuda)
        numbers[backend]["cuda_seconds"] = stats["time_s"]
        passed = passed and ok
    numbers["problems"] = [f"{b}: {p}" for b in ("higher", "func") for p in numbers[b]["problems"]]
    return passed, numbers, torch.cuda.max_memory_allocated() / 2**20


def check_anchor_timing(data_dir: Path, workdir: Path) -> tuple[bool, dict, Optional[float]]:
    """Times only: passes if both runs finish on CUDA with finite losses and metrics in [0, 1]."""
    numbers: dict[str, Any] = {"data_dir": "tests/fixtures/superglue" if data_dir == FIXTURE_SUPERGLUE
                               else "official SuperGLUE (--data-dir)"}
    passed, peaks = True, []  # peak GPU memory of each run (None: the run never touched CUDA)
    for precision in ("fp32", "bf16"):
        run = main_py(anchor_overrides(data_dir, "cuda", precision), workdir / precision)
        ok, sane = sane_run(run.results, None)  # times only: CB's fixture is too small for an accuracy bar
        passed = passed and ok
        numbers[precision] = {"wall_s": run.wall_s, "phase_s": run.results.get("time"),
                              "peak_gpu_mb": run.peak_gpu_mb, "dev": sane["dev_metrics"],
                              "problems": sane["problems"]}
        peaks.append(run.peak_gpu_mb)
    numbers["problems"] = [f"{p}: {x}" for p in ("fp32", "bf16") for x in numbers[p]["problems"]]
    numbers["overrides"] = portable(anchor_overrides(data_dir, "cuda", "fp32"), workdir)
    return passed, numbers, max((p for p in peaks if p is not None), default=None)


def check_meta_step_timing(workdir: Path) -> tuple[bool, dict, Optional[float]]:
    """``bench_meta_step.py`` on CUDA: a plain step against k = 1 second-order meta steps (both backends)."""
    out = workdir / "bench_meta_step.json"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "experiments" / "bench_meta_step.py"), "--device", "cuda", "--repeats", "5",
           "--modes", "plain", "so-higher", "so-func", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_meta_step.py exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    results = json.loads(out.read_text())["results"]
    numbers: dict[str, Any] = {}
    for mode, r in results.items():
        peak = statistics.median(x["baseline_mb"] + x["peak_delta_mb"] for x in r["rounds"])
        numbers[mode] = {"median_s": r["median_s"], "time_ratio": r.get("time_ratio"),
                         "peak_delta_mb": r["peak_delta_mb"], "memory_ratio": r.get("memory_ratio"),
                         "peak_mb": peak, "device": r["rounds"][0]["device"]}
    problems = [f"{m} ran on {n['device']}" for m, n in numbers.items() if not n["device"].startswith("cuda")]
    numbers["problems"] = problems
    return not problems, numbers, max(n["peak_mb"] for m, n in numbers.items() if m != "problems")


SANE = (f"finite training losses and fidelity numbers, dev metrics in [0, 1], every row's dev accuracy above "
        f"{SANE_ACCURACY} (chance 0.5; 1.0 in fp32)")


def run_all(data_dir: Path, workdir: Path) -> list[CheckResult]:
    task_dir = write_polarity_task(workdir / "polarity")
    minilm = [*minilm_overrides(task_dir)]
    two_gpus = [run_check("two_gpus_vs_one", TINY.describe(),
                          lambda: check_two_gpus([*tiny_overrides(FIXTURE_SUPERGLUE), *COMPARABLE,
                                                  "method.meta_objective=direct"], TINY, workdir / "two_gpus"))
                ] if torch.cuda.device_count() >= 2 else []
    return [
        run_check("tiny_cpu_vs_cuda", TINY.describe(),
                  lambda: check_cpu_vs_cuda([*tiny_overrides(FIXTURE_SUPERGLUE), *COMPARABLE], TINY,
                                            workdir / "tiny")),
        run_check("minilm_cpu_vs_cuda", MINILM.describe(),
                  lambda: check_cpu_vs_cuda([*minilm, *COMPARABLE], MINILM, workdir / "minilm")),
        run_check("minilm_bf16", SANE, lambda: check_precision(minilm, "bf16", workdir / "bf16")),
        run_check("minilm_fp16", SANE, lambda: check_precision(minilm, "fp16", workdir / "fp16")),
        run_check("meta_gradient_cpu_vs_cuda", f"relative L2 difference <= {META_RTOL:g} from the CPU's, "
                                               "fp32, for each backend",
                  check_meta_gradient),
        run_check("anchor_timing", "times only: the runs finish on CUDA with finite numbers",
                  lambda: check_anchor_timing(data_dir, workdir / "anchor")),
        run_check("meta_step_timing", "times only: every mode runs on CUDA",
                  lambda: check_meta_step_timing(workdir / "meta_step")),
        *two_gpus,
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the JSON report (default: experiments/results/gpu_check.json)")
    parser.add_argument("--data-dir", type=Path, default=FIXTURE_SUPERGLUE,
                        help="SuperGLUE folder for the timed anchor job (default: the small test fixture)")
    parser.add_argument("--keep", type=Path, default=None, help="keep every run folder under this directory")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE.format(version=torch.__version__), file=sys.stderr)
        return NO_CUDA_EXIT
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before this process's first cuBLAS call
    benchmarks_importable()
    env = environment()
    print(f"gpu_check: {env['gpu']}, driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = args.keep or Path(tmp)
        checks = run_all(args.data_dir.resolve(), workdir)
    report = build_report(env, checks, " ".join(["python", "experiments/gpu_check.py", *sys.argv[1:]]))
    path = write_report(args.out, report)
    print(summary(report))
    print(f"written: {path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
