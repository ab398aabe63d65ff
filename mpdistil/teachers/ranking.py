"""Ranking teachers: one weighted score from criteria measured on the selection split.

Every criterion is min-max normalised across the candidates (1 for the best, 0 for the worst, 1 for all when
they tie), so weights compare criteria of different units; the score is the weighted mean of the normalised
values. A profile is a named weighting; ``audit.weights`` changes it criterion by criterion. The score ranks
the candidates of one audit: it is not comparable across audits with other candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from mpdistil.config import ConfigError


@dataclass(frozen=True)
class Criterion:
    """One measured quantity the ranking can weigh, and which direction is better."""

    name: str
    higher_is_better: bool
    meaning: str


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("task", True, "the task's main metric on the selection split"),
        Criterion("calibration", False, "ECE on the selection split (before temperature scaling)"),
        Criterion("agreement", True, "label agreement of the budget-distilled student with the teacher"),
        Criterion("kl", False, "KL(teacher || budget-distilled student), nats"),
        Criterion("ood", True, "mean main metric on the partner tasks with the same labels"),
        Criterion("latency", False, "inference time per example, ms"),
        Criterion("size", False, "parameters"),
    )
}

# early: a student early in its life learns most from a teacher it can follow, so ease dominates;
# late: a student that already follows well gains from the teacher that is most often right and honest about it.
PROFILES: dict[str, dict[str, float]] = {
    "early": {"agreement": 3.0, "kl": 3.0, "task": 1.0, "calibration": 1.0},
    "late": {"task": 3.0, "calibration": 2.0, "ood": 1.0, "agreement": 0.5, "kl": 0.5},
    "custom": {},
}


def resolve_weights(profile: str, weights: Mapping[str, float]) -> dict[str, float]:
    """Every criterion's weight: the profile's, changed by ``weights`` where given (0 for the rest)."""
    if profile not in PROFILES:
        raise ConfigError(f"audit.profile={profile!r} is not one of {list(PROFILES)}; set audit.profile=early")
    unknown = [k for k in weights if k not in CRITERIA]
    if unknown:
        raise ConfigError(f"unknown ranking criterion {unknown[0]!r}; known: {', '.join(CRITERIA)}")
    return {name: float({**PROFILES[profile], **weights}.get(name, 0.0)) for name in CRITERIA}


def given_weights(audit: Any) -> dict[str, float]:
    """The weights set in ``audit.weights`` (the others follow the profile)."""
    return {k: v for k, v in dict(audit.weights).items() if v is not None}


def check_audit(audit: Any) -> None:
    """The audit's settings, refused in one line before any work (every run checks them: a typo is a typo)."""
    weights = given_weights(audit)
    bad = [k for k, v in weights.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ConfigError(f"audit.weights.{bad[0]}={weights[bad[0]]} must be a number >= 0")
    if sum(resolve_weights(audit.profile, weights).values()) <= 0:
        raise ConfigError(
            f"audit.profile={audit.profile} with audit.weights={weights} weighs nothing; give a "
            "positive weight, e.g. audit.weights.task=1 audit.weights.agreement=1"
        )
    for key in ("kd_epochs", "latency_batch_size", "latency_batches"):
        if getattr(audit, key) <= 0:
            raise ConfigError(f"audit.{key}={getattr(audit, key)} must be a positive integer")
    if audit.latency_warmup < 0:
        raise ConfigError(f"audit.latency_warmup={audit.latency_warmup} must be >= 0")


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def rank(
    values: Mapping[str, Mapping[str, Optional[float]]],
    weights: Mapping[str, float],
    eligible: Optional[Mapping[str, bool]] = None,
) -> dict[str, Any]:
    """Order candidates by their weighted normalised score.

    ``values``: candidate -> criterion -> raw value (None when not measured). A criterion with a positive weight
    counts only when every scored candidate has a value for it (else it is listed under ``dropped`` with the
    reason), so no candidate gains from a measurement the others lack. Ties keep the candidates' given order.

    A candidate that is not ``eligible`` (a teacher no better than predicting the majority class) is neither
    normalised nor scored and comes last, under ``unscored``: a constant teacher is the easiest of all to follow,
    and would otherwise win every profile that weighs ease. When no candidate is eligible, all are scored.
    """
    names = list(values)
    scored = [n for n in names if eligible is None or eligible.get(n, True)] or names
    used: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for criterion, weight in weights.items():
        if weight <= 0:
            continue
        missing = [n for n in scored if not _finite(values[n].get(criterion))]
        if missing:
            dropped[criterion] = f"not measured for {', '.join(missing)}"
        else:
            used[criterion] = float(weight)
    if not used:
        raise ConfigError(
            f"no weighted criterion was measured for every teacher ({dropped}); weigh others, e.g. audit.weights.task=1"
        )
    normalised: dict[str, dict[str, float]] = {n: {} for n in scored}
    for criterion in used:
        column = [float(values[n][criterion]) for n in scored]
        lo, hi = min(column), max(column)
        for n, v in zip(scored, column):
            above_worst = v - lo if CRITERIA[criterion].higher_is_better else hi - v
            normalised[n][criterion] = 1.0 if hi == lo else above_worst / (hi - lo)
    total = sum(used.values())
    scores = {n: sum(used[c] * normalised[n][c] for c in used) / total for n in scored}
    unscored = [n for n in names if n not in scores]
    order = sorted(scored, key=lambda n: -scores[n]) + unscored
    return {
        "order": order,
        "scores": scores,
        "unscored": unscored,
        "normalised": normalised,
        "weights": used,
        "dropped": dropped,
    }
