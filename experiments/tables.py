"""Run and render the paper's tables (1a, 1b, 4), the CPU reproduction and the ablations.

    python experiments/tables.py run <table> [--tasks ...] [--seeds 1 2 3] [--data-dir DIR]
        [--runs-root runs] [--launcher joblib] [--base cpu_repro] [--settings ...] [--dry-run] [-- overrides]
    python experiments/tables.py render <table> <runs_dir | earlier CSV or predictions file> ... [--out DIR]
        [--experiment-name NAME ...] [--agent ROW]

One run of ``method=mpdistil`` fills several rows (teacher, meta-teacher, no-curriculum student,
MPDistil student), so ``run`` launches only the distinct runs: per task and seed one ``method=pkd``
run and four ``method=mpdistil`` runs (meta loss col|com x reward binary|real), as two Hydra
multiruns per task (over seeds). Per task, so that a task that cannot run (e.g. its files are
missing) stops only its own sweeps; the kd sweep goes first, so every teacher is fine-tuned once and
read from the cache by the mpdistil sweep. A failed sweep does not stop the next one. ``render``
rebuilds the table from whatever results.json files exist: a cell without a run stays ``—``;
nothing is filled in from the paper. It also writes every value it used per seed
(``<table>_seeds.csv``) and the per-example dev predictions behind every cell
(``<table>_predictions.json``); given back as inputs, these let seeds run later add to a table whose
run folders are gone, and every paired comparison be recomputed. Under the table it prints paired
comparisons (each student against the teacher, MPDistil against KD; in the ablation the full
method against each setting, "learned vs uniform policy" when a setting draws actions uniformly):
a paired bootstrap over dev examples within each seed, the mean over seeds of the difference, its
95% interval and the seeds agreeing in sign. A student is marked ``*`` above its teacher, and a
comparison says ``beats``, only when that interval excludes zero; otherwise it says ``tie``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # a script: paper_tables and tablekit sit beside it
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))  # and the metrics come from mpdistil, also without `pip install -e .`

from tablekit.launch import add_sweep_options, cmd_run, run_or_render  # noqa: E402
from tablekit.render import cmd_render  # noqa: E402
from tablekit.specs import ABLATIONS, TABLES  # noqa: E402


def parser() -> argparse.ArgumentParser:
    kinds = [*TABLES, "ablation"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="launch the Hydra multiruns of a table (overrides after --)")
    r.add_argument("table", choices=kinds)
    r.add_argument("--tasks", nargs="+", help="default: every column of the table")
    add_sweep_options(r, "folder with the official benchmark files (default: the HF hub)",
                      "sweeps go to <runs-root>/<table>/<sweep>/")
    r.add_argument("--base", default="cpu_repro", help="ablation only: the experiment preset the settings modify")
    r.add_argument("--settings", nargs="+", help=f"ablation only (default: all): {', '.join(ABLATIONS)}")
    r.add_argument("--only", choices=["kd", "mpdistil"],
                   help="tables only: run just this sweep per task, e.g. to finish a table whose other sweep exists")
    d = sub.add_parser("render", help="rebuild a table from the results.json files under runs folders")
    d.add_argument("table", choices=kinds)
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a runs folder, or a <table>_seeds.csv / <table>_long.csv / <table>_predictions.json[.gz] an "
                        "earlier render wrote (runs win over a seeds CSV or a predictions file; a long CSV fills "
                        "only columns nothing else has)")
    d.add_argument("--out", help="output folder (default: the first runs folder)")
    d.add_argument("--experiment-name", nargs="+",
                   help="tables: accept runs of these experiment_names instead of the table's")
    d.add_argument("--agent", help="ablation: agent row to show (default: the final student)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_or_render(parser(), sys.argv[1:] if argv is None else argv, cmd_run, cmd_render)


if __name__ == "__main__":
    sys.exit(main())
