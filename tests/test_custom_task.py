"""Task ``custom``: the user's own files, with clear errors for everything that can be wrong."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpdistil.data.registry import get_task_spec, load_task, task_config_for
from mpdistil.data.types import DataError


def custom(**overrides) -> object:
    return load_task(task_config_for("custom", **overrides), None, "/nonexistent-cache")


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    rows = ["id,text,label"] + [f"{i},\"sentence {i}, with a comma\",{'spam' if i % 3 == 0 else 'ham'}" for i in range(40)]
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
    with pytest.raises(DataError, match=r"label 'eggs' does not occur in the training file \(labels: ham, spam\) at .*dev.csv line 3"):
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
