"""Choosing and combining teachers: which teacher, or mixture of teachers, gives the better 3-layer MiniLM student,
and did the teacher audit predict it?

    python experiments/teacher_choice.py run [--tasks cb copa sentiment_movies] [--seeds 1 2 3] [--arms ARM ...]
        [--data-dir DIR] [--runs-root runs] [--launcher joblib] [--no-audit] [--dry-run] [-- overrides]
    python experiments/teacher_choice.py render INPUT [INPUT ...] [--out DIR]

``run`` launches, per task, one Hydra multirun over the seeds for each arm (``tablekit/choice.py``: MiniLM-L6,
MPNet-base, an SRE-tuned MiniLM-L6, MiniLM-L6 and MPNet-base mixed by the mean and by learned weights,
MiniLM-L6's checkpoints in order, and on CB the MPNet 12 → 6 pair), all ``method=kd`` under
``experiment=cpu_heldout`` (selection on a held-out slice of train), and the teacher audit of the three single
teachers with the same student at the first seed. Teachers are fine-tuned once per seed and shared through the
cache (the mixtures reuse the single arms' teachers). ``--arms`` runs some arms only, e.g. one added later.
``render`` writes choice.md and choice_records.json (every record, so a later render can add seeds without these
run folders).

The SRE-tuned teacher's weights install alone: ``pip install --no-deps sre-embedding-model==1.0.0``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # a script: tablekit sits beside it
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))  # and mpdistil, also without `pip install -e .`

from tablekit.choice import ARMS, AUDIT_OVERRIDES  # noqa: E402
from tablekit.launch import (  # noqa: E402
    Sweep,
    add_sweep_options,
    compose_run,
    hydra_value,
    render_folder,
    run_or_render,
    run_sweeps,
)

DEFAULT_TASKS = ["cb", "copa", "sentiment_movies"]
COMMON = ["method=kd", "experiment=cpu_heldout"]


def fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def sweeps(tasks: Sequence[str], seeds: Sequence[int], data_dir: str | None, root: Path, launcher: str | None,
           audit: bool, extra: Sequence[str], arms: Sequence[str] = tuple(ARMS)) -> list[Sweep]:
    """Per task, the arms' multiruns (the MiniLM-L6 arm first: it fine-tunes the teacher the others share), then
    the audit, which reads both teachers from the cache."""
    from paradox import task_data_dir

    out = []
    for task in tasks:
        folder = task_data_dir(task, data_dir)
        common = [*COMMON, f"task={task}", *([f"data_dir={hydra_value(folder)}"] if folder else []),
                  "experiment_name=teacher_choice"]
        for name, arm in ARMS.items():
            if name not in arms or not arm.runs_on(task):
                continue
            out.append(Sweep(f"{task}/{name}", [
                *common, *arm.overrides, f"seed={','.join(map(str, seeds))}",
                f"hydra.sweep.dir={hydra_value(str(root / task / name))}", "hydra.sweep.subdir=seed${seed}",
                *([f"hydra/launcher={launcher}"] if launcher else []), *extra]))
        if audit:
            out.append(Sweep(f"{task}/audit", [
                *[c for c in common if c != "method=kd"], *AUDIT_OVERRIDES, f"seed={seeds[0]}",
                f"hydra.run.dir={hydra_value(str(root / task / 'audit'))}", *extra],
                entry=("-m", "mpdistil.teachers", "audit")))
    return out


def check_plan(plan: Sequence[Sweep]) -> None:
    """Every arm's config passes the run's own checks (composes, validates, names installed models), before the
    first sweep starts: a typo or a missing model package in the last arm would otherwise surface hours in."""
    from mpdistil.config import ConfigError
    from mpdistil.run import preflight

    for sweep in plan:
        if sweep.entry:  # an audit: its candidates are the arms' teachers, checked here
            continue
        try:
            preflight(compose_run(sweep.overrides))
        except ConfigError as exc:
            raise fail(f"{sweep.name}: {exc}") from None


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    unknown = [t for t in args.tasks if t not in ("cb", "copa", "rte", "wic", "wsc") and not t.startswith("sentiment")]
    if unknown:
        raise fail(f"tasks {unknown}: the arms are built for classification and multiple-choice tasks with a "
                   "held-out slice (SuperGLUE CB, COPA, RTE, WiC, WSC and the sentiment suite)")
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise fail(f"arms {unknown}: choose from {', '.join(ARMS)}")
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    root = Path(args.runs_root).expanduser().resolve() / "teacher_choice"
    plan = sweeps(args.tasks, args.seeds, data_dir, root, args.launcher, not args.no_audit, extra, args.arms)
    if not args.dry_run:
        check_plan(plan)
    runs = sum(len(args.seeds) for s in plan if not s.entry)
    print(f"# {len(plan)} commands: {runs} runs over {len(args.tasks)} task(s) and {len(args.seeds)} seed(s)"
          + ("" if args.no_audit else f", and {len(args.tasks)} audit(s)"))
    render = f"python experiments/teacher_choice.py render {root} --out {root}"
    return run_sweeps(plan, root, "teacher_choice", render, "teacher_choice", args.dry_run)


def cmd_render(args: argparse.Namespace) -> int:
    from tablekit.choice import gather, markdown, write_records

    inputs = [Path(p).expanduser().resolve() for p in args.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise fail(f"no such input: {', '.join(missing)}; give a teacher_choice runs folder or a choice_records.json")
    records, audits, notes = gather(inputs)
    if not records:
        raise fail(f"no finished run under {', '.join(map(str, inputs))} (expected <task>/<arm>/seed<N>/ folders)")
    out = render_folder(args.out, inputs)
    (out / "choice.md").write_text(markdown(records, audits, notes))
    write_records(records, audits, out / "choice_records.json")
    print(f"{len(records)} run(s); wrote {out / 'choice.md'} and {out / 'choice_records.json'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="launch every arm's multirun and the audits (overrides after --)")
    r.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    r.add_argument("--arms", nargs="*", default=list(ARMS),
                   help=f"some of: {' '.join(ARMS)} (default: all; `--arms` alone: the audits only)")
    r.add_argument("--no-audit", action="store_true", help="leave out the teacher audits")
    add_sweep_options(r, "folder with the official SuperGLUE files",
                      "runs go to <runs-root>/teacher_choice/<task>/<arm>/")
    d = sub.add_parser("render", help="the table from finished runs (and earlier choice_records.json files)")
    d.add_argument("inputs", nargs="+", metavar="INPUT")
    d.add_argument("--out", help="output folder (default: the first runs folder)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_or_render(parser(), sys.argv[1:] if argv is None else argv, cmd_run, cmd_render)


if __name__ == "__main__":
    sys.exit(main())
