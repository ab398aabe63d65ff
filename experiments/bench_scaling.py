"""How cost grows: wall time against training-set size and against the number of curriculum tasks.

Sizes: CB (250), RTE (2,490) and SST-2 subsets of 2.5k, 5k and 10k examples, one teacher epoch, one
distillation epoch with its meta-teacher pass, a few curriculum episodes (each a pass over the quiz
split, so also linear in size); the line is fitted over the SST-2 subsets. Tasks: CB as the main task with 0 to 4
other SuperGLUE tasks as curriculum actions, fixed episodes. Each point is a fresh run (nothing
cached). Prints the machine and writes it, with the git commit, into a JSON beside a two-panel plot
with a least-squares line per panel.

    python experiments/bench_scaling.py --data-dir <data>
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from bench_anchor import REPO, fresh_run, git_commit  # puts the repository on sys.path too

from mpdistil.results import machine_info

COMMON = ["model=minilm", "method=mpdistil", "experiment=paper", "logger=none", "trainer.progress=false",
          "trainer.reuse_cache=false", "eval.attribution=none", "eval.write_test_predictions=false",
          "method.phases=[teacher,distill+meta_teacher,curriculum]", "method.teacher_epochs=1",
          "method.student_epochs=1", "trainer.batch_size=8", "task.max_length=128"]


def timed_run(run_overrides: list[str]) -> dict:
    results, wall = fresh_run([*COMMON, *run_overrides])
    return {"wall_s": round(wall, 1), "phases_s": {k: round(v, 1) for k, v in results["time"].items()},
            "train_examples": results["task"]["sizes"]["train"] + results["task"]["sizes"]["quiz"],
            "machine": results["machine"]}


def fit(xs: list[float], ys: list[float]) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = np.polyval([slope, intercept], xs)
    ss_res, ss_tot = float(((np.array(ys) - pred) ** 2).sum()), float(((np.array(ys) - np.mean(ys)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def meta_step_ratios(path: Path) -> dict:
    """A k = 1 second-order meta step as a ratio to a plain distillation step, from bench_meta_step.py's JSON
    (measured there, on one fixed batch, each mode in its own process); absent if that bench has not run."""
    if not path.is_file():
        return {"missing": f"{path.name}: run experiments/bench_meta_step.py first"}
    res = json.loads(path.read_text())["results"]
    return {"source": path.name, **{mode: {"time_ratio": round(r["time_ratio"], 2),
                                           "memory_ratio": round(r["memory_ratio"], 2)}
                                    for mode, r in res.items() if mode != "plain"}}


def plot(report: dict, path: Path) -> None:
    """Two panels: run wall time against training-set size, curriculum phase time against actions. Both y axes
    start at zero so that run-to-run noise of a few seconds does not read as a trend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sst = [r for k, r in report["size"].items() if k.startswith("sst2")]
    xs, ys = [r["train_examples"] for r in sst], [r["wall_s"] for r in sst]
    tx = [float(k) for k in report["tasks"]]
    ty = [r["phases_s"].get("curriculum", 0.0) for r in report["tasks"].values()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.plot(xs, ys, "o", label="SST-2 subsets")
    a.plot(xs, np.polyval([report["size_fit"]["slope"], report["size_fit"]["intercept"]], xs), "--")
    for name in ("cb", "rte"):
        r = report["size"][name]
        a.plot([r["train_examples"]], [r["wall_s"]], "s", label=name.upper())
    a.legend()
    a.set_xlabel("training examples (train' + quiz)")
    a.set_ylabel("wall time of the run (s)")
    a.set_ylim(bottom=0)
    b.plot(tx, ty, "o")
    b.plot(tx, np.polyval([report["tasks_fit"]["slope"], report["tasks_fit"]["intercept"]], tx), "--")
    b.set_xlabel("curriculum tasks (actions)")
    b.set_ylabel("curriculum phase (s)")
    b.set_ylim(bottom=0)
    b.set_xticks(tx)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="folder holding glue/ and superglue/ in the official layout (to measure)")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "bench_scaling.json"))
    ap.add_argument("--meta-step", default=str(REPO / "experiments" / "results" / "bench_meta_step.json"),
                    help="bench_meta_step.py's JSON: its k=1 second-order step ratios go into this report")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from --out's JSON, measure nothing")
    args = ap.parse_args()
    if args.plot_only:
        out = Path(args.out)
        if not out.is_file():
            raise SystemExit(f"--plot-only: {out} does not exist; run the benchmark first (without --plot-only)")
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        print(f"written: {out.with_suffix('.png')}")
        return
    if not args.data_dir:
        ap.error("--data-dir is required to measure: a folder holding glue/ and superglue/ (or pass --plot-only)")
    root = Path(args.data_dir).resolve()
    size_runs = {
        "cb": ["task=cb", f"data_dir={root / 'superglue'}"],
        "rte": ["task=rte", f"data_dir={root / 'superglue'}"],
        **{f"sst2_{n // 1000}k": ["task=sst2", f"data_dir={root / 'glue'}", f"task.max_train_examples={n}"]
           for n in (2500, 5000, 10000)},
    }
    machine = machine_info()
    print(f"machine: {json.dumps(machine)}", flush=True)
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git_commit": git_commit(),
                    "machine": machine, "size": {}, "tasks": {}}
    for name, ov in size_runs.items():
        r = timed_run([*ov, f"method.episodes={args.episodes}", "method.curriculum_tasks=[]"])
        report["size"][name] = r
        print(f"size {name}: {r}", flush=True)
    others = ["rte", "copa", "wic", "wsc"]
    for k in range(len(others) + 1):
        tasks = "[" + ",".join(others[:k]) + "]"
        r = timed_run(["task=cb", f"data_dir={root / 'superglue'}", f"method.episodes={args.episodes}",
                       f"method.curriculum_tasks={tasks}"])
        report["tasks"][k + 1] = r
        print(f"{k + 1} curriculum tasks: {r}", flush=True)
    # The fit is over the SST-2 subsets (one task, so one length distribution); CB and RTE, whose examples are
    # several times longer, are plotted beside them.
    sst = {k: r for k, r in report["size"].items() if k.startswith("sst2")}
    xs = [r["train_examples"] for r in sst.values()]
    ys = [r["wall_s"] for r in sst.values()]
    report["size_fit"] = fit(xs, ys)
    tx = [float(k) for k in report["tasks"]]
    ty = [r["phases_s"].get("curriculum", 0.0) for r in report["tasks"].values()]
    report["tasks_fit"] = fit(tx, ty)
    report["meta_step"] = meta_step_ratios(Path(args.meta_step))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("size_fit", "tasks_fit", "meta_step")}, indent=1))
    print(f"written: {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
