"""A new KD method is one phase file and one config: the README's example, defined here, runs end to end."""
from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mpdistil.config import ConfigError, register_configs
from mpdistil.phases import PHASES
from tests.helpers import FAST, REPO, custom_task


def readme_block(first_line: str) -> str:
    """The fenced code block of the README whose first line is ``first_line``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        if block.splitlines()[0].strip() == first_line:
            return block
    raise AssertionError(f"README has no code block starting with {first_line!r}")


@pytest.fixture
def example(tmp_path):
    """The README's phase file imported as a module of the package, and a conf folder holding its config."""
    module = types.ModuleType("mpdistil.phases.kd_anneal")
    sys.modules[module.__name__] = module
    exec(compile(readme_block("# mpdistil/phases/kd_anneal.py"), "kd_anneal.py", "exec"), module.__dict__)
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "method" / "kd_anneal.yaml").write_text(readme_block("# conf/method/kd_anneal.yaml"))
    register_configs()
    yield conf
    PHASES.pop("kd_anneal", None)
    sys.modules.pop(module.__name__, None)
    register_configs()


def compose_in(conf: Path, *overrides: str):
    with initialize_config_dir(str(conf), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_readme_example_method_runs_end_to_end(example, tmp_path):
    from mpdistil.run import run

    task = [*FAST, *custom_task(tmp_path), "model=tiny", "method=kd_anneal", "method.student_epochs=3",
            f"cache_dir={tmp_path / 'cache'}"]
    results = run(compose_in(example, *task), out_dir=tmp_path / "a")
    assert list(results["agents"]) == ["teacher", "undistilled", "annealed"]
    assert results["row_titles"]["annealed"] == "student, annealed KD"
    assert results["final_row"] == "annealed"
    assert "annealed_vs_teacher" in results["fidelity"]  # a student row: compared with the teacher
    record = results["phases"]["kd_anneal"]
    assert len(record["history"]) == 3 and record["cached"] is False
    assert (tmp_path / "a" / "student" / "config.json").is_file()

    again = run(compose_in(example, *task), out_dir=tmp_path / "b")
    assert again["phases"]["kd_anneal"]["cached"] is True and again["agents"] == results["agents"]
    other = run(compose_in(example, *task, "method.temperature_end=4.0"), out_dir=tmp_path / "c")
    assert other["phases"]["teacher"]["cached"] is True  # its option is part of its identity only
    assert other["phases"]["kd_anneal"]["cached"] is False


def test_the_example_anneals_the_temperature_it_distils_at(example, tmp_path, monkeypatch):
    from mpdistil.phases import distill
    from mpdistil.run import run

    seen: list[float] = []
    real = distill.distillation_loss

    def spy(*args, **kwargs):
        seen.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "distillation_loss", spy)
    task = [*FAST, *custom_task(tmp_path), "model=tiny", "method=kd_anneal", "method.phases=[teacher,kd_anneal]",
            "method.student_epochs=3", "method.temperature=8", "method.temperature_end=2",
            f"cache_dir={tmp_path / 'cache'}"]
    run(compose_in(example, *task), out_dir=tmp_path / "run")
    assert sorted(set(seen), reverse=True) == [8.0, 5.0, 2.0]


def test_an_option_is_typed_and_a_misspelt_one_fails(example):
    cfg = compose_in(example, "method=kd_anneal", "method.temperature_end=2")
    assert cfg.method.temperature_end == 2.0
    with pytest.raises(Exception, match="temperature_ed"):
        compose_in(example, "method=kd_anneal", "method.temperature_ed=2")
    with pytest.raises(Exception, match="temperature_end"):
        compose_in(example, "method=kd_anneal", "method.temperature_end=hot")


def test_an_unknown_phase_is_named_in_one_line():
    from mpdistil.config import validate
    from tests.helpers import make_cfg

    with pytest.raises(ConfigError, match="unknown phase 'kd_anneal'"):
        validate(make_cfg("method.phases=[teacher,kd_anneal]"))


def test_a_new_file_in_the_phases_folder_is_found_by_itself(tmp_path, monkeypatch):
    import mpdistil.phases as phases

    folder = tmp_path / "more_phases"
    folder.mkdir()
    (folder / "kd_plain_copy.py").write_text(
        "from mpdistil.phases import register_phase\n"
        "from mpdistil.phases.distill import DistillPhase\n\n\n"
        "@register_phase('kd_plain_copy')\nclass Copy(DistillPhase):\n    pass\n")
    monkeypatch.setattr(phases, "__path__", [*phases.__path__, str(folder)])
    try:
        phases._discover()
        assert "kd_plain_copy" in PHASES and PHASES["kd_plain_copy"].row.name == "student"
    finally:
        PHASES.pop("kd_plain_copy", None)
        sys.modules.pop("mpdistil.phases.kd_plain_copy", None)


def test_a_phase_defined_in_this_file_runs_end_to_end(tmp_path):
    """A KD variant written here (hard-label-free distillation: α = 1) needs no other file than its overrides."""
    from mpdistil.phases import Row, register_phase
    from mpdistil.phases.distill import DistillPhase
    from mpdistil.run import run
    from tests.helpers import make_cfg

    @register_phase("kd_soft_only")
    class SoftOnlyKD(DistillPhase):
        row = Row("soft_only", "student, soft targets only", student=True)

        def start(self, ctx):
            super().start(ctx)
            self.alpha = 1.0

    try:
        cfg = make_cfg(*FAST, *custom_task(tmp_path), "method=kd", "method.phases=[teacher,kd_soft_only]",
                       f"cache_dir={tmp_path / 'cache'}")
        results = run(cfg, out_dir=tmp_path / "run")
        assert list(results["agents"]) == ["teacher", "soft_only"] and results["final_row"] == "soft_only"
        assert results["phases"]["kd_soft_only"]["alpha"] == 1.0
        assert results["phases"]["kd_soft_only"]["history"][0]["ce"] > 0  # the hard loss is logged, not trained on
    finally:
        PHASES.pop("kd_soft_only", None)
        register_configs()
