"""The dataset YAML: what the label PNGs of a dataset mean, in one file.

A dataset YAML names a dataset's classes by train id (each with its overlay colour), says which raw
id a label PNG may hold and which class each is (``id_to_train_id``), which train id means "not
labeled" (``ignore_index``), and optionally which images form each split and which further mIoU
metrics to report over subsets of the classes. An example::

    name: lab-streets            # shown in messages (default: the folder's name)
    ignore_index: 255            # train id of pixels that are neither learned nor scored (default 255)
    classes:                     # train id -> class; ids 0..K-1, each once
      0: {name: road, color: [128, 64, 128]}
      1: {name: car, color: [0, 0, 142]}
    id_to_train_id:              # optional: label PNG value -> train id or ignore_index; every value
      0: 255                     # a PNG may hold must be listed. Without it, the PNGs hold train ids
      7: 0                       # (and ignore_index) directly.
      26: 1
    splits:                      # optional: split -> file listing its images (paths under images/);
      train: splits/train.txt    # without it, the folders images/<split>/ are the splits
      val: splits/val.txt
    mious:                       # optional: metric target/<name> = mean IoU over these classes
      miou_vehicles: [car]

The real datasets' id tables are such files too, bundled in ``trainers/data/datasets/``
(``cityscapes.yaml``, also GTA5's; ``synthia.yaml``), and a lab's own data (``format: folder``)
brings one as ``ROOT/dataset.yaml``. Both are read here and mapped to a class set by
``labelmaps.build_label_mapping``: one way to define classes, one way to map ids.

Every problem of a file is one line that names the file and the key (``parse_dataset_yaml`` lists
them all, for ``python -m orchestrator.data check``; ``read_dataset_yaml`` raises the first).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiment_config.loading import UniqueKeyLoader

from .errors import DatasetError

DATASET_YAML = "dataset.yaml"
DEFAULT_IGNORE_INDEX = 255
MAX_RAW_ID = 65535  # the largest value of a 16-bit label PNG
MAX_CLASSES = 255  # class indices are stored as uint8 beside the ignore index 255
TOP_KEYS = ("name", "ignore_index", "classes", "id_to_train_id", "splits", "mious")
CLASS_KEYS = ("name", "color")
BUNDLED_DIR = Path(__file__).resolve().parent / "datasets"
# A class name becomes the metric key target/iou/<name>: no spaces, slashes or other punctuation.
_CLASS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MIOU_NAME = re.compile(r"miou[A-Za-z0-9_]+")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """The classes a model predicts: ``names[k]`` is class index k, ``colors[k]`` its 0-255 RGB overlay
    colour, and ``mious`` further mIoU metrics as (metric name, class names) pairs (e.g. SYNTHIA's
    ``miou13``)."""

    name: str
    names: tuple[str, ...]
    colors: tuple[RGB, ...]
    mious: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.colors) != len(self.names):
            raise ValueError(f"class set '{self.name}': {len(self.names)} names but {len(self.colors)} colours")

    def lacking(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` that are not classes of this set."""
        return [name for name in names if name not in self.names]

    def subset(self, name: str, names: Sequence[str], mious: Mapping[str, Sequence[str]] | None = None) -> ClassSet:
        """The classes ``names`` (in that order) with their colours here; ``ValueError`` if one is not here."""
        lacking = self.lacking(names)
        if lacking:
            raise ValueError(f"class set '{name}' has classes that '{self.name}' lacks: {', '.join(lacking)}")
        colour = dict(zip(self.names, self.colors))
        return ClassSet(
            name=name,
            names=tuple(names),
            colors=tuple(colour[n] for n in names),
            mious=tuple((metric, tuple(members)) for metric, members in (mious or {}).items()),
        )

    def miou_indices(self) -> dict[str, list[int]]:
        """Metric name -> the class indices it averages."""
        return {metric: [self.names.index(n) for n in members] for metric, members in self.mious}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset YAML, checked. ``splits`` maps split names to list files relative to ``root``
    (None: the folders under ``images/`` are the splits); ``id_to_train_id`` None: PNGs hold train ids."""

    path: Path
    name: str
    class_set: ClassSet
    ignore_index: int
    id_to_train_id: dict[int, int] | None
    splits: dict[str, str] | None

    @property
    def root(self) -> Path:
        return self.path.parent

    def id_table(self) -> dict[int, int]:
        """Every raw id a label PNG may hold -> its train id (``ignore_index``: ignored)."""
        if self.id_to_train_id is not None:
            return dict(self.id_to_train_id)
        table = {train_id: train_id for train_id in range(len(self.class_set.names))}
        table[self.ignore_index] = self.ignore_index
        return table


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load(path: Path) -> tuple[Any, str | None]:
    """The YAML document of ``path``, or a problem line (missing, unreadable, not UTF-8, not YAML)."""
    if not path.exists():
        return None, f"dataset file '{path}' does not exist"
    if not path.is_file():
        return None, f"dataset file '{path}' is not a file"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            None,
            f"dataset file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})",
        )
    except OSError as err:
        return None, f"dataset file '{path}' cannot be read: {err.strerror or err}"
    try:
        return yaml.load(text, Loader=UniqueKeyLoader), None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        return None, f"dataset file '{path}' is not valid YAML{where}: {problem}"


def parse_dataset_yaml(path: str | Path) -> tuple[DatasetSpec | None, list[str]]:
    """(the dataset, []) when ``path`` is a valid dataset YAML, else (None, every problem as one line)."""
    path = Path(path)
    raw, problem = _load(path)
    if problem:
        return None, [problem]
    if not isinstance(raw, dict):
        kind = "nothing" if raw is None else f"a {type(raw).__name__}"
        return None, [f"dataset file '{path}' holds {kind}, not a mapping of keys ({', '.join(TOP_KEYS)})"]
    problems: list[str] = []

    def bad(key: str, text: str) -> None:
        problems.append(f"dataset file '{path}': {key}: {text}")

    for key in raw:
        if key not in TOP_KEYS:
            bad(str(key), f"unknown key; allowed: {', '.join(TOP_KEYS)}")

    name = raw.get("name", path.resolve().parent.name)
    if not isinstance(name, str) or not name.strip():
        bad("name", f"must be a non-empty string, got {name!r}")
        name = path.resolve().parent.name

    ignore_index = raw.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not _is_int(ignore_index) or not 0 <= ignore_index <= MAX_RAW_ID:
        bad("ignore_index", f"must be an integer 0..{MAX_RAW_ID}, got {ignore_index!r}")
        ignore_index = DEFAULT_IGNORE_INDEX

    classes = _parse_classes(raw.get("classes"), ignore_index, bad)
    id_to_train_id = _parse_id_map(raw.get("id_to_train_id"), classes, ignore_index, bad)
    splits = _parse_splits(raw.get("splits"), path.parent, bad)
    mious = _parse_mious(raw.get("mious"), classes, bad)
    if problems:
        return None, problems
    names = tuple(classes[train_id][0] for train_id in range(len(classes)))
    colors = tuple(classes[train_id][1] for train_id in range(len(classes)))
    class_set = ClassSet(name=name, names=names, colors=colors, mious=tuple(mious.items()))
    return DatasetSpec(path, name, class_set, ignore_index, id_to_train_id, splits), []


def _parse_classes(value: Any, ignore_index: int, bad) -> dict[int, tuple[str | None, RGB | None]]:
    """Train id -> (name, colour), None where that entry is bad; only ids that are integers >= 0."""
    if value is None:
        bad("classes", "missing: give train id -> {name: NAME, color: [R, G, B]} for every class")
        return {}
    if not isinstance(value, dict) or not value:
        bad("classes", f"must be a non-empty mapping train id -> {{name: NAME, color: [R, G, B]}}, got {value!r}")
        return {}
    classes: dict[int, tuple[str | None, RGB | None]] = {}
    id_of_name: dict[str, int] = {}
    for train_id, entry in value.items():
        key = f"classes.{train_id}"
        if not _is_int(train_id) or train_id < 0:
            bad(key, f"a train id must be an integer 0..{MAX_CLASSES - 1}, got {train_id!r}")
            continue
        if not isinstance(entry, dict):
            bad(key, f"must be {{name: NAME, color: [R, G, B]}}, got {entry!r}")
            classes[train_id] = (None, None)
            continue
        for extra in entry:
            if extra not in CLASS_KEYS:
                bad(f"{key}.{extra}", f"unknown key; allowed: {', '.join(CLASS_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
            bad(
                f"{key}.name",
                f"must be letters, digits, '_', '.' or '-' (it names the metric target/iou/<name>), got {name!r}",
            )
            name = None
        elif name in id_of_name:
            bad(f"{key}.name", f"'{name}' is also the name of classes.{id_of_name[name]}")
        else:
            id_of_name[name] = train_id
        color = entry.get("color")
        if not isinstance(color, list) or len(color) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in color):
            bad(f"{key}.color", f"must be [R, G, B] with integers 0..255, got {color!r}")
            color = None
        classes[train_id] = (name, tuple(color) if color is not None else None)
    if len(value) > MAX_CLASSES:
        bad("classes", f"{len(value)} classes; at most {MAX_CLASSES}")
    missing = sorted(set(range(len(value))) - set(classes))
    if missing and classes:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        bad("classes", f"train ids must run 0..{len(value) - 1} without gaps; missing: {shown}")
    if ignore_index in classes:
        bad("ignore_index", f"{ignore_index} is also a train id (classes.{ignore_index}); use a value no class has")
    return classes


def _parse_id_map(
    value: Any, classes: dict[int, tuple[str | None, RGB | None]], ignore_index: int, bad
) -> dict[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        bad("id_to_train_id", f"must be a non-empty mapping label id -> train id, got {value!r}")
        return None
    reached: set[int] = set()
    table: dict[int, int] = {}
    for raw_id, train_id in value.items():
        key = f"id_to_train_id.{raw_id}"
        if not _is_int(raw_id) or not 0 <= raw_id <= MAX_RAW_ID:
            bad(key, f"a label id must be an integer 0..{MAX_RAW_ID} (a 16-bit PNG value), got {raw_id!r}")
            continue
        if not _is_int(train_id) or not (train_id in classes or train_id == ignore_index):
            bad(
                key,
                f"{train_id!r} is neither a train id of classes (0..{len(classes) - 1}) nor ignore_index "
                f"{ignore_index}",
            )
            continue
        table[raw_id] = train_id
        reached.add(train_id)
    if len(table) == len(value):
        for train_id, (name, _) in sorted(classes.items()):
            if train_id not in reached and train_id != ignore_index:
                bad(f"classes.{train_id}", f"no label id of id_to_train_id maps to class '{name}'")
    return table


def _parse_splits(value: Any, root: Path, bad) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        bad("splits", f"must be a non-empty mapping split -> list file (relative to the dataset folder), got {value!r}")
        return None
    splits: dict[str, str] = {}
    for split, relative in value.items():
        key = f"splits.{split}"
        if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
            bad(key, "a split name must be letters, digits, '_', '.' or '-'")
            continue
        if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
            bad(key, f"must be a file path relative to the dataset folder, got {relative!r}")
            continue
        file = root / relative
        if not file.resolve().is_relative_to(root.resolve()):
            bad(key, f"split list '{relative}' lies outside the dataset folder")
        elif not file.is_file():
            bad(key, f"split list '{file}' does not exist")
        else:
            splits[split] = relative
    return splits


def _parse_mious(value: Any, classes: dict[int, tuple[str | None, RGB | None]], bad) -> dict[str, tuple[str, ...]]:
    names = {name for name, _ in classes.values() if name is not None}
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        bad("mious", f"must be a non-empty mapping metric name -> [class names], got {value!r}")
        return {}
    mious: dict[str, tuple[str, ...]] = {}
    for metric, members in value.items():
        key = f"mious.{metric}"
        if not isinstance(metric, str) or not _MIOU_NAME.fullmatch(metric):
            bad(key, "a metric name must be 'miou' and a suffix of letters, digits or '_' (e.g. miou13)")
            continue
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            bad(key, f"must be a non-empty list of class names, got {members!r}")
            continue
        unknown = [m for m in members if m not in names and classes]
        twice = sorted({m for m in members if members.count(m) > 1})
        if unknown:
            bad(key, f"not classes of this dataset: {', '.join(unknown)}")
        elif twice:
            bad(key, f"classes given twice: {', '.join(twice)}")
        else:
            mious[metric] = tuple(members)
    return mious


def read_dataset_yaml(path: str | Path) -> DatasetSpec:
    """The dataset YAML at ``path``; ``DatasetError`` with its first problem (one line) otherwise."""
    spec, problems = parse_dataset_yaml(path)
    if spec is None:
        raise DatasetError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return spec


@functools.cache
def bundled_dataset(name: str) -> DatasetSpec:
    """A dataset YAML shipped with the project: ``cityscapes`` (Cityscapes and GTA5 ids) or ``synthia``."""
    path = BUNDLED_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))
        raise ValueError(f"no bundled dataset '{name}'; choose one of: {', '.join(known)}")
    return read_dataset_yaml(path)


def dataset_yaml_text(
    class_set: ClassSet,
    *,
    name: str,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    id_to_train_id: Mapping[int, int] | None = None,
    splits: Mapping[str, str] | None = None,
) -> str:
    """The text of a dataset YAML for ``class_set`` (what ``parse_dataset_yaml`` reads back)."""
    lines = [f"name: {yaml.safe_dump(name, default_style=None).splitlines()[0]}", f"ignore_index: {ignore_index}"]
    lines.append("classes:")
    for train_id, (class_name, color) in enumerate(zip(class_set.names, class_set.colors)):
        lines.append(f"  {train_id}: {{name: {class_name}, color: [{color[0]}, {color[1]}, {color[2]}]}}")
    if id_to_train_id is not None:
        lines.append("id_to_train_id:")
        lines += [f"  {raw_id}: {train_id}" for raw_id, train_id in id_to_train_id.items()]
    if splits:
        lines.append("splits:")
        lines += [f"  {split}: {relative}" for split, relative in splits.items()]
    if class_set.mious:
        lines.append("mious:")
        lines += [f"  {metric}: [{', '.join(members)}]" for metric, members in class_set.mious]
    return "\n".join(lines) + "\n"
