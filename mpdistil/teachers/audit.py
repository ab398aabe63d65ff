"""The teacher audit, in three steps: plan (every check, before any training; :mod:`mpdistil.teachers.plan`),
measure each candidate (:mod:`mpdistil.teachers.measure`), rank and report (:mod:`mpdistil.teachers.report`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from mpdistil.teachers.measure import measure
from mpdistil.teachers.plan import plan_audit
from mpdistil.teachers.report import baseline_note, plain, table, weighting_line, write_report


def run_audit(overrides: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """The whole audit: every check first, then each candidate in turn, then the ranking and its files."""
    start = time.perf_counter()
    plan = plan_audit(overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for i, candidate in enumerate(plan.candidates, start=1):
        print(f"[audit] teacher {i}/{len(plan.candidates)}: {candidate.name}", flush=True)
        record = records[candidate.slug] = measure(candidate, out_dir)
        cached = [phase for phase, entry in record["cache"].items() if entry["cached"]]
        print(
            f"[audit] {candidate.name}: {record['time']['total']:.1f}s"
            + (f" ({', '.join(cached)} from the cache)" if cached else ""),
            flush=True,
        )
    report = write_report(plan, records, out_dir, list(overrides), time.perf_counter() - start)
    print("\n" + plain(*table(report)), flush=True)
    print(f"\nranked by {weighting_line(report['ranking'])}", flush=True)
    if baseline_note(report):
        print(baseline_note(report), flush=True)
    print(f"[audit] {out_dir / 'audit.json'}, {out_dir / 'audit.md'}", flush=True)
    return report
