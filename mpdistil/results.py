"""What a run leaves behind: results.json, the exported student and test predictions, the printed table."""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch

from mpdistil.atomic import write_json
from mpdistil.context import RunContext
from mpdistil.data.leaderboard import write_test_predictions
from mpdistil.data.registry import get_task_spec
from mpdistil.identity import fingerprint
from mpdistil.models.agent import count_parameters
from mpdistil.phases import PHASES, Phase
from mpdistil.training import predict, predictions_from_logits


def row_phases(ctx: RunContext) -> dict[str, Phase]:
    """The phase behind each evaluated row, in the order the rows were produced."""
    return {row: PHASES[name]() for row, name in ctx.row_phase.items()}


def final_rows(ctx: RunContext) -> dict[str, Phase]:
    """For each trained agent, the last row that evaluated it (an agent trained further supersedes its row)."""
    last: dict[str, tuple[str, Phase]] = {}
    for row, phase in row_phases(ctx).items():
        if row != phase.row.name:  # a further teacher's row (teachers=[...]): in-domain only
            continue
        if phase.trains and phase.row_agent(ctx) is not None:
            last[phase.trains[0]] = (row, phase)
    return dict(sorted(last.values(), key=lambda item: list(ctx.row_phase).index(item[0])))


def final_student(ctx: RunContext) -> Optional[str]:
    """The run's result: the last student row produced (None when no phase trained a student)."""
    students = [row for row, phase in row_phases(ctx).items() if phase.row.student]
    return students[-1] if students else None


def final_score(results: dict[str, Any]) -> float:
    """The final student's main metric on the selection split: what a hyperparameter sweeper maximises."""
    agents = results["agents"]
    row = results.get("final_row") or next(reversed(agents))
    protocol = results["selection_split"]
    split = protocol if protocol in ("quiz", "heldout") else next(s for s in agents[row] if s.startswith("dev"))
    return float(agents[row][split][results["task"]["main_metric"]])


def finish(ctx: RunContext, data: Any, timings: dict[str, float], start: float,
           run_identity: dict[str, Any]) -> dict[str, Any]:
    """After the last group: the final agents out of domain, the student exported, results.json written (with the
    fingerprint of the run's identity, which ``skip_finished=true`` compares)."""
    from mpdistil.evaluation import evaluate_ood

    final = final_rows(ctx)
    ood = evaluate_ood(ctx, {row: phase.row_agent(ctx) for row, phase in final.items()}, data.ood, ctx.rows,
                       data.teacher_ood) if data.ood else {}
    final_row = final_student(ctx)
    outputs = export(ctx, final[final_row].row_agent(ctx) if final_row in final else ctx.student)
    timings["total"] = time.perf_counter() - start
    results = {**collect(ctx, data.info, timings, ood, final_row, outputs), "run_identity": fingerprint(run_identity)}
    write_json(ctx.out_dir / "results.json", results)
    write_json(ctx.out_dir / "predictions.json", predictions(ctx), indent=None)
    ctx.logger.summary({f"final/{row}/{s}/{k}": v for row, per in ctx.rows.items() for s, m in per.items()
                        for k, v in m.items()})
    ctx.logger.finish()
    return results


def finished_results(run_dir: Path, run_identity: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The results.json a finished run of this very identity (config fields and data) left in ``run_dir``; None when
    there is none, it is unreadable, or another config or data wrote it."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if results.get("run_identity") == fingerprint(run_identity) else None


def predictions(ctx: RunContext) -> dict[str, Any]:
    """Every row's prediction for every dev example, with the gold labels and the training labels' counts (for a
    majority-class baseline): enough to recompute any paired comparison between rows, runs or seeds."""
    train = ctx.splits["train"].labels
    counts = {} if train is None or ctx.task.kind == "regression" else \
        {str(k): int(v) for k, v in zip(*[t.tolist() for t in train.unique(return_counts=True)])}
    splits = {s: {"uids": [str(ex.uid) for ex in ctx.splits[s].examples],
                  "labels": ctx.splits[s].labels.tolist()} for s in ctx.dev_names if s in ctx.splits}
    return {"task": ctx.task.name, "kind": ctx.task.kind, "label_names": ctx.task.label_names,
            "main_metric": ctx.task.main_metric, "train_label_counts": counts, "splits": splits,
            "rows": ctx.predictions}


def collect(ctx: RunContext, data_info: dict[str, Any], timings: dict[str, float], ood: dict[str, Any],
            final_row: Optional[str], outputs: dict[str, Any]) -> dict[str, Any]:
    """Everything results.json holds."""
    cfg, info, teacher, student = ctx.cfg, ctx.task, ctx.teacher, ctx.student
    return {
        "task": {"name": info.name, "kind": info.kind, "label_names": info.label_names, "metrics": info.metrics,
                 "main_metric": info.main_metric, **data_info},
        "method": {"name": cfg.method.name, "phases": list(cfg.method.phases)},
        "selection_split": cfg.trainer.selection_split, "seed": cfg.seed,
        "protocol": {"selection": cfg.trainer.selection_split, "selected_on": ctx.selection_split,
                     "reported": ctx.dev_names,
                     "note": "every kept epoch/episode was chosen on selected_on (none: the last one); dev is "
                             "reported" + (" and was also chosen on" if ctx.selection_split in ctx.dev_names else "")},
        "model": {**ctx.sources, "teacher_layers": teacher.num_layers, "student_layers": student.num_layers,
                  "student_init": cfg.model.student_init,
                  "teacher_params": count_parameters(teacher.hf), "student_params": count_parameters(student.hf)},
        "agents": ctx.rows, "final_row": final_row,
        "row_titles": {row: PHASES[name].row.title if row == PHASES[name].row.name
                       else f"{PHASES[name].row.title} ({row}: {ctx.sources.get(row, row)})"
                       for row, name in ctx.row_phase.items()},
        "fidelity": ctx.records.pop("fidelity", {}), "ood": ood,
        "phases": ctx.records, "time": timings, **({"flops": ctx.flops} if cfg.trainer.count_flops else {}),
        "memory": peak_memory(), "machine": machine_info(),
        "device": str(ctx.rt.device), "precision": ctx.rt.precision, "outputs": outputs,
        "distributed": ctx.rt.world.describe(ctx.rt.device),
    }


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory when a GPU was used), in MB. The CUDA peak is
    this run's (reset when it starts); the resident peak is the process's, so in a multirun whose jobs share
    one process it also covers the jobs before."""
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


def export(ctx: RunContext, student: torch.nn.Module) -> dict[str, Any]:
    """The final student as an HF folder (with the tokenizer it reads) and test predictions in leaderboard format."""
    outputs: dict[str, Any] = {}
    for name, agent, wanted in (("student", student, ctx.cfg.trainer.save_student),
                                ("teacher", ctx.teacher, ctx.cfg.trainer.save_teacher)):
        if wanted and ctx.rt.world.is_main:
            agent.hf.save_pretrained(ctx.out_dir / name)
            ctx.tokenizers[name].save_pretrained(ctx.out_dir / name)
            outputs[name] = str(ctx.out_dir / name)
    if ctx.cfg.eval.write_test_predictions:
        spec = get_task_spec(ctx.task.name, ctx.cfg.task)
        files = []
        for name, split in ctx.splits.items():
            if not name.startswith("test"):
                continue
            preds = predictions_from_logits(predict(student, split, ctx.rt)["logits"], ctx.task.kind)
            files.append(str(write_test_predictions(spec, name, [ex.uid for ex in split.examples], preds.tolist(),
                                                    ctx.out_dir / "test_predictions", ctx.task.label_names)))
        outputs["test_predictions"] = files
    return outputs


def format_table(results: dict[str, Any], splits: list[str]) -> str:
    """One row per agent; each split's task metrics (in %), then fidelity to the teacher if measured."""
    metrics = results["task"]["metrics"]
    fid_keys = ("agreement", "kl_teacher_student", "ece_student", "flip_student_only", "flip_teacher_only")
    header = ["agent"] + [f"{s}:{m}" for s in splits for m in metrics]
    fidelity = results.get("fidelity", {})
    titles = results.get("row_titles", {})
    show_fid = any(fidelity.get(f"{row}_vs_teacher") for row in results["agents"])
    if show_fid:
        header += [f"{splits[0]}:{k}" for k in fid_keys]
    rows = []
    for name, agent in results["agents"].items():
        row = [titles.get(name, name)] + [_fmt(agent.get(s, {}).get(m)) for s in splits for m in metrics]
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
