"""The generalisation-vs-fidelity study's grids: its factors, each level as config overrides, and the Hydra
multiruns that cover a grid.

A factor whose levels each set one config key (student depth, temperature, filtering, student init) is
swept inside one multirun as a comma list; a factor whose levels set several keys (teacher noise: kind and
rate; coverage: sources, size and copies) splits the grid into separate multiruns. ``full`` is the
factorial; ``cpu`` varies one factor at a time around a centre point (the composed config's own values
where they are levels), so its size grows with the sum of the factors' levels, not their product, and adds
the crossed cells of ``CPU_CROSSED``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .launch import Sweep, hydra_value, is_sweep, sweep_suffix

GRIDS = ("full", "cpu")
STUDENT_LAYERS = (1, 2, 3, 6)
TEMPERATURES = (1.0, 2.0, 5.0, 10.0)
FLIP_RATES = (0.1, 0.2)
COVERAGE = ("1x", "4x")
FRONTIER = ("none", "student_prob")
STUDENT_INIT = ("pretrained", "random")
# Beyond one factor at a time, the cpu grid crosses these pairs (every level of the second factor at one level of
# the first): does a high temperature collapse the smallest student, does filtering help a noisy teacher, and can a
# student of any depth started from scratch do what one started from the teacher's layers does?
CPU_CROSSED = (("student_layers", "1", "temperature"), ("frontier", "student_prob", "teacher_noise"),
               ("student_init", "random", "student_layers"))
# Held fixed by every run of the study: the distillation under study, and the filter's share when it is on.
COMMON = ("method=kd", "method.frontier_keep=0.9", "method.frontier_warmup=1")


@dataclass(frozen=True)
class Level:
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Factor:
    name: str
    levels: tuple[Level, ...]
    key: str | None = None  # the one config key every level sets (None: a level sets several)
    centre: str = ""  # the label of the centre point's level

    def level(self, label: str) -> Level:
        return next(lv for lv in self.levels if lv.label == label)


def _single(name: str, key: str, values: Sequence[object], centre: object) -> Factor:
    levels = tuple(Level(_label(v), (f"{key}={_label(v)}",)) for v in values)
    wanted = _label(centre)
    return Factor(name, levels, key, wanted if any(lv.label == wanted for lv in levels) else levels[0].label)


def _label(value: object) -> str:
    """A level as Hydra writes it back (5.0 -> 5.0, 3 -> 3), so folder names and overrides agree."""
    return str(value)


def coverage_sources(task: str, benchmark: str, sentiment_tasks: Sequence[str]) -> list[str]:
    """Inputs only the teacher labels: the other sentiment domains for a sentiment task, else perturbed train′."""
    if benchmark == "sentiment":
        return [t for t in sentiment_tasks if t != task]
    return ["augment"]


def factors(sources: Sequence[str], teacher_layers: int | None, centre: Mapping[str, object]) -> list[Factor]:
    """The study's factors for one task. Student depths above the teacher's are left out; ``centre`` holds the
    composed config's student depth and temperature."""
    depths = [d for d in STUDENT_LAYERS if teacher_layers is None or d <= teacher_layers]
    transfer = f"data.transfer=[{','.join(sources)}]"
    augment = list(sources) == ["augment"]
    coverage = [Level("none", ("data.transfer=[]",))]
    for size in COVERAGE:
        copies = (f"data.augment_multiplier={int(float(size[:-1]))}",) if augment else ()
        coverage.append(Level(size, (transfer, f"data.transfer_size={size}", *copies)))
    noise = [Level("none", ("method.teacher_noise=none",))]
    noise += [
        Level(f"label_flip:{r}", ("method.teacher_noise=label_flip", f"method.teacher_noise_rate={r}"))
        for r in FLIP_RATES
    ]
    return [
        _single("student_layers", "model.student_layers", depths, centre.get("student_layers")),
        _single("temperature", "method.temperature", TEMPERATURES, centre.get("temperature")),
        Factor("teacher_noise", tuple(noise), centre="none"),
        Factor("coverage", tuple(coverage), centre="none"),
        _single("frontier", "method.frontier_filter", FRONTIER, "none"),
        _single("student_init", "model.student_init", STUDENT_INIT, "pretrained"),
    ]


Point = dict[str, str]  # factor name -> level label


def design(grid: str, facs: Sequence[Factor]) -> list[Point]:
    """The grid's design points: every combination (``full``), or the centre and each factor's other levels with
    the rest at the centre (``cpu``)."""
    if grid == "full":
        return [
            dict(zip([f.name for f in facs], combo))
            for combo in itertools.product(*[[lv.label for lv in f.levels] for f in facs])
        ]
    if grid == "cpu":
        centre = {f.name: f.centre for f in facs}
        points = [centre] + [{**centre, f.name: lv.label} for f in facs for lv in f.levels if lv.label != f.centre]
        by_name = {f.name: f for f in facs}
        for first, level, second in CPU_CROSSED:
            if first in by_name and second in by_name and any(lv.label == level for lv in by_name[first].levels):
                points += [{**centre, first: level, second: lv.label} for lv in by_name[second].levels]
        return list({tuple(sorted(p.items())): p for p in points}.values())  # each point once
    raise ValueError(f"unknown grid {grid!r}")


def _is_product(points: Sequence[Point], names: Sequence[str]) -> bool:
    """Whether the points are every combination of their own levels of ``names``, each once."""
    combos = {tuple(p[n] for n in names) for p in points}
    return len(combos) == len(points) == math.prod(len({p[n] for p in points}) for n in names)


def study_sweeps(
    grid: str, task: str, facs: Sequence[Factor], seeds: Sequence[int], common: list[str], root: Path, extra: list[str]
) -> list[Sweep]:
    """One multirun per level of the several-key factors, the one-key factors as comma lists when the points of
    that multirun form their full product, else one multirun per point. Every job lands in
    ``<root>/paradox/<grid>/<task>/<noise>_<coverage>/<depth>-<temperature>-<filter>-<init>/seed<s>``."""
    single = [f for f in facs if f.key is not None]
    several = [f for f in facs if f.key is None]
    points = design(grid, facs)
    groups: dict[tuple[str, ...], list[Point]] = {}
    for p in points:
        groups.setdefault(tuple(p[f.name] for f in several), []).append(p)
    subdir = "-".join(f"${{{f.key}}}" for f in single) + "/seed${seed}" + sweep_suffix(extra)
    out = []
    for labels, members in groups.items():
        folder = "_".join(f"{f.name}-{lab}".replace(":", "-") for f, lab in zip(several, labels))
        fixed = [o for f, lab in zip(several, labels) for o in f.level(lab).overrides]
        names = [f.name for f in single]
        batches = [members] if _is_product(members, names) else [[p] for p in members]
        for batch in batches:
            swept = [f"{f.key}={','.join(dict.fromkeys(p[f.name] for p in batch))}" for f in single]
            tag = folder if len(batches) == 1 else f"{folder}/" + "-".join(batch[0][n] for n in names)
            out.append(
                Sweep(
                    f"{task}/{tag}",
                    [
                        *COMMON,
                        f"task={task}",
                        f"seed={','.join(map(str, seeds))}",
                        f"experiment_name=paradox/{grid}",
                        *common,
                        *fixed,
                        *swept,
                        f"hydra.sweep.dir={hydra_value(str(root / 'paradox' / grid / task / folder))}",
                        f"hydra.sweep.subdir={subdir}",
                        *extra,
                    ],
                )
            )
    return out


def sweep_runs(sweep: Sweep) -> int | None:
    """How many jobs a multirun launches: the product of its comma lists; None when an extra override sweeps by a
    function (``range(...)``, ``choice(...)``), whose count is Hydra's to work out."""
    n = 1
    for o in sweep.overrides:
        if o.startswith("hydra.") or not is_sweep(o):
            continue
        value = o.partition("=")[2].strip()
        if "(" in value:
            return None
        n *= len(value.split(","))
    return n
