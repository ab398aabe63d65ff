"""Readers and task encodings, on the fixture files and (``--shared-data``) on the official files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpdistil.data import sentiment
from mpdistil.data.io import read_jsonl, read_tsv
from mpdistil.data.registry import (
    TASK_CONF_DIR,
    get_task_spec,
    known_tasks,
    load_task,
    locate_task_dir,
    task_config_for,
)
from mpdistil.data.types import DataError
from tests.conftest import FIXTURES, SHARED_DATA

ROOTS = {"fixtures": FIXTURES, "official": SHARED_DATA}


def sources(*extra: str) -> list:
    """Parameters "fixtures" and "official"; the official files are read only with --shared-data."""
    return [pytest.param("fixtures", *extra, id="-".join(["fixtures", *extra])),
            pytest.param("official", *extra, id="-".join(["official", *extra]), marks=pytest.mark.shared_data)]


def load(name: str, data_dir: Path, **overrides) -> object:
    return load_task(task_config_for(name, **overrides), str(data_dir), "/nonexistent-cache")


# (train, dev, test) rows: of the fixture files, and of the official files (from shared/data/SOURCES.md).
COUNTS = {
    ("superglue", "CB", "cb"): {"fixtures": (48, 24, 8), "official": (250, 56, 250)},
    ("superglue", "COPA", "copa"): {"fixtures": (32, 16, 8), "official": (400, 100, 500)},
    ("superglue", "RTE", "rte"): {"fixtures": (48, 24, 8), "official": (2490, 277, 3000)},
    ("superglue", "WiC", "wic"): {"fixtures": (32, 16, 8), "official": (5428, 638, 1400)},
    ("superglue", "WSC", "wsc"): {"fixtures": (32, 16, 8), "official": (554, 104, 146)},
    ("glue", "CoLA", "cola"): {"fixtures": (24, 16, 8), "official": (8551, 1043, 1063)},
    ("glue", "SST-2", "sst2"): {"fixtures": (24, 8, 8), "official": (67349, 872, 1821)},
    ("glue", "MRPC", "mrpc"): {"fixtures": (24, 8, 8), "official": (3668, 408, 1725)},
    ("glue", "STS-B", "stsb"): {"fixtures": (16, 8, 8), "official": (5749, 1500, 1379)},
    ("glue", "RTE", "glue_rte"): {"fixtures": (24, 24, 8), "official": (2490, 277, 3000)},
    ("glue", "WNLI", "wnli"): {"fixtures": (16, 8, 4), "official": (635, 71, 146)},
}


@pytest.mark.parametrize("source,bench,folder,task",
                         [p for key in COUNTS for p in sources(*key)])
def test_row_counts_and_labels(source: str, bench: str, folder: str, task: str) -> None:
    data = load(task, ROOTS[source] / bench / folder)
    n_train, n_dev, n_test = COUNTS[(bench, folder, task)][source]
    assert (len(data.train), len(data.dev["dev"]), len(data.test["test"])) == (n_train, n_dev, n_test)
    assert data.source.startswith("local:") and data.source.endswith(folder)
    assert all(ex.label is None for ex in data.test["test"])
    assert [ex.uid for ex in data.test["test"][:3]] == [0, 1, 2]
    for split in (data.train, data.dev["dev"]):
        if data.kind == "regression":
            assert all(0.0 <= ex.label <= 5.0 for ex in split)
        elif data.kind == "multiple_choice":
            assert {ex.label for ex in split} == {0, 1}
        else:  # every class in train and in dev
            assert {ex.label for ex in split} == set(range(len(data.label_names)))


def test_layouts_task_folder_benchmark_folder_and_root(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = FIXTURES / "superglue" / "CB"
    for given in (FIXTURES, FIXTURES / "superglue", cb):
        assert locate_task_dir(get_task_spec("cb"), given) == cb
    assert locate_task_dir(get_task_spec("glue_rte"), FIXTURES) == FIXTURES / "glue" / "RTE"
    assert locate_task_dir(get_task_spec("rte"), FIXTURES) == FIXTURES / "superglue" / "RTE"
    monkeypatch.chdir(FIXTURES)
    assert load("cb", Path("superglue")).source == f"local:{cb}"


def test_task_cfg_data_dir_wins_over_argument() -> None:
    cb = FIXTURES / "superglue" / "CB"
    data = load_task(task_config_for("cb", data_dir=str(cb)), "/does/not/exist", "/nonexistent-cache")
    assert len(data.train) == 48


def test_folder_of_another_task_is_refused() -> None:
    with pytest.raises(DataError, match=r"COPA/train.jsonl.*data_dir="):
        load("copa", FIXTURES / "superglue" / "CB")


def test_missing_data_dir_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; set data_dir="):
        load("cb", tmp_path / "nowhere")
    (tmp_path / "CB").mkdir()
    with pytest.raises(DataError, match=r"no CB/train.jsonl .*set data_dir="):
        load("cb", tmp_path)


CB_FIRST = {
    "fixtures": (("The evening was quiet. Grandma wondered whether the new road was finished.",
                  "the new road was finished"), 2),
    "official": (("It was a complex language. Not written down but handed down. One might say it was peeled down.",
                  "the language was peeled down"), 0),
}


@pytest.mark.parametrize("source", sources())
def test_cb_pairs_and_label_names(source: str) -> None:
    data = load("cb", ROOTS[source] / "superglue" / "CB")
    assert data.kind == "classification" and data.label_names == ["entailment", "contradiction", "neutral"]
    first = data.train[0]
    assert (first.texts, first.label) == CB_FIRST[source] and first.uid == 0
    assert get_task_spec("cb").metrics == ("accuracy", "macro_f1")


COPA_FIRST = {  # (first choice's pair, second choice, label) of train[0]
    "fixtures": (("I stood for the whole ride. What was the cause?", "The bus was crowded."), "The power went out.", 0),
    "official": (("My body cast a shadow over the grass. What was the cause?", "The sun was rising."),
                 "The grass was cut.", 0),
}


@pytest.mark.parametrize("source", sources())
def test_copa_two_choices_with_question(source: str) -> None:
    data = load("copa", ROOTS[source] / "superglue" / "COPA")
    assert data.kind == "multiple_choice" and data.num_labels == 1
    ex = data.train[0]
    assert isinstance(ex.texts, list) and len(ex.texts) == 2
    assert (ex.texts[0], ex.texts[1][1], ex.label) == COPA_FIRST[source]
    assert ex.texts[1][0] == ex.texts[0][0]
    assert all(len(e.texts) == 2 and e.label in (0, 1) for e in data.train + data.dev["dev"])
    effect = next(e for e in data.dev["dev"] if e.texts[0][0].endswith("What was the effect?"))
    assert effect.texts[0][0] != effect.texts[0][1]


WIC_FIRST = {
    "fixtures": ("watch: He checked his *watch* and hurried off.", "They *watched* the parade from the balcony."),
    "official": ("place: Do you want to come over to my *place* later?",
                 "A political system with no *place* for the less prominent groups."),
}


@pytest.mark.parametrize("source", sources())
def test_wic_keeps_and_marks_the_word(source: str) -> None:
    folder = ROOTS[source] / "superglue" / "WiC"
    data = load("wic", folder)
    assert data.label_names == ["false", "true"]
    assert data.train[0].texts == WIC_FIRST[source]
    rows = {r.fields["idx"]: r.fields for r in read_jsonl(folder / "val.jsonl")}
    for e in data.dev["dev"]:
        raw = rows[e.uid]
        assert e.texts[0].startswith(f"{raw['word']}: ")
        for text, i in ((e.texts[0], "1"), (e.texts[1], "2")):
            sentence, start, end = raw[f"sentence{i}"], raw[f"start{i}"], raw[f"end{i}"]
            assert text.endswith(f"{sentence[:start]}*{sentence[start:end]}*{sentence[end:]}")


WSC_EXPECTED = {  # train[0], and a dev example whose span2_index is one word off in the file
    "fixtures": ("*Sam* waited for Uncle Joe at the station, but [he] never arrived.", 5, "because [he] wanted"),
    "official": ("*Mark* told Pete many lies about himself, which Pete included in his book. [He] should have been "
                 "more skeptical.", 42, "use [it]"),
}


@pytest.mark.parametrize("source", sources())
def test_wsc_marks_both_spans(source: str) -> None:
    folder = ROOTS[source] / "superglue" / "WSC"
    data = load("wsc", folder)
    first, off_by_one_uid, marked = WSC_EXPECTED[source]
    assert data.train[0].texts == (first,)
    rows = {r.fields["idx"]: r.fields for r in read_jsonl(folder / "val.jsonl")}
    for e in data.dev["dev"]:
        text = e.texts[0]
        assert text.count("[") == 1 and text.count("]") == 1 and text.count("*") >= 2
        span2 = text[text.index("[") + 1:text.index("]")]
        assert span2.lower().startswith(rows[e.uid]["target"]["span2_text"].lower())
    off_by_one = next(e for e in data.dev["dev"] if e.uid == off_by_one_uid)
    target = rows[off_by_one_uid]["target"]
    assert off_by_one.texts[0].split()[target["span2_index"]] != f"[{target['span2_text']}]"
    assert marked in off_by_one.texts[0]
    assert all(e.texts[0].count("[") == 1 for e in data.test["test"])


COLA_EXPECTED = {  # train[0], the last dev uid, train rows
    "fixtures": ("Teachers the have finished the work.", 15, 24),
    "official": ("Our friends won't buy this analysis, let alone the next one we propose.", 1042, 8551),
}


@pytest.mark.parametrize("source", sources())
def test_cola_headerless_train_and_matthews_metric(source: str) -> None:
    folder = ROOTS[source] / "glue" / "CoLA"
    first, last_dev_uid, n_train = COLA_EXPECTED[source]
    data = load("cola", folder)
    assert data.label_names == ["unacceptable", "acceptable"]
    assert data.train[0].texts == (first,)
    assert data.dev["dev"][-1].uid == last_dev_uid
    assert get_task_spec("cola").main_metric == "mcc"
    rows = read_tsv(folder / "train.tsv", header=False, fieldnames=("a", "b", "c", "d"))
    assert len(rows) == n_train and rows[0].line == 1


MRPC_FIRST = {"fixtures": "The company said profits rose 12 percent", "official": "Amrozi accused"}


@pytest.mark.parametrize("source", sources())
def test_mrpc_quality_column_and_stsb_scores(source: str) -> None:
    mrpc = load("mrpc", ROOTS[source] / "glue" / "MRPC")
    assert mrpc.train[0].label == 1 and mrpc.train[0].texts[0].startswith(MRPC_FIRST[source])
    assert get_task_spec("mrpc").metrics == ("accuracy", "f1")
    stsb = load("stsb", ROOTS[source] / "glue" / "STS-B")
    assert stsb.kind == "regression" and stsb.label_names == [] and stsb.num_labels == 1
    assert stsb.train[0].label == 5.0 and stsb.train[1].label == pytest.approx(3.8)
    assert get_task_spec("stsb").metrics == ("pearson", "spearman")


def _mnli_folder(root: Path) -> Path:
    folder = root / "glue" / "MNLI"
    folder.mkdir(parents=True)
    head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2"
    def row(i: int, label: str = "") -> str:
        cells = f"{i}\t1\t1a\tfiction\t(x)\t(y)\t(X)\t(Y)\tA \"quoted premise {i}.\tHypothesis {i}."
        return cells + (f"\t{label}" if label else "")
    (folder / "train.tsv").write_text(f"{head}\tlabel1\tgold_label\n" + "\n".join(
        row(i, f"{lab}\t{lab}") for i, lab in enumerate(["entailment", "neutral", "contradiction"])) + "\n")
    for dev in ("dev_matched", "dev_mismatched"):
        (folder / f"{dev}.tsv").write_text(f"{head}\tgold_label\n{row(0, 'neutral')}\n{row(1, 'entailment')}\n")
    for test in ("test_matched", "test_mismatched"):
        (folder / f"{test}.tsv").write_text(f"{head}\n{row(0)}\n")
    return folder


def test_mnli_has_matched_and_mismatched(tmp_path: Path) -> None:
    _mnli_folder(tmp_path)
    data = load("mnli", tmp_path)
    assert set(data.dev) == {"dev_matched", "dev_mismatched"}
    assert set(data.test) == {"test_matched", "test_mismatched"}
    assert [e.label for e in data.train] == [0, 1, 2] and data.label_names == ["entailment", "neutral", "contradiction"]
    assert data.train[0].texts == ('A "quoted premise 0.', "Hypothesis 0.")
    assert data.dev["dev_matched"][0].label == 1


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "CB"
    folder.mkdir()
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0})
    (folder / "train.jsonl").write_text("\n".join([good, good, '{"premise": "p", "hypothesis": '] ) + "\n")
    (folder / "val.jsonl").write_text(good + "\n")
    with pytest.raises(DataError, match=r"bad JSON .* at .*CB/train.jsonl line 3 — fix or remove that line"):
        load("cb", folder)


def test_label_outside_label_set(tmp_path: Path) -> None:
    folder = tmp_path / "superglue" / "CB"
    folder.mkdir(parents=True)
    rows = [{"premise": "p", "hypothesis": "h", "label": lab, "idx": i} for i, lab in enumerate(["neutral", "maybe"])]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    wrong = r"label 'maybe' is not one of \{entailment, contradiction, neutral\}.*train.jsonl line 2"
    with pytest.raises(DataError, match=wrong):
        load("cb", tmp_path)


def test_glue_bad_label_and_wrong_field_count(tmp_path: Path) -> None:
    folder = tmp_path / "WNLI"
    folder.mkdir()
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n1\ta\tb\t2\n")
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(DataError, match=r"label '2' is not one of \{0, 1\}.*WNLI/train.tsv line 3"):
        load("wnli", tmp_path)
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n")
    with pytest.raises(DataError, match=r"3 fields where the header has 4 .* at .*WNLI/dev.tsv line 2"):
        load("wnli", tmp_path)


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown task 'cbb'; set task=<name> with one of: .*boolq, cb, cola"):
        get_task_spec("cbb")
    with pytest.raises(DataError, match=r"no task preset"):
        task_config_for("cbb")


def test_every_task_has_a_preset_that_builds() -> None:
    presets = sorted(p.stem for p in TASK_CONF_DIR.glob("*.yaml"))
    assert presets == known_tasks()
    for name in presets:
        cfg = task_config_for(name)
        spec = get_task_spec(name, cfg)
        assert cfg.name == name and cfg.benchmark == spec.benchmark and cfg.data_dir is None
        assert cfg.max_length == 128 and cfg.quiz_fraction == 0.1
        assert cfg.hub.path == spec.hub_path and cfg.hub.name == spec.hub_name
        assert spec.main_metric in spec.metrics
    assert task_config_for("wsc").hub.name == "wsc.fixed"
    assert task_config_for("cb", data_dir="/x", max_length=64).data_dir == "/x"


def test_hub_fails_offline_with_repo_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_task(task_config_for("cola"), None, "/nonexistent-cache")
    message = str(err.value)
    assert "nyu-mll/glue" in message and "config cola" in message and "data_dir=" in message
    with pytest.raises(DataError, match=r"aps/super_glue \(config wsc.fixed, revision v9\).*data_dir="):
        load_task(task_config_for("wsc", hub={"revision": "v9"}), None, "/nonexistent-cache")


def _fake_corpus(folder: Path, n: int = 200) -> None:
    """A small file in the *_GroundTruth.txt layout: id, rating, text; CRLF; no final newline."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = [((i % 9) - 4) * 0.5 for i in range(n)]
    lines = [f"{i + 1}\t{r}\tsnippet number {i} with a \"quote" for i, r in enumerate(ratings)]
    (folder / sentiment.corpus_file("tweets")).write_bytes("\r\n".join(lines).encode("utf-8"))


def test_sentiment_local_split_is_fixed_and_sign_drops_zeros(tmp_path: Path) -> None:
    _fake_corpus(tmp_path / "sentiment")
    sign = load("sentiment_tweets", tmp_path)
    again = load("sentiment_tweets", tmp_path)
    rating = load("sentiment_tweets", tmp_path, target="rating")
    assert sign.kind == "classification" and sign.label_names == ["negative", "positive"]
    assert rating.kind == "regression" and rating.label_names == []
    rating_spec = get_task_spec("sentiment_tweets", task_config_for("sentiment_tweets", target="rating"))
    assert rating_spec.metrics == ("pearson", "spearman")
    assert [e.uid for e in sign.dev["dev"]] == [e.uid for e in again.dev["dev"]]
    assert (len(rating.train), len(rating.dev["dev"]), len(rating.test["test"])) == (160, 20, 20)
    assert {e.uid for e in sign.dev["dev"]} <= {e.uid for e in rating.dev["dev"]}
    assert any(e.label == 0.0 for e in rating.train)
    by_uid = {e.uid: e.label for e in rating.train}
    assert all((by_uid[e.uid] > 0) == (e.label == 1) and by_uid[e.uid] != 0 for e in sign.train)
    assert sign.train[0].texts[0].endswith('"quote')
    assert "seed" in sign.source and sign.source.startswith("local:")


def test_sentiment_bad_target_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task.target='stars'"):
        load("sentiment_movies", tmp_path, target="stars")
    with pytest.raises(DataError, match=r"no movieReviewSnippets_GroundTruth.txt .*task.data_dir="):
        load("sentiment_movies", tmp_path)


def test_sentiment_pip_failure_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sentiment, "PACKAGE", "vaderSentiment==0.0.0.dev999")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    fix = r"task.data_dir=<folder holding the \*_GroundTruth.txt files>"
    with pytest.raises(DataError, match=rf"fetching .* with pip failed .*{fix}"):
        sentiment.fetch_corpora(str(tmp_path))


@pytest.mark.network
def test_sentiment_fetch_from_pypi(tmp_path: Path) -> None:
    folder = sentiment.fetch_corpora(str(tmp_path))
    for domain, rows in sentiment.EXPECTED_ROWS.items():
        assert len(sentiment.read_corpus(folder / sentiment.corpus_file(domain))) == rows
    data = load_task(task_config_for("sentiment_movies"), None, str(tmp_path))
    assert data.source.startswith("pip:vaderSentiment==3.3.2")
    assert len(data.train) + len(data.dev["dev"]) + len(data.test["test"]) == 10605 - 37
    assert sentiment.fetch_corpora(str(tmp_path)) == folder


def test_qqp_qnli_boolq_local_layouts(tmp_path: Path) -> None:
    qqp = tmp_path / "glue" / "QQP"
    qqp.mkdir(parents=True)
    (qqp / "train.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tWhy \"x?\tWhy y?\t1\n")
    (qqp / "dev.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n8\t3\t4\ta?\tb?\t0\n")
    (qqp / "test.tsv").write_text("id\tquestion1\tquestion2\n0\tc?\td?\n")
    data = load("qqp", tmp_path)
    assert data.train[0].uid == 7 and data.train[0].texts == ('Why "x?', "Why y?") and data.train[0].label == 1
    assert data.test["test"][0].texts == ("c?", "d?") and data.label_names == ["not_duplicate", "duplicate"]
    qnli = tmp_path / "glue" / "QNLI"
    qnli.mkdir()
    for split in ("train", "dev"):
        (qnli / f"{split}.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tq?\ts.\tnot_entailment\n")
    assert load("qnli", tmp_path).train[0].label == 1
    boolq = tmp_path / "superglue" / "BoolQ"
    boolq.mkdir(parents=True)
    record = {"question": "is it?", "passage": "It is.", "idx": 0, "label": True}
    for split in ("train", "val"):
        (boolq / f"{split}.jsonl").write_text(json.dumps(record) + "\n")
    data = load("boolq", tmp_path)
    assert data.train[0].texts == ("is it?", "It is.") and data.train[0].label == 1 and data.test == {}


def test_hub_records_map_to_the_same_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    wsc_record = {"text": "Mark told Pete lies . He lied .", "span1_index": 0, "span2_index": 5, "span1_text": "Mark",
                  "span2_text": "He", "idx": 3, "label": 1}
    fake = {"train": [wsc_record], "validation": [dict(wsc_record, label=0)], "test": [dict(wsc_record, label=-1)]}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or fake)
    data = load_task(task_config_for("wsc", hub={"revision": "abc"}), None, "/nonexistent-cache")
    assert calls == [(("aps/super_glue", "wsc.fixed"), {"revision": "abc"})]
    assert data.train[0].texts == ("*Mark* told Pete lies . [He] lied .",) and data.train[0].label == 1
    assert data.dev["dev"][0].label == 0 and data.test["test"][0].label is None
    assert data.source == "hub:aps/super_glue/wsc.fixed@abc"
    copa = get_task_spec("copa")
    ex = copa.read_hub({"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "effect", "idx": 1, "label": 1},
                       "dev", copa)
    assert ex.texts == [("P. What was the effect?", "A."), ("P. What was the effect?", "B.")] and ex.label == 1
    stsb = get_task_spec("stsb")
    assert stsb.read_hub({"sentence1": "a", "sentence2": "b", "label": 3.5, "idx": 0}, "train", stsb).label == 3.5
    mnli = get_task_spec("mnli")
    hub_ex = mnli.read_hub({"premise": "p", "hypothesis": "h", "label": 2, "idx": 9}, "dev_mismatched", mnli)
    assert hub_ex.texts == ("p", "h") and hub_ex.label == 2 and hub_ex.uid == 9
