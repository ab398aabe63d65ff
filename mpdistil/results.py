"""results.json and the final table printed at the end of a run."""
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

import torch

ROW_ORDER = ("teacher", "meta_teacher", "undistilled", "student", "mpdistil")
ROW_TITLES = {
    "teacher": "teacher",
    "meta_teacher": "meta-teacher T'",
    "undistilled": "student, undistilled",
    "student": "student, distilled",
    "mpdistil": "student, MPDistil (curriculum)",
}


def final_score(results: dict[str, Any]) -> float:
    """The final student's main metric on the selection split: what a hyperparameter sweeper maximises."""
    agents = results["agents"]
    row = next(r for r in ("mpdistil", "student", "undistilled", "teacher") if r in agents)
    split = "quiz" if results["selection_split"] == "quiz" else next(s for s in agents[row] if s.startswith("dev"))
    return float(agents[row][split][results["task"]["main_metric"]])


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory when a GPU was used), in MB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def machine_info() -> dict[str, Any]:
    """What the wall times were measured on: CPU model and vector extensions move them by tens of percent."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": model or platform.processor(),
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{100 * value:.1f}" if -1.0 <= value <= 1.0 else f"{value:.3f}"
    return "—" if value is None else str(value)


def format_table(results: dict[str, Any], splits: list[str]) -> str:
    """One row per agent; each split's task metrics (in %), then fidelity to the teacher if measured."""
    metrics = results["task"]["metrics"]
    fid_keys = ("agreement", "kl_teacher_student", "ece_student", "flip_student_only", "flip_teacher_only")
    header = ["agent"] + [f"{s}:{m}" for s in splits for m in metrics]
    fidelity = results.get("fidelity", {})
    show_fid = any(fidelity.get(f"{row}_vs_teacher") for row in ROW_ORDER)
    if show_fid:
        header += [f"{splits[0]}:{k}" for k in fid_keys]
    rows = []
    for name in ROW_ORDER:
        agent = results["agents"].get(name)
        if agent is None:
            continue
        row = [ROW_TITLES[name]] + [_fmt(agent.get(s, {}).get(m)) for s in splits for m in metrics]
        if show_fid:
            f = fidelity.get(f"{name}_vs_teacher", {}).get(splits[0], {})
            row += [_fmt(f.get(k)) if k.startswith(("agree", "ece")) else
                    (f"{f[k]:.4f}" if isinstance(f.get(k), float) else _fmt(f.get(k))) for k in fid_keys]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    times = results.get("time", {})
    if times:
        out.append("")
        out.append("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    flops = results.get("flops", {})
    if flops:
        out.append("matmul GFLOP: " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in flops.items()))
    mem = results.get("memory", {})
    if mem:
        out.append("peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
    return "\n".join(out)
