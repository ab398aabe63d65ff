"""Every preset composes; typos and impossible values fail before any work, with one clear line."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from mpdistil.config import ConfigError, cache_root, validate
from tests.helpers import CONF, main_py, make_cfg


@pytest.mark.parametrize("group", ["task", "model", "method", "trainer", "logger", "experiment"])
def test_every_preset_composes(group):
    for preset in sorted((CONF / group).glob("*.yaml")):
        cfg = make_cfg(f"{group}={preset.stem}")
        validate(cfg)


def test_default_is_the_offline_suite():
    cfg = make_cfg()
    assert cfg.task.name == "sentiment_movies" and cfg.model.teacher.startswith("package:")
    assert cfg.method.name == "mpdistil_kd" and cfg.logger.mode == "offline"
    assert list(cfg.method.phases) == ["teacher", "undistilled", "kd", "distill+meta_teacher", "curriculum"]
    assert cfg.method.curriculum and cfg.trainer.selection_split == "heldout"


def test_misspelt_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        make_cfg("method.alpah=0.3")


@pytest.mark.parametrize("override,needle", [
    ("method.alpha=1.5", "method.alpha"), ("method.temperature=0", "method.temperature"),
    ("method.student_epochs=0", "method.student_epochs"), ("trainer.batch_size=0", "trainer.batch_size"),
    ("method.reward=sometimes", "method.reward"), ("trainer.precision=fp8", "trainer.precision"),
    ("method.phases=[teacher,distil]", "unknown phase"), ("trainer.eval_max_padding=-0.5", "trainer.eval_max_padding"),
    ("method.select_every=0", "method.select_every"),
    ("model.student_init=randm", "model.student_init"),
])
def test_impossible_values_are_refused(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate(make_cfg(override))


def test_a_random_student_init_beside_a_student_checkpoint_is_refused():
    with pytest.raises(ConfigError, match=r"model\.student_init=random would discard the weights of model\.student"):
        validate(make_cfg("model.student=some/checkpoint", "model.student_init=random"))
    validate(make_cfg("model.student=some/checkpoint"))


@pytest.mark.parametrize("args,needle", [
    (["task=nosuchtask"], "unknown task preset 'nosuchtask'"),
    (["method=distill_everything"], "unknown method preset"),
    (["model=gpt9"], "unknown model preset"),
    (["experiment=null"], "use experiment=paper"),
    (["method.alpha=2"], "method.alpha=2"),
    (["method.temperature=-1"], "method.temperature"),
    (["task=cb", "data_dir=/no/such/folder"], "/no/such/folder"),
])
def test_cli_errors_are_one_line(args, needle, tmp_path):
    proc = main_py(*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


def test_a_refused_run_keeps_a_folder_that_holds_more_than_hydras_files(tmp_path):
    """Pointing a refused command at an earlier run's folder (resume=true) must not delete that run."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    proc = main_py("task=cb", "data_dir=/no/such/folder", "logger=none", f"hydra.run.dir={run}", "resume=true")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (run / "checkpoints").is_dir() and (run / ".hydra").is_dir()


def test_cache_root_prefers_the_config_then_the_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MPDISTIL_CACHE", str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("MPDISTIL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root(None) == (tmp_path / "home" / ".cache" / "mpdistil").resolve()


def test_fp16_without_a_gpu_is_refused_before_any_work(tmp_path):
    """fp16 needs CUDA's gradient scaler; on a CPU it would silently lose small gradients."""
    from tests.helpers import custom_task, run_cfg

    with pytest.raises(ConfigError, match=r"trainer.precision=fp16 needs a CUDA device .*bf16 or fp32"):
        run_cfg(tmp_path / "run", *custom_task(tmp_path), "trainer.precision=fp16", "trainer.device=cpu")
    assert not (tmp_path / "run").exists()
