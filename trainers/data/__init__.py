"""Datasets: the real loaders (GTA5, SYNTHIA, Cityscapes), a lab's own folder of images and label
PNGs with its dataset YAML (``folder``), and the bundled synthetic domains.

``build_domains(data)`` turns the ``data`` config section into the three splits an experiment
uses. The synthetic default is generated to disk in the GTA5 and Cityscapes layouts and read with
the same loaders as real data, so both paths are one path. ``resolve_class_set(data)`` decides the
classes: ``data.class_set`` names a class set drawn from the target dataset's YAML, or is
``dataset`` for that YAML's classes whole.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from experiment_config.schema import ConfigError, DataConfig

from .cityscapes import CityscapesSegmentation
from .dataset_yaml import ClassSet, DatasetSpec, bundled_dataset
from .errors import DatasetError
from .folder import FolderSegmentation, read_folder_spec
from .gta5 import GTA5Segmentation
from .labelmaps import CLASS_SET_FROM_DATASET, CLASS_SETS, IGNORE_INDEX, named_class_set
from .synthetic import SYNTHETIC_CLASSES, ensure_synthetic_domains, synthetic_domain_folder
from .synthia import SynthiaSegmentation
from .transforms import training_transform


def _source_cityscapes(root, class_set, size, augment):
    return CityscapesSegmentation(root, "train", class_set=class_set, size=size, augment=augment)


SOURCE_FORMATS = {
    "gta5": lambda root, class_set, size, augment: GTA5Segmentation(root, class_set, size=size, augment=augment),
    "synthia": lambda root, class_set, size, augment: SynthiaSegmentation(root, class_set, size=size, augment=augment),
    "cityscapes": _source_cityscapes,
    "folder": lambda root, class_set, size, augment: FolderSegmentation(
        root, "train", class_set, size=size, augment=augment
    ),
}
TARGET_FORMATS = {
    "cityscapes": lambda root, split, class_set, size, native_labels=False: CityscapesSegmentation(
        root, split, class_set=class_set, size=size, native_labels=native_labels
    ),
    "folder": lambda root, split, class_set, size, native_labels=False: FolderSegmentation(
        root, split, class_set, size=size, native_labels=native_labels
    ),
}
# The bundled dataset YAML of each real layout (its id table, classes and colours); 'folder' brings its own.
FORMAT_DATASETS = {"gta5": "cityscapes", "cityscapes": "cityscapes", "synthia": "synthia"}
# data.eval_resolution: "native" scores the prediction upsampled to each label's own size (the papers'
# protocol, Cityscapes at 2048x1024); "input" scores labels resized to the input grid (cheaper).
EVAL_RESOLUTIONS = ("native", "input")


class SeededSubset(Dataset):
    """``count`` items of a dataset drawn across the whole of it with ``seed`` (a seeded permutation,
    kept in the dataset's own order), so that a subset of Cityscapes spans its cities instead of
    being the first city's images. Keeps ``label()``, ``native_label()``, ``classes`` and ``files``."""

    def __init__(self, dataset: Dataset, count: int, seed: int):
        self.dataset = dataset
        generator = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(len(dataset), generator=generator)[: min(count, len(dataset))]
        self.indices = sorted(chosen.tolist())
        self.classes = dataset.classes
        self.files = [dataset.files[i] for i in self.indices]
        self.size = getattr(dataset, "size", None)

    def __len__(self) -> int:
        return len(self.indices)

    def _inner(self, index: int) -> int:
        if not 0 <= index < len(self.indices):
            raise IndexError(index)
        return self.indices[index]

    def __getitem__(self, index: int):
        return self.dataset[self._inner(index)]

    def label(self, index: int):
        return self.dataset.label(self._inner(index))

    def native_label(self, index: int):
        return self.dataset.native_label(self._inner(index))

    def native_size(self, index: int) -> tuple[int, int]:
        return self.dataset.native_size(self._inner(index))

    def grid_size(self, index: int) -> tuple[int, int]:
        return self.dataset.grid_size(self._inner(index))


@dataclass
class DomainSplits:
    """The data of one experiment: labeled source (augmented for training), the unlabeled target
    pool (deterministic: selection and the oracle see the same pixels), target validation."""

    source: Dataset
    target_pool: Dataset
    target_val: Dataset
    classes: tuple[str, ...]
    class_set: ClassSet  # the same names, with their overlay colours and further mIoU metrics


def domain_roots(data: DataConfig, progress=None, *, generate: bool = True) -> tuple[Path | None, Path | None]:
    """Source and target roots; an empty root means the generated synthetic domain (made if missing).

    With ``generate=False`` nothing is written: a synthetic domain not generated yet comes back as None.
    """
    source_root, target_root = data.source.root, data.target.root
    if not source_root or not target_root:
        # The generator's settings as plain values: they name (hash) the generated domain's folder.
        synthetic = dataclasses.asdict(data.synthetic)
        if generate:
            generated = ensure_synthetic_domains(data.cache_dir, data.height, data.width, synthetic, progress=progress)
        else:
            folder = synthetic_domain_folder(data.cache_dir, data.height, data.width, synthetic)
            generated = (folder / "source", folder / "target") if (folder / "complete").is_file() else (None, None)
        source_root = source_root or generated[0]
        target_root = target_root or generated[1]
    return (Path(source_root) if source_root else None), (Path(target_root) if target_root else None)


def domain_dataset(data: DataConfig, side: str) -> DatasetSpec:
    """The dataset YAML of ``data.source`` or ``data.target`` (``side``): the bundled one of a real
    layout, or ROOT/dataset.yaml of a folder dataset. ``ConfigError`` naming the key when it is bad."""
    domain = getattr(data, side)
    if domain.format != "folder":
        return bundled_dataset(FORMAT_DATASETS[domain.format])
    if not domain.root:
        raise ConfigError(
            f"data.{side}.root", "format 'folder' needs the dataset's folder (the one holding dataset.yaml)"
        )
    try:
        return read_folder_spec(domain.root)
    except DatasetError as err:
        raise ConfigError(f"data.{side}.root", str(err)) from None


def resolve_class_set(data: DataConfig) -> ClassSet:
    """The classes an experiment learns and scores, with their colours and further mIoU metrics.

    ``data.class_set: dataset`` takes the target dataset YAML's classes whole; a named class set
    (``CLASS_SETS``) takes those of its classes, each of which the target must have (the target's
    other classes are ignored, as Cityscapes' terrain, truck and train are for SYNTHIA's 16). The
    source must have every class too. Reads the dataset YAMLs only; ``ConfigError`` naming the key.
    """
    target = domain_dataset(data, "target")
    if data.class_set == CLASS_SET_FROM_DATASET:
        class_set = target.class_set
    else:
        lacking = target.class_set.lacking(CLASS_SETS[data.class_set])
        if lacking:
            raise ConfigError(
                "data.class_set",
                f"class set '{data.class_set}' has classes the target dataset '{target.name}' ({target.path}) "
                f"lacks: {', '.join(lacking)} (data.class_set: {CLASS_SET_FROM_DATASET} takes the target's classes)",
            )
        class_set = named_class_set(data.class_set, target)
    source = domain_dataset(data, "source")
    lacking = source.class_set.lacking(class_set.names)
    if lacking:
        raise ConfigError(
            "data.class_set",
            f"the source dataset '{source.name}' ({source.path}) lacks classes of class set "
            f"'{class_set.name}': {', '.join(lacking)}",
        )
    return class_set


def check_domains(data: DataConfig, progress=None) -> None:
    """Decode every image and label a run will use, so a missing root, an empty split, a missing label,
    a truncated file or an undefined label id fails now, in one line naming it, not hours into a run.

    Writes nothing but the cache of verified files: a synthetic domain that is not generated yet is not
    made here (only its cache folder is checked); the run generates it once it starts.
    """
    from .verify import verify_splits

    class_set = resolve_class_set(data)
    source_root, target_root = domain_roots(data, generate=False)
    if source_root is None or target_root is None:
        check_writable_folder(data.cache_dir, "data.cache_dir")
    splits = {}
    if source_root is not None:
        splits["source"] = _source_split(data, source_root, class_set)
    if target_root is not None:
        splits["target_pool"], splits["target_val"] = _target_splits(data, target_root, class_set)
    for name, dataset in splits.items():
        if len(dataset) == 0:
            raise DatasetError(f"the {name.replace('_', ' ')} split has no images")
    decoded, known = verify_splits(splits, data.cache_dir, progress)
    if progress is not None and splits:
        progress(f"data: {decoded + known} image/label pairs checked ({known} unchanged since their last check)")


def check_writable_folder(folder: str | Path, key: str) -> None:
    """``DatasetError`` unless ``folder`` exists as a writable folder or could be created (nothing is made)."""
    path = Path(folder).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise DatasetError(f"{key} '{folder}': '{existing}' is not a folder")
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise DatasetError(
            f"{key} '{folder}': '{existing}' is not writable" + (" (a read-only file system)" if read_only else "")
        )


def source_input_size(data: DataConfig) -> tuple[int, int]:
    """(H, W) source images are resized to before augmentation: ``data.source.height/width``, 0 for
    one of them to keep each image's aspect ratio, both 0 for the target's ``data.height/width``."""
    height, width = data.source.height, data.source.width
    if not height and not width:
        return data.height, data.width
    return height, width


def _source_split(data: DataConfig, root: Path, class_set: ClassSet) -> Dataset:
    size, source_size = (data.height, data.width), source_input_size(data)
    aug = data.augment
    rescale = (aug.scale_min, aug.scale_max) != (1.0, 1.0)
    augment = training_transform(
        size=None,
        scale=(aug.scale_min, aug.scale_max),
        crop=size if rescale or source_size != size else None,
        hflip=aug.hflip,
    )
    return SOURCE_FORMATS[data.source.format](root, class_set, source_size, augment)


def _target_splits(data: DataConfig, root: Path, class_set: ClassSet) -> tuple[Dataset, Dataset]:
    size = (data.height, data.width)
    target_format = TARGET_FORMATS[data.target.format]
    pool = target_format(root, data.target.pool_split, class_set, size)
    val = target_format(root, data.target.val_split, class_set, size, native_labels=data.eval_resolution == "native")
    if data.pool_images:
        pool = SeededSubset(pool, data.pool_images, data.subset_seed)
    if data.val_images:
        val = SeededSubset(val, data.val_images, data.subset_seed)
    return pool, val


def build_domains(data: DataConfig, progress=None) -> DomainSplits:
    """Build the splits named by a ``data`` config section.

    Target images (pool and validation) are resized to ``data.height x data.width``, the grid of
    training and selection. Source images are resized to their own size (``source_input_size``),
    randomly rescaled, then randomly cropped to the target's size (padded with ignore where
    smaller), as AdaptSegNet and RIPU do, so both domains share one batch shape.
    """
    class_set = resolve_class_set(data)
    source_root, target_root = domain_roots(data, progress)
    pool, val = _target_splits(data, target_root, class_set)
    return DomainSplits(
        source=_source_split(data, source_root, class_set),
        target_pool=pool,
        target_val=val,
        classes=class_set.names,
        class_set=class_set,
    )


__all__ = [
    "CLASS_SETS",
    "CLASS_SET_FROM_DATASET",
    "EVAL_RESOLUTIONS",
    "FORMAT_DATASETS",
    "IGNORE_INDEX",
    "SOURCE_FORMATS",
    "SYNTHETIC_CLASSES",
    "TARGET_FORMATS",
    "ClassSet",
    "DatasetError",
    "DatasetSpec",
    "DomainSplits",
    "SeededSubset",
    "build_domains",
    "check_domains",
    "domain_dataset",
    "domain_roots",
    "resolve_class_set",
    "source_input_size",
]
