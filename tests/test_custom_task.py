"""Task ``custom``: the user's own files, with clear errors for everything that can be wrong."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpdistil.data.registry import get_task_spec, load_task, task_config_for
from mpdistil.data.types import DataError
from tests.conftest import FIXTURES
from tests.helpers import run_cfg


def custom(**overrides) -> object:
    return load_task(task_config_for("custom", **overrides), None, "/nonexistent-cache")


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    rows = ["id,text,label"] + [f"{i},\"sentence {i}, with a comma\",{'spam' if i % 3 == 0 else 'ham'}"
                                for i in range(40)]
    return write_csv(tmp_path / "train.csv", rows)


def test_csv_with_dev_and_test(tmp_path: Path, train_csv: Path) -> None:
    dev = write_csv(tmp_path / "dev.csv", ["id,text,label", "100,a,spam", "101,b,ham"])
    test = write_csv(tmp_path / "test.csv", ["id,text", "200,c", "201,d"])
    data = custom(train=str(train_csv), dev=str(dev), test=str(test), text_fields=["text"], label_field="label")
    assert data.kind == "classification" and data.label_names == ["ham", "spam"]
    assert len(data.train) == 40 and data.train[0].texts == ("sentence 0, with a comma",)
    assert data.train[0].label == 1 and data.train[0].uid == 0
    assert [e.label for e in data.dev["dev"]] == [1, 0] and [e.uid for e in data.dev["dev"]] == [100, 101]
    assert [e.label for e in data.test["test"]] == [None, None]
    assert "dev:" in data.source


def test_no_dev_holds_out_seeded_ten_percent(train_csv: Path) -> None:
    a = custom(train=str(train_csv), text_fields=["text"], label_field="label")
    b = custom(train=str(train_csv), text_fields=["text"], label_field="label")
    assert len(a.dev["dev"]) == 4 and len(a.train) == 36
    assert [e.uid for e in a.dev["dev"]] == [e.uid for e in b.dev["dev"]]
    assert {e.label for e in a.dev["dev"]} == {0, 1}
    assert "held out" in a.source and "10%" in a.source


def test_jsonl_pairs_and_numeric_labels_sorted(tmp_path: Path) -> None:
    rows = [{"a": f"q{i}", "b": f"d{i}", "y": [2, 10, 9][i % 3]} for i in range(30)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    data = custom(train=str(train), text_fields=["a", "b"], label_field="y")
    assert data.label_names == ["2", "9", "10"]
    assert data.train[0].texts == ("q0", "d0") and data.train[0].label == 0


def test_tsv_regression_relative_to_data_dir(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("s\tscore\n" + "".join(f"x{i}\t{i / 10}\n" for i in range(20)))
    cfg = task_config_for("custom", data_dir=str(tmp_path), train="train.tsv", text_fields=["s"],
                          label_field="score", type="regression")
    data = load_task(cfg, None, "/nonexistent-cache")
    assert data.kind == "regression" and data.label_names == [] and data.num_labels == 1
    assert sorted(e.label for e in data.train + data.dev["dev"])[:2] == [0.0, 0.1]
    assert get_task_spec("custom", cfg).metrics == ("pearson", "spearman")


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"task.train=.*nope.csv not found"):
        custom(train=str(tmp_path / "nope.csv"), text_fields=["text"], label_field="label")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty"):
        custom(train=str(empty), text_fields=["text"], label_field="label")
    header_only = write_csv(tmp_path / "header.csv", ["text,label"])
    with pytest.raises(DataError, match=r"no data rows"):
        custom(train=str(header_only), text_fields=["text"], label_field="label")
    with pytest.raises(DataError, match=r"needs task.train"):
        custom(text_fields=["text"], label_field="label")


def test_missing_column_is_named_with_columns_present(train_csv: Path) -> None:
    with pytest.raises(DataError, match=r"column 'sentence' is not in .*train.csv \(columns: id, text, label\)"):
        custom(train=str(train_csv), text_fields=["sentence"], label_field="label")
    with pytest.raises(DataError, match=r"column 'gold' is not in .*task.label_field"):
        custom(train=str(train_csv), text_fields=["text"], label_field="gold")


def test_unseen_dev_label(tmp_path: Path, train_csv: Path) -> None:
    dev = write_csv(tmp_path / "dev.csv", ["id,text,label", "1,a,ham", "2,b,eggs"])
    unseen = r"label 'eggs' does not occur in the training file \(labels: ham, spam\) at .*dev.csv line 3"
    with pytest.raises(DataError, match=unseen):
        custom(train=str(train_csv), dev=str(dev), text_fields=["text"], label_field="label")


def test_wrong_number_of_text_fields_and_bad_type(train_csv: Path) -> None:
    with pytest.raises(DataError, match=r"one or two columns"):
        custom(train=str(train_csv), text_fields=["a", "b", "c"], label_field="label")
    with pytest.raises(DataError, match=r"one or two columns"):
        custom(train=str(train_csv), text_fields=[], label_field="label")
    with pytest.raises(DataError, match=r"task.type='ranking'"):
        custom(train=str(train_csv), text_fields=["text"], label_field="label", type="ranking")


def test_missing_label_value_and_bad_regression_label(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "t.csv", ["text,label", "a,x", "b,", "c,y"])
    with pytest.raises(DataError, match=r"no value for label field 'label' at .*t.csv line 3"):
        custom(train=str(train), text_fields=["text"], label_field="label")
    with pytest.raises(DataError, match=r"label 'x' is not a number .* line 2"):
        custom(train=str(train), text_fields=["text"], label_field="label", type="regression")



CUSTOM = FIXTURES / "custom"
FILES = {"train": "train.csv", "dev": "dev.csv", "test": "test.csv", "text_fields": ["text"], "label_field": "topic"}


def test_fixture_csv_files_relative_to_data_dir() -> None:
    data = load_task(task_config_for("custom", data_dir=str(CUSTOM), **FILES), None, "/nonexistent-cache")
    assert data.label_names == ["food", "travel", "weather"]
    assert (len(data.train), len(data.dev["dev"]), len(data.test["test"])) == (30, 9, 3)
    assert data.train[0].texts == ("She ordered the fish, chips and peas.",) and data.train[0].label == 0
    assert data.train[0].uid == 101 and [e.uid for e in data.test["test"]] == [140, 141, 142]
    assert ('He likes "proper" tea, strong and dark.',) in [e.texts for e in data.dev["dev"]]
    for split in (data.train, data.dev["dev"]):
        assert {e.label for e in split} == {0, 1, 2}
    assert all(e.label is None for e in data.test["test"])
    assert data.source == f"local:{CUSTOM / 'train.csv'} dev:{CUSTOM / 'dev.csv'} test:{CUSTOM / 'test.csv'}"


def test_custom_task_runs_end_to_end_on_the_fixture_files(tmp_path: Path) -> None:
    """The README's own-task command on the fixture CSVs: a stratified quiz, every agent scored, named predictions."""
    files = [f"task.{k}={v}" for k, v in FILES.items() if k != "text_fields"] + ["task.text_fields=[text]"]
    results = run_cfg(tmp_path, "task=custom", f"data_dir={CUSTOM}", *files, "model=tiny", "method=kd")
    task = results["task"]
    assert task["label_names"] == ["food", "travel", "weather"]
    assert task["sizes"] == {"train": 24, "quiz": 3, "heldout": 3, "dev": 9, "test": 3}  # held-out selection
    assert set(results["agents"]) == {"teacher", "undistilled", "student"}
    assert all(set(row["dev"]) == {"accuracy", "macro_f1"} for row in results["agents"].values())
    splits = json.loads((tmp_path / "splits.json").read_text())
    train = load_task(task_config_for("custom", data_dir=str(CUSTOM), **FILES), None, "/nonexistent-cache").train
    assert sorted(train[i].label for i in splits["quiz"]) == [0, 1, 2]  # one of each topic
    lines = (tmp_path / "test_predictions" / "custom.tsv").read_text().splitlines()
    assert lines[0] == "uid\tprediction" and [line.split("\t")[0] for line in lines[1:]] == ["140", "141", "142"]
    assert all(line.split("\t")[1] in task["label_names"] for line in lines[1:])
