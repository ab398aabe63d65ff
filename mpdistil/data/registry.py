"""Task registry: one :class:`TaskSpec` per task name, and the one entry point that loads a task.

Task modules (``glue``, ``superglue``, ``sentiment``, ``custom``) register their specs with
``@register_task("<name>")`` on a zero-argument factory. The spec says everything the rest of the
code needs to know about a task (kind, labels, metrics, official files, hub repository,
leaderboard file), so phases never branch on task names.

Data comes from the official files when a data folder is given, otherwise from the HF hub; the
hub is never contacted unless there is no data folder. ``TaskData.source`` records which.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from mpdistil.config import cache_root
from mpdistil.data.io import PathLike, row_error
from mpdistil.data.types import DataError, Example, Kind, MissingTaskFiles, TaskData

# (file, split name, spec) -> examples of that split
LocalReader = Callable[[Path, str, "TaskSpec"], list[Example]]
# (hub record, split name, spec) -> example
HubReader = Callable[[Mapping[str, Any], str, "TaskSpec"], Example]
# (spec, task config, data dir or None, cache dir) -> every split
Loader = Callable[["TaskSpec", Any, Optional[str], str], TaskData]
# (spec, task config) -> the spec variant that config asks for (e.g. sentiment target=rating)
Configure = Callable[["TaskSpec", Any], "TaskSpec"]

LabelValue = Union[int, float, None]

_BUILTIN_MODULES = ("glue", "superglue", "sentiment", "custom")
_BENCHMARK_FOLDERS = {"superglue": ("superglue", "super_glue", "SuperGLUE"), "glue": ("glue", "glue_data", "GLUE")}
TASK_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one task, independent of where its data comes from.

    ``files`` maps each split name to its official file name; ``dev_splits`` and ``test_splits``
    name the evaluation splits (MNLI has two of each). ``local_labels`` are the raw label values
    of the official files in the order of ``label_names`` (e.g. CoLA's "0"/"1"); hub datasets use
    the integer index into ``label_names`` directly.
    """

    name: str
    benchmark: str
    kind: Kind
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    folder: Optional[str] = None
    leaderboard_file: Optional[str] = None
    hub_path: Optional[str] = None
    hub_name: Optional[str] = None
    files: Mapping[str, str] = field(default_factory=dict)
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    hub_splits: Mapping[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    local_labels: Optional[tuple[str, ...]] = None
    leaderboard_files: Mapping[str, str] = field(default_factory=dict)
    leaderboard_labels: str = "name"  # name | index | float | lower | title
    read_local: Optional[LocalReader] = None
    read_hub: Optional[HubReader] = None
    loader: Optional[Loader] = None
    configure: Optional[Configure] = None
    description: str = ""

    @property
    def num_labels(self) -> int:
        """Head size, as in :attr:`TaskData.num_labels`."""
        return len(self.label_names) if self.kind == "classification" else 1

    def leaderboard_file_for(self, split_name: str) -> str:
        """Submission file name for a test split (MNLI: MNLI-m.tsv / MNLI-mm.tsv)."""
        if split_name in self.leaderboard_files:
            return self.leaderboard_files[split_name]
        if self.leaderboard_file:
            return self.leaderboard_file
        suffix = "" if split_name == "test" else f"_{split_name}"
        return f"{self.name}{suffix}.tsv"

    def label_index(self, raw: Any, path: PathLike, line: int) -> int:
        """Map a raw label of an official file to its class index, or say which line is wrong."""
        allowed = self.local_labels or self.label_names
        value = normalise_label(raw)
        if value in allowed:
            return allowed.index(value)
        raise row_error(
            path, line, f"label {raw!r} is not one of {{{', '.join(allowed)}}} for task {self.name}",
            "fix the label, or check that the file belongs to this task",
        )


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(name: str) -> Callable[[Callable[[], TaskSpec]], Callable[[], TaskSpec]]:
    """Register the spec built by a zero-argument factory under ``name`` (torchdistill style)."""

    def wrap(factory: Callable[[], TaskSpec]) -> Callable[[], TaskSpec]:
        spec = factory()
        if spec.name != name:
            raise ValueError(f"register_task({name!r}) got a spec named {spec.name!r}")
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        _REGISTRY[name] = spec
        return factory

    return wrap


def _ensure_builtin_tasks() -> None:
    """Import the task modules lazily: they import this module to register themselves."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"mpdistil.data.{module}")


def known_tasks() -> list[str]:
    """Every registered task name, sorted."""
    _ensure_builtin_tasks()
    return sorted(_REGISTRY)


def get_task_spec(name: str, task_cfg: Any = None) -> TaskSpec:
    """The spec of task ``name``; with ``task_cfg``, the variant it selects (sentiment target, custom type)."""
    _ensure_builtin_tasks()
    if name not in _REGISTRY:
        raise DataError(f"unknown task {name!r}; set task=<name> with one of: {', '.join(sorted(_REGISTRY))}")
    spec = _REGISTRY[name]
    if task_cfg is not None and spec.configure is not None:
        spec = spec.configure(spec, task_cfg)
    return spec


def normalise_label(raw: Any) -> str:
    """Raw labels as strings: JSON booleans become "true"/"false", 1.0 becomes "1"."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a field from a DictConfig, a dataclass or a plain dict alike."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def resolve_path(path: PathLike) -> Path:
    """User paths: ``~`` expanded, relative paths taken from the current working directory."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else Path.cwd() / p


def _fold(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _child(folder: Path, wanted: Sequence[str]) -> Optional[Path]:
    """A sub-folder whose name matches one of ``wanted``, ignoring case, '-' and '_'."""
    if not folder.is_dir():
        return None
    keys = {_fold(w) for w in wanted}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and _fold(child.name) in keys:
            return child
    return None


def locate_task_dir(spec: TaskSpec, data_dir: PathLike) -> Path:
    """Find the folder with the task's official files under ``data_dir``.

    Accepted: the task folder itself (``.../CB``), a benchmark folder holding ``CB/``, or a root
    holding ``superglue/CB/`` (or ``glue/CoLA/``). A folder named after another task is not taken
    for this one, so ``data_dir=.../CB`` cannot silently feed COPA.
    """
    root = resolve_path(data_dir)
    if not root.exists():
        raise DataError(f"data_dir {root} does not exist; set data_dir=<folder with the official {spec.folder} files>")
    train = spec.files.get("train", "")
    folder = spec.folder or spec.name
    candidates: list[Path] = []
    direct = _child(root, [folder])
    if direct is not None:
        candidates.append(direct)
    bench = _child(root, _BENCHMARK_FOLDERS.get(spec.benchmark, (spec.benchmark,)))
    if bench is not None:
        nested = _child(bench, [folder])
        if nested is not None:
            candidates.append(nested)
    other_folders = {_fold(s.folder) for s in _REGISTRY.values() if s.folder and _fold(s.folder) != _fold(folder)}
    if _fold(root.name) == _fold(folder) or _fold(root.name) not in other_folders:
        candidates.append(root)
    for cand in candidates:
        if (cand / train).is_file():
            return cand
    looked = [str(root / folder), str(root / spec.benchmark / folder), str(root)]
    raise MissingTaskFiles(
        f"no {folder}/{train} for task {spec.name} under {root} (looked in {', '.join(looked)}); "
        f"set data_dir=<folder holding {folder}/ or {spec.benchmark}/{folder}/>"
    )


def parse_label(spec: TaskSpec, raw: Any, split: str, path: PathLike, line: int) -> LabelValue:
    """A label from an official file: class index, float (regression) or None on a test split."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if split in spec.test_splits:
            return None
        raise row_error(path, line, f"no label in the {split} split of task {spec.name}")
    if spec.kind == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise row_error(path, line, f"label {raw!r} is not a number (task {spec.name} is a regression)") from None
        if not math.isfinite(value):
            raise row_error(path, line, f"label {raw!r} is not a finite number")
        return value
    if spec.kind == "multiple_choice":
        choices = [str(i) for i in range(len(spec.label_names))]
        value = normalise_label(raw)
        if value not in choices:
            raise row_error(
                path, line, f"label {raw!r} is not one of {{{', '.join(choices)}}} for task {spec.name}",
                "fix the label, or check that the file belongs to this task",
            )
        return int(value)
    return spec.label_index(raw, path, line)


def hub_label(spec: TaskSpec, value: Any, split: str) -> LabelValue:
    """A hub label: its integer is already the index into ``label_names``; -1 / test means unlabelled."""
    if value is None or split in spec.test_splits:
        return None
    if spec.kind == "regression":
        return float(value)
    index = int(value)
    if index < 0:
        return None
    if index >= len(spec.label_names):
        raise DataError(
            f"hub label {index} is outside the {len(spec.label_names)} classes {list(spec.label_names)} of task "
            f"{spec.name}; check task.hub.name, or use data_dir=<folder with the official files>"
        )
    return index


def _load_local(spec: TaskSpec, data_dir: PathLike) -> TaskData:
    """Every split from the official files; test files are optional (they carry no labels anyway)."""
    if spec.read_local is None:
        raise DataError(f"task {spec.name} cannot be read from local files")
    folder = locate_task_dir(spec, data_dir)

    def read(split: str, required: bool) -> Optional[list[Example]]:
        path = folder / spec.files[split]
        if not path.is_file():
            if required:
                raise DataError(
                    f"{path} is missing for task {spec.name}; data_dir must hold the official {spec.folder} files "
                    f"({', '.join(spec.files.values())})"
                )
            return None
        return spec.read_local(path, split, spec)

    train = read("train", True) or []
    dev = {s: read(s, True) or [] for s in spec.dev_splits}
    test = {s: ex for s in spec.test_splits if (ex := read(s, False)) is not None}
    return TaskData(spec.name, spec.kind, list(spec.label_names), train, dev, test, source=f"local:{folder}")


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _honour_offline_env() -> Iterator[None]:
    """Apply HF_HUB_OFFLINE/HF_DATASETS_OFFLINE as set now, even if `datasets` was imported before.

    Both libraries read the variable once at import; without this a late offline flag would be
    ignored and every call would wait through the network retries.
    """
    if not any(_truthy(os.environ.get(v)) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")):
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load_hub(spec: TaskSpec, task_cfg: Any) -> TaskData:
    """Every split from ``datasets.load_dataset(path, name, revision=...)``."""
    hub = cfg_get(task_cfg, "hub")
    path = cfg_get(hub, "path") or spec.hub_path
    name = cfg_get(hub, "name") or spec.hub_name
    revision = cfg_get(hub, "revision")
    where = f"{path} (config {name}, revision {revision or 'default'})"
    fix = f"data_dir=<folder with the official {spec.folder or spec.name} files> always works"
    if not path or spec.read_hub is None:
        raise DataError(f"task {spec.name} has no hub dataset; set {fix.replace(' always works', '')}")
    try:
        import datasets

        with _honour_offline_env():
            dataset = datasets.load_dataset(path, name, revision=revision)
    except Exception as exc:  # any hub/network/format failure becomes one actionable line
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DataError(f"could not load task {spec.name} from the HF hub {where}: {type(exc).__name__}: {reason}; "
                        f"{fix}") from exc

    def split(ours: str) -> list[Example]:
        hub_split = spec.hub_splits[ours]
        if hub_split not in dataset:
            raise DataError(f"hub dataset {where} has no split {hub_split!r} (has {sorted(dataset)}); {fix}")
        return [spec.read_hub(record, ours, spec) for record in dataset[hub_split]]

    train = split("train")
    dev = {s: split(s) for s in spec.dev_splits}
    test = {s: split(s) for s in spec.test_splits if spec.hub_splits.get(s) in dataset}
    source = f"hub:{path}/{name}@{revision or 'default'}"
    return TaskData(spec.name, spec.kind, list(spec.label_names), train, dev, test, source=source)


def load_task(task_cfg: Any, data_dir: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> TaskData:
    """Load every split of the task ``task_cfg`` describes.

    ``task_cfg.data_dir`` wins over ``data_dir``; with neither, the HF hub is used (or, for the
    sentiment suite, the pip-fetched corpora under ``cache_dir``).
    """
    spec = get_task_spec(cfg_get(task_cfg, "name"), task_cfg)
    chosen = cfg_get(task_cfg, "data_dir") or data_dir
    chosen_str = str(chosen) if chosen else None
    if spec.loader is not None:
        return spec.loader(spec, task_cfg, chosen_str, str(cache_root(cache_dir)))
    if chosen_str:
        return _load_local(spec, chosen_str)
    return _load_hub(spec, task_cfg)


def task_config_for(name: str, **overrides: Any) -> Any:
    """A TaskConfig-shaped OmegaConf node for an auxiliary/curriculum task, from conf/task/<name>.yaml.

    The preset's ``data_dir`` interpolation points at the top-level config, which a standalone
    node does not have, so it is replaced by ``overrides['data_dir']`` (default None).
    """
    from omegaconf import OmegaConf

    from mpdistil.config import TaskConfig

    path = TASK_CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in TASK_CONF_DIR.glob("*.yaml")) if TASK_CONF_DIR.is_dir() else []
        raise DataError(f"no task preset {path}; use one of: {', '.join(presets)}")
    preset = OmegaConf.load(path)
    preset.pop("defaults", None)
    preset["data_dir"] = None
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), preset)
    if overrides:
        plain = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
        cfg = OmegaConf.merge(cfg, OmegaConf.create(plain))
    return cfg


def replace_spec(spec: TaskSpec, **changes: Any) -> TaskSpec:
    """A copy of ``spec`` with some fields changed (used by ``configure`` hooks)."""
    return dataclasses.replace(spec, **changes)

