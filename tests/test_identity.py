"""One identity for caches and checkpoints: every config field is accounted for, and changing a field changes
exactly the identities of the results that depend on it."""
from __future__ import annotations

import dataclasses
import typing
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import OmegaConf

from mpdistil import identity as ident
from mpdistil.config import Config, choices, method_schema
from mpdistil.distributed import World
from mpdistil.groups import advance, group_identity, phase_groups
from mpdistil.phases import PHASES
from tests.helpers import custom_task, make_cfg, run_cfg

CLASSIFIED = ident.COMMON_FIELDS + ident.DATA_FIELDS + ident.STRUCTURE_FIELDS + ident.EVALUATION_FIELDS + \
    ident.MIX_FIELDS


def schema_leaves() -> dict[str, Any]:
    """Every leaf field of the typed config, with its declared type (the method schema includes phase options)."""
    def walk(cls: type, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = method_schema() if f.name == "method" and cls is Config else hints[f.name]
            key = f"{prefix}{f.name}"
            out.update(walk(kind, key + ".") if dataclasses.is_dataclass(kind) else {key: kind})
        return out

    return walk(Config, "")


def declared() -> set[str]:
    return {f for phase in PHASES.values() for f in phase.identity_fields()}


def test_every_config_field_is_declared_somewhere():
    """A new config field must say what it affects: a phase's result, every agent, the data, or nothing computed."""
    unclassified = [k for k in schema_leaves() if not ident.covered(k, (*CLASSIFIED, *ident.OUTSIDE_RESULTS))
                    and k not in declared()]
    assert unclassified == []
    clash = [k for k in schema_leaves() if ident.covered(k, ident.OUTSIDE_RESULTS)
             and (k in declared() or ident.covered(k, ident.COMMON_FIELDS))]
    assert clash == []


def _other(value: Any, kind: Any, key: str) -> Any:
    """A different valid value for a field."""
    allowed = choices().get(key)
    if allowed:
        return next(v for v in allowed if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.125
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, "wsc"]
    if isinstance(value, dict):
        return {**value, "layer_norm_eps": 1e-6}
    inner = [a for a in typing.get_args(kind) if a is not type(None)]
    if inner and typing.get_origin(inner[0]) is list:
        return ["x"]
    return {int: 3, float: 0.25, str: "x", bool: True}[inner[0]] if inner else "x"


def identities(cfg: Any) -> list[str]:
    """The fingerprint of every cached group of a method, computed as a run chains them."""
    ctx = SimpleNamespace(cfg=cfg, lineage={}, data_hash=lambda agents: "data", transfer_hash="",
                          rt=SimpleNamespace(world=World()),
                          further_teachers=[f"teacher_{k}" for k in range(2, len(cfg.teachers) + 1)])
    out = []
    for index, names in enumerate(phase_groups(cfg)):
        phases = [PHASES[n]() for n in names]
        key = group_identity(ctx, phases, index)
        out.append(ident.fingerprint(key))
        advance(ctx.lineage, phases, key)
    return out


@pytest.mark.parametrize("method", ["mpdistil_kd", "metadistil"])
def test_changing_a_field_invalidates_exactly_the_caches_that_depend_on_it(method):
    base = make_cfg(f"method={method}")
    groups = phase_groups(base)
    before = identities(base)
    reads_from: list[set[str]] = []  # fields each group's result depends on, through the groups it starts from
    produced_by: dict[str, set[str]] = {}
    for names in groups:
        phases = [PHASES[n] for n in names]
        own = set(ident.COMMON_FIELDS) | {f for p in phases for f in p.identity_fields()}
        for agent in (a for p in phases for a in p.reads):
            own |= produced_by.get(agent, set())
        reads_from.append(own)
        produced_by.update({a: own for p in phases for a in p.trains})
    checked = 0
    for key, kind in schema_leaves().items():
        if ident.covered(key, ident.STRUCTURE_FIELDS):
            continue
        cfg = base.copy()
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        OmegaConf.update(cfg, key, _other(value, kind, key), merge=False)
        after = identities(cfg)
        run_changed = ident.run_fields(cfg) != ident.run_fields(base)
        assert run_changed != ident.covered(key, ident.OUTSIDE_RESULTS), key  # the checkpoint's identity
        for i, names in enumerate(groups):
            if "curriculum" in names:
                continue  # never cached; its actions default to ${task.partners}, a data field
            expected = any(ident.covered(key, (f,)) for f in reads_from[i])
            assert (after[i] != before[i]) == expected, f"{key} for group {'+'.join(names)}"
        checked += 1
    assert checked > 60


def test_an_undeclared_field_keeps_the_cache_and_a_declared_one_rebuilds(tmp_path):
    """Through real runs: a curriculum switch reuses the distilled student; its temperature does not."""

    task = [*custom_task(tmp_path), "model=tiny", "method=mpdistil", "method.curriculum_tasks=[]"]
    cache = tmp_path / "cache"
    first = run_cfg(tmp_path / "a", *task, cache_dir=cache)
    assert not first["phases"]["distill"]["cached"]
    reused = run_cfg(tmp_path / "b", *task, "method.reward=real", "method.gamma=0.5", cache_dir=cache)
    assert all(reused["phases"][p]["cached"] for p in ("teacher", "undistilled", "distill", "meta_teacher"))
    changed = run_cfg(tmp_path / "c", *task, "method.temperature=2", cache_dir=cache)
    assert changed["phases"]["teacher"]["cached"] and changed["phases"]["undistilled"]["cached"]
    assert not changed["phases"]["distill"]["cached"] and not changed["phases"]["meta_teacher"]["cached"]


class Recorder:
    """A config node that records every leaf a phase reads from it (``method.alpha``, ``seed``, ...)."""

    def __init__(self, node: Any, path: str, seen: set[str]) -> None:
        self._node, self._path, self._seen = node, path, seen

    def _wrap(self, name: str, value: Any) -> Any:
        key = f"{self._path}{name}"
        if OmegaConf.is_dict(value):
            return Recorder(value, key + ".", self._seen)
        self._seen.add(key)
        return value

    def __getattr__(self, name: str) -> Any:
        return self._wrap(name, getattr(self._node, name))

    def __getitem__(self, name: str) -> Any:
        return self._wrap(name, self._node[name])


def test_a_cached_group_reads_only_the_fields_its_identity_holds(tmp_path, monkeypatch):
    """What the phases of each cached group actually read from the config while training, recorded, is covered
    by that group's identity (its phases' fields, the fields of the groups it starts from, the common fields),
    by the data's hash, or by fields that change no number."""
    from mpdistil import groups

    reads: list[tuple[list[str], set[str]]] = []
    real = groups.train

    def recording(ctx: Any, phases: list, *args: Any) -> None:
        cfg, seen = ctx.cfg, set()
        ctx.cfg = Recorder(cfg, "", seen)
        try:
            real(ctx, phases, *args)
        finally:
            ctx.cfg = cfg
        reads.append(([p.name for p in phases], seen))

    monkeypatch.setattr(groups, "train", recording)
    args = [*custom_task(tmp_path), "model=tiny", "method.curriculum_tasks=[]", "trainer.reuse_cache=false"]
    for method in ("mpdistil_kd", "metadistil"):
        run_cfg(tmp_path / method, f"method={method}", "method.meta_objective=mixed", *args)
    allowed_everywhere = (*ident.COMMON_FIELDS, *ident.DATA_FIELDS, *ident.OUTSIDE_RESULTS)
    produced_by: dict[str, set[str]] = {}
    checked = set()
    for names, seen in reads:
        phases = [PHASES[n] for n in names]
        own = {f for p in phases for f in p.identity_fields()}
        for agent in (a for p in phases for a in p.reads):
            own |= produced_by.get(agent, set())
        produced_by.update({a: own for p in phases for a in p.trains})
        if "curriculum" in names:
            continue
        undeclared = sorted(k for k in seen if not ident.covered(k, (*own, *allowed_everywhere)))
        assert undeclared == [], f"group {'+'.join(names)} reads {undeclared} without declaring them"
        checked.add("+".join(names))
    assert checked >= {"teacher", "undistilled", "kd", "distill+meta_teacher", "metadistil"}
