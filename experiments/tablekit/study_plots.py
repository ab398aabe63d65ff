"""The generalisation-vs-fidelity study's figures (PNG): gain against each measure, accuracy against fidelity by
student depth and by temperature, and accuracy against the size of the transfer set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from .study import MEASURES, Correlation, Record, fmt  # noqa: E402

GAIN_PNG, FIDELITY_PNG, TRANSFER_PNG = "paradox_gain.png", "paradox_fidelity.png", "paradox_transfer.png"


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def _scatter(ax: plt.Axes, records: Sequence[Record], x: str, y: str, by: str) -> None:
    """Points coloured by the values of ``by`` (numeric order when they are numbers)."""
    groups = sorted(
        {r[by] for r in records}, key=lambda v: (float(v), v) if v.replace(".", "", 1).isdigit() else (math.inf, v)
    )
    cmap = plt.get_cmap("viridis" if len(groups) > 1 else "tab10")
    for i, g in enumerate(groups):
        pts = [(r[x], r[y]) for r in records if r[by] == g and _finite(r[x], r[y])]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=20, color=cmap(i / max(len(groups) - 1, 1)), label=f"{by}={g}")
    if ax.collections:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def gain_plot(records: Sequence[Record], corrs: Sequence[Correlation], path: Path) -> None:
    pooled = {c.measure: c for c in corrs if c.scope == "all"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, (key, label) in zip(axes.flat, MEASURES):
        _scatter(ax, records, key, "gain", "task")
        ax.set_xlabel(label, fontsize=8)
        c = pooled.get(key)
        if c is not None and not c.reason:
            label += f"\nρ={fmt(c.rho, 2)} [{fmt(c.lo, 2)}, {fmt(c.hi, 2)}], n={c.n}"
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("gain over undistilled (points)", fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.6, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fidelity_plot(records: Sequence[Record], path: Path) -> None:
    """Student score against agreement and KL, coloured by student depth (left) and by temperature (right)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), squeeze=False)
    for i, (x, label) in enumerate(
        (("agreement", "agreement with the teacher"), ("kl_teacher_student", "KL(teacher‖student)"))
    ):
        for j, by in enumerate(("student_layers", "temperature")):
            ax = axes[i][j]
            _scatter(ax, records, x, "student", by)
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("student score (main dev metric)", fontsize=8)
            ax.set_title(f"by {by.replace('_', ' ')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def transfer_plot(records: Sequence[Record], path: Path) -> None:
    """Student score against the number of teacher-labelled transfer inputs, per task, with the mean per size."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, task in enumerate(sorted({r["task"] for r in records})):
        pts = [
            (r["transfer_examples"], r["student"])
            for r in records
            if r["task"] == task and _finite(r["transfer_examples"], r["student"])
        ]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=14, alpha=0.5, color=cmap(i % 10))
        sizes = sorted(set(xs))
        means = [sum(y for x, y in pts if x == s) / sum(1 for x, _ in pts if x == s) for s in sizes]
        ax.plot(sizes, means, marker="o", color=cmap(i % 10), label=f"{task} (mean)")
    ax.set_xlabel("transfer inputs (teacher-labelled only)")
    ax.set_ylabel("student score (main dev metric)")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(records: Sequence[Record], corrs: Sequence[Correlation], out: Path) -> list[str]:
    """The three figures into ``out``; their file names."""
    gain_plot(records, corrs, out / GAIN_PNG)
    fidelity_plot(records, out / FIDELITY_PNG)
    transfer_plot(records, out / TRANSFER_PNG)
    return [GAIN_PNG, FIDELITY_PNG, TRANSFER_PNG]
