"""The compute floor of the reference job: how fast its work could run on this machine at best.

Counts the matmul FLOPs of ``bench_anchor.py``'s job (CB only, one seed, with
``trainer.count_flops=true``) and measures this machine's best fp32 matmul rate through torch at the
same thread count. FLOPs divided by that rate is a lower bound on each phase's wall time: it leaves
out every other op (softmax, layer norm, GELU, dropout, the optimizer, data movement) and assumes
every matmul runs as fast as the best large square one. Prints and records the machine with the
figures; they hold for that machine only.

    python experiments/bench_floor.py --data-dir <superglue>

The counter slows the run it counts (1.33x on this job), so the counted run's phase times are
upper bounds; ``bench_anchor.py`` times the same job without it.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from bench_anchor import REPO, fresh_run, git_commit, overrides  # puts the repository on sys.path too

from mpdistil.results import machine_info

PHASES = ("teacher", "distill+meta_teacher", "curriculum", "curriculum_selection", "evaluation")
NESTED = ("curriculum_selection",)  # inside the curriculum's figures: shown, not added to the total


def matmul_rates(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048, 3072), repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of an n x n fp32 matmul per size: the most generous rate a phase could reach."""
    torch.set_num_threads(threads)
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = min(_timed(functools.partial(torch.matmul, a, b)) for _ in range(repeats))
        rates[str(n)] = round(2 * n ** 3 / best / 1e9, 1)
    return rates


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def counted_run(data_dir: str, seed: int, threads: int, extra: list[str]) -> dict:
    return fresh_run([*overrides(data_dir, seed, "[]", extra), "trainer.count_flops=true",
                      f"trainer.num_threads={threads}"])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with the official SuperGLUE files")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "bench_floor.json"))
    ap.add_argument("extra", nargs="*", help="further Hydra overrides for the counted run")
    args = ap.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    if not Path(data_dir, "CB").is_dir():
        raise SystemExit(f"error: no CB folder in {data_dir}; pass --data-dir the folder holding SuperGLUE's CB/")

    rates = matmul_rates(args.threads)
    machine = machine_info()  # after matmul_rates, so torch_threads is the thread count measured at
    print(f"machine: {json.dumps(machine)}", flush=True)
    peak = max(rates.values())
    print(f"best fp32 matmul rate at {args.threads} thread(s): {rates} GFLOP/s; floor uses {peak}", flush=True)
    results = counted_run(data_dir, args.seed, args.threads, args.extra)
    flops, times = results["flops"], results["time"]
    rows = []
    for phase in PHASES:
        gflop = flops.get(phase, 0) / 1e9
        floor = gflop / peak
        rows.append({"phase": phase, "gflop": round(gflop, 1), "floor_s": round(floor, 1),
                     "counted_run_s": round(times.get(phase, 0.0), 1),
                     "share_of_best_rate": round(floor / times[phase], 3) if times.get(phase) else None})
    total_gflop = sum(v for k, v in flops.items() if k not in NESTED) / 1e9
    total = {"gflop": round(total_gflop, 1), "floor_s": round(total_gflop / peak, 1),
             "counted_run_s": round(times["total"], 1)}
    print(f"{'phase':<32}{'GFLOP':>10}{'floor s':>9}{'run s':>8}{'of best':>9}")
    for r in rows:
        share = f"{100 * r['share_of_best_rate']:.0f}%" if r["share_of_best_rate"] is not None else "—"
        name = f"  of which {r['phase']}" if r["phase"] in NESTED else r["phase"]
        print(f"{name:<32}{r['gflop']:>10,.0f}{r['floor_s']:>9.1f}{r['counted_run_s']:>8.1f}{share:>9}")
    print(f"{'all counted':<32}{total['gflop']:>10,.0f}{total['floor_s']:>9.1f}{total['counted_run_s']:>8.1f}")
    report = {"command": " ".join(["python", "experiments/bench_floor.py", *sys.argv[1:]]),
              "git_commit": git_commit(), "machine": machine, "threads": args.threads,
              "matmul_gflops": rates, "phases": rows, "total": total,
              "dev": {row: results["agents"][row]["dev"] for row in ("teacher", "student", "mpdistil")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
