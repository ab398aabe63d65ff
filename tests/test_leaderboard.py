"""Submission files in each benchmark's format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mpdistil.data.leaderboard import write_test_predictions
from mpdistil.data.registry import get_task_spec, task_config_for


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_glue_label_strings_and_indices(tmp_path: Path) -> None:
    rte = write_test_predictions(get_task_spec("glue_rte"), "test", [0, 1], [1, 0], tmp_path)
    assert rte.name == "RTE.tsv" and lines(rte) == ["index\tprediction", "0\tnot_entailment", "1\tentailment"]
    cola = write_test_predictions(get_task_spec("cola"), "test", np.array([0, 1, 2]), np.array([1, 0, 1]), tmp_path)
    assert cola.name == "CoLA.tsv" and lines(cola) == ["index\tprediction", "0\t1", "1\t0", "2\t1"]
    for task, file in [("sst2", "SST-2.tsv"), ("mrpc", "MRPC.tsv"), ("qqp", "QQP.tsv"), ("wnli", "WNLI.tsv"),
                       ("qnli", "QNLI.tsv")]:
        assert write_test_predictions(get_task_spec(task), "test", [0], [1], tmp_path).name == file
    assert lines(tmp_path / "WNLI.tsv")[1] == "0\t1" and lines(tmp_path / "QNLI.tsv")[1] == "0\tnot_entailment"


def test_glue_mnli_files_and_stsb_floats(tmp_path: Path) -> None:
    mnli = get_task_spec("mnli")
    m = write_test_predictions(mnli, "test_matched", [0, 1], [0, 2], tmp_path)
    mm = write_test_predictions(mnli, "test_mismatched", [0], [1], tmp_path)
    assert (m.name, mm.name) == ("MNLI-m.tsv", "MNLI-mm.tsv")
    assert lines(m)[1:] == ["0\tentailment", "1\tcontradiction"] and lines(mm)[1:] == ["0\tneutral"]
    stsb = write_test_predictions(get_task_spec("stsb"), "test", [0, 1], [[4.25], [0.5]], tmp_path)
    assert stsb.name == "STS-B.tsv" and lines(stsb)[1:] == ["0\t4.25", "1\t0.5"]


def test_superglue_jsonl(tmp_path: Path) -> None:
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in lines(path)]

    assert read(write_test_predictions(get_task_spec("boolq"), "test", [0, 1], [1, 0], tmp_path)) == [
        {"idx": 0, "label": "true"}, {"idx": 1, "label": "false"}]
    wic = write_test_predictions(get_task_spec("wic"), "test", [3], [0], tmp_path)
    assert read(wic) == [{"idx": 3, "label": "false"}]
    wsc = write_test_predictions(get_task_spec("wsc"), "test", [0], [1], tmp_path)
    assert read(wsc) == [{"idx": 0, "label": "True"}]
    assert read(write_test_predictions(get_task_spec("cb"), "test", [0, 1], [2, "contradiction"], tmp_path)) == [
        {"idx": 0, "label": "neutral"}, {"idx": 1, "label": "contradiction"}]
    assert read(write_test_predictions(get_task_spec("rte"), "test", [5], [1], tmp_path)) == [
        {"idx": 5, "label": "not_entailment"}]
    copa = write_test_predictions(get_task_spec("copa"), "test", [0, 1], np.array([1, 0]), tmp_path)
    assert copa.name == "COPA.jsonl" and read(copa) == [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]
    for name in ("BoolQ", "WiC", "WSC", "CB", "RTE"):
        assert (tmp_path / f"{name}.jsonl").is_file()


def test_sentiment_and_custom_tsv(tmp_path: Path) -> None:
    sign = write_test_predictions(get_task_spec("sentiment_movies"), "test", ["1", "7"], [1, 0], tmp_path)
    assert sign.name == "sentiment_movies.tsv" and lines(sign) == ["uid\tprediction", "1\tpositive", "7\tnegative"]
    rating_spec = get_task_spec("sentiment_nyt", task_config_for("sentiment_nyt", target="rating"))
    rating = write_test_predictions(rating_spec, "test", ["1_1"], [-1.5], tmp_path)
    assert lines(rating)[1] == "1_1\t-1.5"
    custom = write_test_predictions(get_task_spec("custom"), "test", [0, 1], [1, 0], tmp_path / "out",
                                    label_names=["ham", "spam"])
    assert lines(custom)[1:] == ["0\tspam", "1\tham"]


def test_bad_predictions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 uids but 1 predictions"):
        write_test_predictions(get_task_spec("cb"), "test", [0, 1], [0], tmp_path)
    with pytest.raises(ValueError, match="outside 0..2"):
        write_test_predictions(get_task_spec("cb"), "test", [0], [3], tmp_path)
    assert not list(tmp_path.iterdir())
