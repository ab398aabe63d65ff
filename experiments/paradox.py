"""The generalisation-vs-fidelity study: when does a distilled student beat its teacher, and does its gain follow
its fidelity?

    python experiments/paradox.py run [--grid cpu|full] [--tasks ...] [--seeds 1 2 3] [--data-dir DIR]
        [--runs-root runs] [--launcher joblib] [--dry-run] [-- overrides]
    python experiments/paradox.py render INPUT [INPUT ...] [--out DIR] [--row ROW] [--wandb]

``run`` launches the grid's Hydra multiruns of ``method=kd`` (teacher, undistilled and KD student in one run,
with fidelity) over student depth, temperature, teacher label noise, teacher-labelled coverage, frontier
filtering and student initialisation (``tablekit/grid.py``): ``full`` is the factorial, ``cpu`` one factor at
a time around a centre point. ``render`` reads every results.json under the runs folders (and earlier
paradox.csv files with their paradox_predictions.json) and writes paradox.md, paradox.csv,
paradox_predictions.json and the plots (``tablekit/study.py``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # a script: tablekit sits beside it
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))  # and mpdistil, also without `pip install -e .`

from tablekit.grid import GRIDS, coverage_sources, factors, study_sweeps, sweep_runs  # noqa: E402
from tablekit.launch import (  # noqa: E402
    add_sweep_options,
    compose_run,
    hydra_value,
    render_folder,
    run_or_render,
    run_sweeps,
)

DEFAULT_TASKS = {"full": ["sentiment_movies", "cb", "rte"], "cpu": ["sentiment_movies"]}


def fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def compose(task: str, data_dir: str | None, extra: Sequence[str]) -> Any:
    """The run's config for ``task`` as the grid's runs compose it (without the grid's levels and any sweeps)."""
    return compose_run(["method=kd", f"task={task}", *([f"data_dir={data_dir}"] if data_dir else []), *extra])


def teacher_layers(cfg: Any) -> int | None:
    """The teacher's depth, read from its config without loading weights; None when that needs a download."""
    from mpdistil.config import ConfigError
    from mpdistil.models import pypi_split
    from mpdistil.models.loading import load_config, resolve_model_source

    m = cfg.model
    if m.random_init and "num_hidden_layers" in m.config_overrides:
        return int(m.config_overrides["num_hidden_layers"])
    try:
        source = resolve_model_source(m.teacher, cfg.cache_dir)[0]
        if pypi_split.pending_split_model(source) is not None:
            return None
        return int(load_config(source).num_hidden_layers)
    except (ConfigError, OSError, ValueError):
        return None


def task_data_dir(task: str, data_dir: str | None) -> str | None:
    """The data_dir a task's runs get: the benchmark folder, except for tasks that fetch their own data (the sentiment
    suite from PyPI), which a benchmark folder would mislead. A task that cannot find its data fails here, in one
    line, before any sweep starts."""
    from mpdistil.data.registry import get_task_spec, locate_task_dir
    from mpdistil.data.types import DataError

    try:
        spec = get_task_spec(task)
        if spec.loader is not None:
            return None
        if data_dir:
            locate_task_dir(spec, data_dir)
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            raise DataError(
                f"task {task} has no --data-dir and HF_HUB_OFFLINE=1 rules out the hub; pass "
                f"--data-dir <folder holding {spec.benchmark}/{spec.folder or task}/>"
            )
    except DataError as exc:
        raise fail(str(exc)) from None
    return data_dir


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from mpdistil.data.registry import get_task_spec
    from mpdistil.data.transfer import task_presets

    if args.grid not in GRIDS:
        raise fail(f"unknown grid {args.grid!r}; use --grid {' or --grid '.join(GRIDS)}")
    tasks = args.tasks or DEFAULT_TASKS[args.grid]
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    folders = {task: task_data_dir(task, data_dir) for task in tasks}
    root = Path(args.runs_root).expanduser().resolve()
    sentiment = [t for t in task_presets() if t.startswith("sentiment_")]
    sweeps, counts = [], []
    for task in tasks:
        # the sentiment domains share one label scheme: each run is also scored on the others (out of domain)
        ood = [t for t in sentiment if t != task] if task in sentiment else []
        common = [
            *([f"data_dir={hydra_value(folders[task])}"] if folders[task] else []),
            *([f"hydra/launcher={args.launcher}"] if args.launcher else []),
            *([f"eval.ood_tasks=[{','.join(ood)}]"] if ood else []),
        ]
        cfg = compose(task, folders[task], extra)
        sources = coverage_sources(task, get_task_spec(task).benchmark, sentiment)
        centre = {"student_layers": cfg.model.student_layers, "temperature": cfg.method.temperature}
        depth = teacher_layers(cfg)
        if depth is None:
            print(f"# {task}: the teacher's depth is not known without a download; every student depth is kept")
        task_sweeps = study_sweeps(args.grid, task, factors(sources, depth, centre), args.seeds, common, root, extra)
        runs = [sweep_runs(s) for s in task_sweeps]
        total = None if None in runs else sum(runs)
        counts.append(total)
        print(
            f"# {task}: {len(task_sweeps)} multiruns, {total if total is not None else 'an unknown number of'} "
            f"runs ({len(args.seeds)} seed(s))"
        )
        sweeps += task_sweeps
    total = None if None in counts else sum(counts)
    out_dir = root / "paradox" / args.grid
    print(
        f"# grid {args.grid}: {total if total is not None else 'an unknown number of'} runs in {len(sweeps)} "
        f"multiruns over {len(tasks)} task(s)"
    )
    render = f"python experiments/paradox.py render {shlex.quote(str(out_dir))} --out {shlex.quote(str(out_dir))}"
    return run_sweeps(sweeps, out_dir, f"paradox/{args.grid}", render, "paradox", args.dry_run)


def log_wandb(out: Path, plots: Sequence[str], csv_path: Path) -> None:
    import csv

    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "mpdistil"), job_type="paradox", name=out.name, dir=str(out)
    )
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    run.log(
        {
            **{Path(p).stem: wandb.Image(str(out / p)) for p in plots},
            "paradox_runs": wandb.Table(columns=rows[0], data=rows[1:]),
        }
    )
    run.finish()


def cmd_render(args: argparse.Namespace) -> int:
    from tablekit.study import (
        PREDICTIONS,
        check_inputs,
        correlations,
        gather,
        level_means,
        markdown,
        write_csv,
        write_predictions,
    )
    from tablekit.study_plots import write_plots

    inputs = [Path(p).expanduser().resolve() for p in args.inputs]
    check_inputs(inputs)
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise fail("--wandb needs the wandb package; pip install wandb, or leave out --wandb") from None
    records, notes = gather(inputs, args.row)
    if not records:
        raise fail(
            f"no run under {', '.join(map(str, inputs))} has teacher, undistilled and student scores; "
            "run the study with method=kd (paradox.py run does)"
        )
    out = render_folder(args.out, inputs)
    corrs = correlations(records)
    means = level_means(records)
    plots = write_plots(records, corrs, out)
    write_csv(records, out / "paradox.csv")
    write_predictions(records, out / PREDICTIONS)
    (out / "paradox.md").write_text(markdown(records, corrs, means, notes, plots))
    if args.wandb:
        log_wandb(out, plots, out / "paradox.csv")
    print(f"{len(records)} run(s); wrote {out / 'paradox.md'}, {out / 'paradox.csv'} and {len(plots)} plots")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="launch the grid's Hydra multiruns (overrides after --)")
    r.add_argument("--grid", default="cpu", help=f"{' | '.join(GRIDS)} (default: cpu)")
    r.add_argument("--tasks", nargs="+", help="default: sentiment_movies (cpu); sentiment_movies cb rte (full)")
    add_sweep_options(r, "folder with the official benchmark files (SuperGLUE's CB and RTE)",
                      "runs go to <runs-root>/paradox/<grid>/<task>/")
    d = sub.add_parser("render", help="tables, correlations and plots from finished runs")
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a runs folder, or a paradox.csv (and its paradox_predictions.json) an earlier render wrote")
    d.add_argument("--out", help="output folder (default: the first runs folder)")
    d.add_argument("--row", help="the student row under study (default: each run's final student)")
    d.add_argument("--wandb", action="store_true", help="also log the plots and the runs table to W&B")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_or_render(parser(), sys.argv[1:] if argv is None else argv, cmd_run, cmd_render)


if __name__ == "__main__":
    sys.exit(main())
