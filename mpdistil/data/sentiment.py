"""The embedded offline suite: four sentiment corpora of Hutto & Gilbert (ICWSM 2014).

They ship inside the source distribution of ``vaderSentiment`` 3.3.2 on PyPI (the wheel lacks
them), which is the one place real labelled sentences can be had on machines that reach only
package registries. Four domains with one rating scale (mean human rating, -4..+4) give a
multi-task suite for the curriculum and out-of-domain tests.

There are no official splits, so each corpus gets a fixed 80/10/10 train/dev/test split whose
seed is a constant (not the run seed): every run, whatever its seed or target, shares the same
dev and test sets. ``task.target=sign`` makes a negative/positive classification (ratings of
exactly zero are dropped); ``task.target=rating`` regresses the rating itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mpdistil.atomic import write_bytes
from mpdistil.data.io import read_tsv, row_error
from mpdistil.data.registry import TaskSpec, cfg_get, register_task, replace_spec, resolve_path
from mpdistil.data.types import DataError, Example, TaskData

PACKAGE = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
CORPORA = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
EXPECTED_ROWS = {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
SPLIT_SEED = 2014
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SIGN_LABELS = ("negative", "positive")
FETCH_TIMEOUT_S = 600


def corpus_file(domain: str) -> str:
    """File name of one corpus inside the ICWSM archive."""
    return f"{CORPORA[domain]}_GroundTruth.txt"


def _offline_fix() -> str:
    return "task.data_dir=<folder holding the *_GroundTruth.txt files> works offline"


def _download_sdist(downloads: Path) -> Path:
    """``pip download`` the sdist once into ``downloads`` (through a temp dir, then a rename)."""
    sdist = downloads / SDIST_NAME
    if sdist.is_file():
        return sdist
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".pip-"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(tmp)]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"fetching {PACKAGE} with pip failed ({exc}); {_offline_fix()}") from exc
        got = tmp / SDIST_NAME
        if proc.returncode != 0 or not got.is_file():
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[:300]
            raise DataError(f"fetching {PACKAGE} with pip failed (exit {proc.returncode}: {tail}); {_offline_fix()}")
        os.replace(got, sdist)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sdist


def _extract_corpora(sdist: Path, target: Path) -> None:
    """Copy the four ``*_GroundTruth.txt`` files out of the archive nested in the sdist."""
    wanted = {corpus_file(d) for d in CORPORA}
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
            if member is None:
                raise DataError(f"{sdist} holds no {INNER_ARCHIVE}; delete it to fetch again, or {_offline_fix()}")
            inner_bytes = outer.extractfile(member)
            with tarfile.open(fileobj=inner_bytes, mode="r:gz") as inner:
                found = {}
                for m in inner.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in wanted:
                        found[base] = inner.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist} is not a readable archive ({exc}); delete it to fetch again, or "
                        f"{_offline_fix()}") from exc
    missing = wanted - set(found)
    if missing:
        raise DataError(f"{sdist} lacks {', '.join(sorted(missing))}; {_offline_fix()}")
    target.mkdir(parents=True, exist_ok=True)
    for name, payload in found.items():
        write_bytes(target / name, payload)


def fetch_corpora(cache_dir: str) -> Path:
    """The folder ``<cache_dir>/sentiment`` with the four corpora, fetched with pip on first use.

    A file lock makes concurrent jobs wait for one fetch instead of racing; files are written
    atomically, so a crash never leaves a truncated corpus behind.
    """
    from filelock import FileLock

    cache = resolve_path(cache_dir)
    target = cache / "sentiment"
    if all((target / corpus_file(d)).is_file() for d in CORPORA):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "sentiment.lock")):
        if not all((target / corpus_file(d)).is_file() for d in CORPORA):
            _extract_corpora(_download_sdist(cache / "downloads"), target)
    return target


def _find_local(data_dir: str, domain: str) -> Path:
    """The corpus file in ``data_dir`` or in its ``sentiment/`` or ``hutto_ICWSM_2014/`` sub-folder."""
    root = resolve_path(data_dir)
    name = corpus_file(domain)
    candidates = [root / name, root / "sentiment" / name, root / "hutto_ICWSM_2014" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"no {name} in {root} (looked in {', '.join(str(c.parent) for c in candidates)}); "
        f"set task.data_dir=<folder holding the *_GroundTruth.txt files>, or task.data_dir=null to fetch them with pip"
    )


def read_corpus(path: Path) -> list[tuple[str, float, str, int]]:
    """(id, mean rating, text, line) rows of one tab-separated ``*_GroundTruth.txt``."""
    rows = []
    for line, fields in read_tsv(path, header=False, fieldnames=("id", "rating", "text")):
        try:
            rating = float(fields["rating"])
        except ValueError:
            raise row_error(path, line, f"rating {fields['rating']!r} is not a number") from None
        if not -4.0 <= rating <= 4.0:
            raise row_error(path, line, f"rating {rating} lies outside the -4..+4 scale")
        rows.append((fields["id"].strip(), rating, fields["text"], line))
    if not rows:
        raise DataError(f"{path} holds no rows; delete it to fetch again, or {_offline_fix()}")
    return rows


def split_positions(n: int, domain: str) -> dict[str, np.ndarray]:
    """The fixed 80/10/10 split of a corpus of ``n`` rows (same for every run and target)."""
    rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(domain.encode())])
    order = rng.permutation(n)
    n_train = int(round(SPLIT_FRACTIONS[0] * n))
    n_dev = int(round(SPLIT_FRACTIONS[1] * n))
    return {
        "train": np.sort(order[:n_train]),
        "dev": np.sort(order[n_train:n_train + n_dev]),
        "test": np.sort(order[n_train + n_dev:]),
    }


def _domain_of(spec: TaskSpec, task_cfg: Any) -> str:
    domain = cfg_get(task_cfg, "domain") or spec.name.removeprefix("sentiment_")
    if domain not in CORPORA:
        raise DataError(f"task.domain={domain!r} is not one of {sorted(CORPORA)}")
    return domain


def load_sentiment(spec: TaskSpec, task_cfg: Any, data_dir: Optional[str], cache_dir: str) -> TaskData:
    """Read one corpus (local folder, else the pip-fetched copy) and apply the fixed split and target."""
    domain = _domain_of(spec, task_cfg)
    if data_dir:
        path = _find_local(data_dir, domain)
        origin = f"local:{path}"
    else:
        path = fetch_corpora(cache_dir) / corpus_file(domain)
        origin = f"pip:{PACKAGE}:{path}"
    rows = read_corpus(path)
    sign = spec.kind == "classification"
    splits: dict[str, list[Example]] = {}
    for split, positions in split_positions(len(rows), domain).items():
        examples = []
        for i in positions:
            uid, rating, text, _ = rows[i]
            if sign and rating == 0.0:
                continue
            label: Any = int(rating > 0) if sign else rating
            examples.append(Example(uid=uid, texts=(text,), label=label))
        splits[split] = examples
    source = f"{origin} (fixed 80/10/10 split, seed {SPLIT_SEED}; target={'sign' if sign else 'rating'})"
    return TaskData(spec.name, spec.kind, list(spec.label_names), splits["train"], {"dev": splits["dev"]},
                    {"test": splits["test"]}, source=source)


def configure_target(spec: TaskSpec, task_cfg: Any) -> TaskSpec:
    """``task.target=sign`` keeps the classification spec; ``rating`` turns it into a regression."""
    target = cfg_get(task_cfg, "target") or "sign"
    if target == "sign":
        return spec
    if target == "rating":
        return replace_spec(spec, kind="regression", label_names=(), metrics=("pearson", "spearman"),
                            main_metric="pearson", leaderboard_labels="float")
    raise DataError(f"task.target={target!r} is not one of ['sign', 'rating']; "
                    "set task.target=sign or task.target=rating")


def _sentiment(domain: str) -> TaskSpec:
    return TaskSpec(
        name=f"sentiment_{domain}",
        benchmark="sentiment",
        kind="classification",
        label_names=SIGN_LABELS,
        metrics=("accuracy", "macro_f1"),
        main_metric="accuracy",
        leaderboard_labels="name",
        loader=load_sentiment,
        configure=configure_target,
        description=f"{CORPORA[domain]} (Hutto & Gilbert 2014), from the {PACKAGE} sdist",
    )


@register_task("sentiment_movies")
def sentiment_movies() -> TaskSpec:
    return _sentiment("movies")


@register_task("sentiment_tweets")
def sentiment_tweets() -> TaskSpec:
    return _sentiment("tweets")


@register_task("sentiment_amazon")
def sentiment_amazon() -> TaskSpec:
    return _sentiment("amazon")


@register_task("sentiment_nyt")
def sentiment_nyt() -> TaskSpec:
    return _sentiment("nyt")
