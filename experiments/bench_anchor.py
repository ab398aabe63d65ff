"""The reference job: the authors' default MPDistil run, done by this codebase, timed.

Same work as the authors' released code with its defaults: SuperGLUE CB, MiniLM-L6
teacher, 3-layer student of its first layers, 10 teacher epochs, 10 distillation epochs each
followed by a meta-teacher pass over the quiz split, 200 curriculum episodes, batch 8, max length
128, curriculum over CB alone; then again with the other four SuperGLUE tasks as actions. No
undistilled baseline (the authors' code trains none) and nothing reused from earlier runs (a
fresh cache folder per run). Prints the machine, then wall time per phase, peak RSS and dev metrics
per seed, and writes them to JSON with the machine and the git commit. Times compare only with
runs on the same machine. The authors' code has not been timed side by side with this one, so no
speed-up against it is computed; its dev metrics on this job are kept as reference values.

    python experiments/bench_anchor.py --data-dir <superglue> --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mpdistil.results import machine_info  # noqa: E402

# Reference values, not measured by this script: CB dev accuracy / macro-F1 (in %) of the authors' released
# code on this job, from a run of that code.
AUTHORS_DEV = {"teacher": (71.4, 50.0), "student": (73.2, 68.6), "mpdistil": (73.2, 61.4)}
CONFIGS = {"cb_only": "[]", "cb+4": "[rte,copa,wic,wsc]"}


def overrides(data_dir: str, seed: int, tasks: str, extra: list[str]) -> list[str]:
    return [
        "task=cb", f"data_dir={data_dir}", "model=minilm", "method=mpdistil", "experiment=paper", "logger=none",
        "method.phases=[teacher,distill+meta_teacher,curriculum]", "method.teacher_epochs=10",
        "method.student_epochs=10", "method.episodes=200", "trainer.batch_size=8", "task.max_length=128",
        f"method.curriculum_tasks={tasks}", f"seed={seed}", "trainer.progress=false", "trainer.reuse_cache=false",
        "eval.attribution=none", "eval.write_test_predictions=false", *extra,
    ]


def fresh_run(run_overrides: list[str]) -> tuple[dict, float]:
    """One `main.py` job with a fresh cache (nothing reused from earlier runs): its results.json and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "main.py"), *run_overrides, f"hydra.run.dir={out}",
               f"cache_dir={Path(tmp) / 'cache'}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({' '.join(run_overrides)}):\n{proc.stderr[-3000:]}")
        return json.loads((out / "results.json").read_text()), wall


def run_one(data_dir: str, seed: int, tasks: str, extra: list[str]) -> dict:
    results, wall = fresh_run(overrides(data_dir, seed, tasks, extra))
    dev = {row: {k: round(100 * v, 1) for k, v in results["agents"][row]["dev"].items()}
           for row in ("teacher", "meta_teacher", "student", "mpdistil") if row in results["agents"]}
    return {"seed": seed, "process_wall_s": round(wall, 1),
            "phases_s": {k: round(v, 1) for k, v in results["time"].items()},
            "peak_rss_gb": round(results["memory"]["peak_rss_mb"] / 1024, 3), "dev": dev,
            "curriculum_actions": results["phases"].get("curriculum", {}).get("action_distribution"),
            "machine": results["machine"]}


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return proc.stdout.strip() or "unknown"


def summarise(runs: list[dict]) -> dict:
    walls = [r["process_wall_s"] for r in runs]
    mean = statistics.mean(walls)
    return {"wall_mean_s": round(mean, 1), "wall_std_s": round(statistics.pstdev(walls), 1),
            "peak_rss_max_gb": max(r["peak_rss_gb"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with the official SuperGLUE files")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "bench_anchor.json"))
    ap.add_argument("extra", nargs="*", help="further Hydra overrides, e.g. trainer.device=cuda trainer.precision=bf16")
    args = ap.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    machine = machine_info()
    print(f"machine: {json.dumps(machine)}", flush=True)
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git_commit": git_commit(),
              "machine": machine, "authors_dev_reference": AUTHORS_DEV, "configs": {}}
    for name in args.configs:
        runs = []
        for seed in args.seeds:
            r = run_one(data_dir, seed, CONFIGS[name], args.extra)
            runs.append(r)
            print(f"{name} seed {seed}: wall {r['process_wall_s']}s  phases {r['phases_s']}  "
                  f"peak RSS {r['peak_rss_gb']} GB  dev {r['dev']}", flush=True)
        report["configs"][name] = {"runs": runs, "summary": summarise(runs)}
        print(f"{name}: {report['configs'][name]['summary']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
