"""The Hydra multiruns behind a table or the ablation: which ``main.py -m`` commands, run one after another."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paper_tables import SUPERGLUE_COLUMNS

from .specs import ABLATIONS, TABLES

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Sweep:
    """One Hydra multirun: ``python main.py -m <overrides>`` (or another entry point, e.g. ``-m mpdistil.teachers
    audit``, given as ``entry``)."""

    name: str
    overrides: list[str]
    entry: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, *(self.entry or (str(REPO / "main.py"), "-m")), *self.overrides]


_PLAIN = re.compile(r"^[\w./:+\-@]*$")


def hydra_value(value: str) -> str:
    """Quote a value for a Hydra override when it has characters the override grammar would parse."""
    if _PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_sweep(override: str) -> bool:
    """Whether an extra override expands to several jobs (a,b | choice(...) | range(...) | glob(...))."""
    _, sep, value = override.partition("=")
    value = value.strip()
    if not sep or value.startswith(("[", "{", "'", '"')):
        return False
    return "," in value or value.startswith(("choice(", "range(", "glob(", "interval("))


def sweep_suffix(extra: Sequence[str]) -> str:
    """Extra overrides that sweep need their own folder level, or their jobs would share one folder."""
    return "/${hydra.job.override_dirname}" if any(is_sweep(e) for e in extra) else ""


def table_sweeps(table: str, tasks: Sequence[str], seeds: Sequence[int], common: list[str], root: Path,
                 extra: list[str]) -> list[Sweep]:
    """Per task: the pkd sweep, then the four mpdistil variants (the teacher is trained once, by the first)."""
    spec = TABLES[table]
    out = []
    for task in tasks:
        base = [f"experiment={spec.experiment}", f"task={task}", f"seed={','.join(map(str, seeds))}",
                f"experiment_name={table}", *common]
        out.append(Sweep(f"{task}/kd", ["method=pkd", *base,
                                        f"hydra.sweep.dir={hydra_value(str(root / table / task / 'kd'))}",
                                        "hydra.sweep.subdir=seed${seed}" + sweep_suffix(extra), *extra]))
        out.append(Sweep(f"{task}/mpdistil", [
            "method=mpdistil", "method.meta_loss=col,com", "method.reward=binary,real", *base,
            f"hydra.sweep.dir={hydra_value(str(root / table / task / 'mpdistil'))}",
            "hydra.sweep.subdir=seed${seed}/${method.meta_loss}_${method.reward}" + sweep_suffix(extra), *extra]))
    return out


def ablation_sweeps(base: str, settings: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
                    common: list[str], root: Path, extra: list[str]) -> list[Sweep]:
    """Per task and setting one sweep over seeds; the full method always first."""
    out = []
    for task in tasks:
        for name in (["full"] + [s for s in settings if s != "full"]):
            ab = ABLATIONS[name]
            out.append(Sweep(f"{task}/{name}", [
                f"experiment={base}", f"method={ab.method}", f"task={task}", f"seed={','.join(map(str, seeds))}",
                f"experiment_name=ablation/{name}", *common, *ab.overrides,
                f"hydra.sweep.dir={hydra_value(str(root / 'ablation' / task / name))}",
                "hydra.sweep.subdir=seed${seed}" + sweep_suffix(extra), *extra]))
    return out


def default_tasks(table: str) -> list[str]:
    return [c.task for c in (TABLES[table].columns if table in TABLES else SUPERGLUE_COLUMNS)]


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    """``tables.py run``: launch (or with --dry-run print) the sweeps; a failed sweep does not stop the next."""
    root = Path(args.runs_root).expanduser().resolve()
    tasks = args.tasks or default_tasks(args.table)
    common = []
    if args.data_dir:
        common.append(f"data_dir={hydra_value(str(Path(args.data_dir).expanduser().resolve()))}")
    if args.launcher:
        common.append(f"hydra/launcher={args.launcher}")
    if args.table == "ablation" and args.only:
        print("error: --only picks a table's kd or mpdistil sweep; for the ablation pick with --settings",
              file=sys.stderr)
        return 2
    if args.table == "ablation":
        unknown = [s for s in args.settings or [] if s not in ABLATIONS]
        if unknown:
            print(f"error: unknown ablation setting(s) {unknown}; known: {', '.join(ABLATIONS)}", file=sys.stderr)
            return 2
        sweeps = ablation_sweeps(args.base, args.settings or list(ABLATIONS), tasks, args.seeds, common, root, extra)
        out_dir = root / "ablation"
    else:
        sweeps = table_sweeps(args.table, tasks, args.seeds, common, root, extra)
        if args.only:
            sweeps = [s for s in sweeps if s.name.endswith("/" + args.only)]
        out_dir = root / args.table
    render = f"python experiments/tables.py render {args.table} {shlex.quote(str(out_dir))}"
    return run_sweeps(sweeps, out_dir, args.table, render, "tables", args.dry_run)


def run_sweeps(sweeps: Sequence[Sweep], out_dir: Path, label: str, render: str, tag: str,
               dry_run: bool = False) -> int:
    """Run the sweeps one after another, one line each in ``<out_dir>/sweeps.jsonl``; a failed sweep does not stop
    the next. Returns 1 if any failed. ``dry_run``: print the commands and the render command only."""
    if dry_run:
        for s in sweeps:
            print(shlex.join(s.command()))
        print(f"# then: {render}")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    log = []
    for s in sweeps:
        print(f"\n[{tag}] {label}/{s.name}: {shlex.join(s.command())}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(s.command(), cwd=REPO).returncode
        row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "sweep": s.name, "command": s.command(),
               "returncode": rc, "seconds": round(time.perf_counter() - start, 1)}
        log.append(row)
        with open(out_dir / "sweeps.jsonl", "a") as f:  # one line per sweep, kept when the script is killed
            f.write(json.dumps(row) + "\n")
        if rc != 0:
            print(f"[{tag}] {label}/{s.name} failed (exit {rc}); its finished runs are kept", flush=True)
    failed = [r["sweep"] for r in log if r["returncode"] != 0]
    print(f"\n[{tag}] {len(log) - len(failed)}/{len(log)} sweeps succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"\n[{tag}] render: {render}", flush=True)
    return 1 if failed else 0


def compose_run(overrides: Sequence[str]) -> Any:
    """The config one job of a sweep runs with: ``overrides`` without sweeps (``seed=1,2,3``) and Hydra's own keys.
    A set that does not compose stops the script with one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mpdistil.config import register_configs

    register_configs()
    kept = [o for o in overrides if not is_sweep(o) and not o.startswith("hydra")]
    try:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            return compose("config", overrides=kept)
    except (HydraException, OmegaConfBaseException) as exc:
        raise SystemExit(f"error: the overrides {shlex.join(kept)} do not compose: {str(exc).splitlines()[0]}") \
            from None


def add_sweep_options(run: argparse.ArgumentParser, data_dir_help: str, runs_root_help: str) -> None:
    """The options every experiment script's ``run`` shares: seeds, data, where runs go, launcher, dry run."""
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    run.add_argument("--data-dir", help=data_dir_help)
    run.add_argument("--runs-root", default="runs", help=f"{runs_root_help} (default: runs)")
    run.add_argument("--launcher", help="a hydra/launcher preset: joblib | submitit_slurm | ray")
    run.add_argument("--dry-run", action="store_true", help="print the commands only")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """A script's own arguments and the Hydra overrides after ``--`` (which only ``run`` passes on)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def run_or_render(parser: argparse.ArgumentParser, argv: Sequence[str],
                  run: Callable[[argparse.Namespace, list[str]], int],
                  render: Callable[[argparse.Namespace], int]) -> int:
    """The ``run``/``render`` entry of the experiment scripts: parse, refuse overrides outside ``run``, dispatch."""
    own, extra = split_overrides(argv)
    args = parser.parse_args(own)
    if extra and args.verb != "run":
        parser.error("overrides after -- are only for `run`")
    return run(args, extra) if args.verb == "run" else render(args)


def render_folder(out: str | None, inputs: Sequence[Path]) -> Path:
    """Where a render writes: ``--out``, else the first input folder (or the folder of the first input file)."""
    folder = Path(out).expanduser().resolve() if out else inputs[0] if inputs[0].is_dir() else inputs[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder
