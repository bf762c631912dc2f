"""A lab's own data (``format: folder``): images, label PNGs of ids, and a dataset YAML.

Layout under ``root``::

    dataset.yaml                         classes, ids, palette, ignore index (see ``dataset_yaml``)
    images/<split>/PATH.{png,jpg,jpeg}   without ``splits`` in dataset.yaml: one folder per split
    labels/<split>/PATH.png              (any depth below it; the label has the image's path, .png)

or, when dataset.yaml lists ``splits`` (split -> a text file of image paths under ``images/``, one
per line, ``#`` comments and blank lines skipped)::

    images/PATH.{png,jpg,jpeg}
    labels/PATH.png

Label PNGs are single-channel (8-bit grey, palette indices or 16-bit grey) and hold the raw ids of
``id_to_train_id`` (or train ids, without it). They are decoded, checked against their image's size,
mapped and verified by the same code as the Cityscapes, GTA5 and SYNTHIA loaders
(``segmentation_pairs``, ``verify``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset_yaml import DATASET_YAML, ClassSet, DatasetSpec, dataset_yaml_text, parse_dataset_yaml, read_dataset_yaml
from .errors import DatasetError
from .labelmaps import IGNORE_INDEX, build_label_mapping
from .segmentation_pairs import PairedSegmentationDataset, check_folder, check_root, inside_root, read_rgb_image
from .verify import PROGRESS_EVERY_S, VERIFY_THREADS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGES, LABELS = "images", "labels"


def read_folder_spec(root: str | os.PathLike) -> DatasetSpec:
    """The dataset YAML of a folder dataset; ``DatasetError`` (one line) if the folder or its YAML is bad."""
    return read_dataset_yaml(check_root(root) / DATASET_YAML)


def folder_splits(root: Path, spec: DatasetSpec) -> tuple[str, ...]:
    """The split names: those ``dataset.yaml`` lists, else the folders under ``images/``."""
    if spec.splits is not None:
        return tuple(spec.splits)
    image_dir = root / IMAGES
    if not image_dir.is_dir():
        return ()
    return tuple(sorted(entry.name for entry in image_dir.iterdir() if entry.is_dir()))


def _label_of(label_dir: Path, relative: Path) -> Path:
    return label_dir / relative.with_suffix(".png")


def _listed_pairs(root: Path, spec: DatasetSpec, split: str, report: Callable[[str], None]) -> list[tuple[str, str]]:
    list_file = root / spec.splits[split]
    image_dir, label_dir = root / IMAGES, root / LABELS
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        report(f"cannot read split list '{list_file}': {error}")
        return []
    pairs, seen = [], {}
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"split list '{list_file}' line {number}"
        relative = Path(entry)
        if relative.is_absolute() or ".." in relative.parts:
            report(f"{where}: '{entry}' must be a path under {image_dir}")
            continue
        if entry in seen:
            report(f"{where}: '{entry}' is also on line {seen[entry]}")
            continue
        seen[entry] = number
        image = image_dir / relative
        if relative.suffix.lower() not in IMAGE_SUFFIXES:
            report(f"{where}: '{entry}' is not a {', '.join(IMAGE_SUFFIXES)} image")
        elif not image.is_file():
            report(f"{where}: image '{image}' does not exist")
        elif not _label_of(label_dir, relative).is_file():
            report(f"image '{image}' has no label file '{_label_of(label_dir, relative)}'")
        else:
            pairs.append((str(image), str(_label_of(label_dir, relative))))
    if not pairs and not seen:
        report(f"split list '{list_file}' lists no images")
    return pairs


def _folder_pairs(root: Path, split: str, report: Callable[[str], None]) -> list[tuple[str, str]]:
    image_dir, label_dir = root / IMAGES / split, root / LABELS / split
    try:
        check_folder(image_dir, "image folder")
        check_folder(label_dir, "label folder")
    except DatasetError as error:
        report(str(error))
        return []
    pairs, found = [], False
    for image in sorted(path for path in image_dir.rglob("*") if not path.is_dir()):
        found = True
        if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            report(f"unexpected entry '{image}' in image folder (expected only {', '.join(IMAGE_SUFFIXES)} images)")
            continue
        label = _label_of(label_dir, image.relative_to(image_dir))
        if not label.is_file():
            report(f"image '{image}' has no label file '{label}'")
            continue
        pairs.append((str(image), str(label)))
    if not found:
        report(f"image folder '{image_dir}' contains no images")
    return pairs


def list_folder_pairs(
    root: Path, spec: DatasetSpec, split: str, problems: list[str] | None = None
) -> list[tuple[str, str]]:
    """(image, label) paths of ``split``: every listed or found image with its label.

    Without ``problems`` the first problem raises ``DatasetError``; with it, each problem is appended
    (one line) and the pairs that are fine are returned (``python -m orchestrator.data check``).
    """

    def report(message: str) -> None:
        if problems is None:
            raise DatasetError(message)
        problems.append(message)

    splits = folder_splits(root, spec)
    if split not in splits:
        where = "listed in its dataset.yaml" if spec.splits is not None else f"folders under '{root / IMAGES}'"
        report(f"dataset '{spec.name}' has no split '{split}' (splits {where}: {', '.join(splits) or 'none'})")
        return []
    pairs = _listed_pairs(root, spec, split, report) if spec.splits is not None else _folder_pairs(root, split, report)
    try:
        return inside_root(root, pairs, f"dataset '{spec.name}'")
    except DatasetError as error:
        report(str(error))
        real_root = root.resolve()
        return [pair for pair in pairs if all(Path(p).resolve().is_relative_to(real_root) for p in pair)]


class FolderSegmentation(PairedSegmentationDataset):
    """Split ``split`` of a folder dataset with its label ids mapped to ``class_set`` (default: the
    classes of its own dataset.yaml).

    ``ds[i]`` -> (float32 (3, H, W) normalized image, int64 (H, W) label, 255 = ignore);
    ``ds.label(i)`` -> the deterministic label alone; ``ds.spec`` is the dataset YAML.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        class_set: ClassSet | None = None,
        size: tuple[int, int] | None = None,
        augment: Callable | None = None,
        native_labels: bool = False,
    ) -> None:
        self.root = check_root(root)
        self.spec = read_folder_spec(self.root)
        self.split = split
        mapping = build_label_mapping(self.spec, class_set or self.spec.class_set)
        files = list_folder_pairs(self.root, self.spec, split)
        super().__init__(files, mapping, size=size, augment=augment, native_labels=native_labels)


@dataclass
class FolderCheck:
    """What ``check_folder_dataset`` found: the dataset YAML (None if it is bad), every problem as one
    line, and per split the number of image/label pairs and the pixels per class (native resolution;
    the last entry counts ignored pixels)."""

    root: Path
    spec: DatasetSpec | None
    problems: list[str]
    images: dict[str, int] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)


def check_folder_dataset(
    root: str | os.PathLike, progress: Callable[[str], None] | None = None, threads: int = VERIFY_THREADS
) -> FolderCheck:
    """Check a folder dataset whole, writing nothing: its dataset.yaml, every split's listing, and every
    image and label decoded, size-checked and mapped by the loaders' own code (``PairedSegmentationDataset``
    with the YAML's mapping), counting pixels per class. Every problem is kept, not only the first."""
    root = Path(root)
    if root.is_file() and root.name == DATASET_YAML:
        root = root.parent
    if not root.is_dir():
        what = "does not exist" if not root.exists() else f"is not a folder (give the folder holding {DATASET_YAML})"
        return FolderCheck(root, None, [f"dataset folder '{root}' {what}"])
    spec, problems = parse_dataset_yaml(root / DATASET_YAML)
    report = FolderCheck(root, spec, problems)
    if spec is None:
        return report
    splits = folder_splits(root, spec)
    if not splits:
        problems.append(
            f"dataset '{spec.name}' has no splits: list them under 'splits' in {DATASET_YAML} "
            f"or put the images in '{root / IMAGES}/<split>/'"
        )
    mapping = build_label_mapping(spec, spec.class_set)
    num_classes = len(spec.class_set.names)
    last_said = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for split in splits:
            dataset = PairedSegmentationDataset(list_folder_pairs(root, spec, split, problems), mapping)
            report.images[split] = len(dataset)
            counts = np.zeros(num_classes + 1, dtype=np.int64)

            def count(index: int, dataset=dataset) -> np.ndarray | str:
                try:
                    read_rgb_image(dataset.files[index][0])  # every pixel decoded: truncated data fails here
                    label = dataset.native_label(index).numpy()
                except DatasetError as error:
                    return str(error)
                return np.bincount(
                    np.where(label == IGNORE_INDEX, num_classes, label).ravel(), minlength=num_classes + 1
                )

            for done, result in enumerate(pool.map(count, range(len(dataset))), start=1):
                if isinstance(result, str):
                    problems.append(result)
                else:
                    counts += result
                if progress is not None and time.monotonic() - last_said > PROGRESS_EVERY_S:
                    progress(f"{split}: checked {done}/{len(dataset)} image/label pairs")
                    last_said = time.monotonic()
            report.pixels[split] = counts
    return report


def write_folder_dataset(
    root: str | os.PathLike,
    class_set: ClassSet,
    samples,
    *,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a dataset in the folder layout: ``samples`` yields (split, file stem, RGB uint8 (H, W, 3),
    train ids uint8 (H, W)); images and labels go to ``images/<split>/`` and ``labels/<split>/`` as PNG,
    and ``dataset.yaml`` declares ``class_set`` (labels hold train ids, no id map). Returns ``root``.
    ``progress(n)`` is called after each written pair."""
    from PIL import Image

    root = Path(root)
    for done, (split, stem, image, label) in enumerate(samples, start=1):
        for folder, array in ((IMAGES, image), (LABELS, label)):
            path = root / folder / split / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
        if progress is not None:
            progress(done)
    root.mkdir(parents=True, exist_ok=True)
    (root / DATASET_YAML).write_text(dataset_yaml_text(class_set, name=name), encoding="utf-8")
    return root
