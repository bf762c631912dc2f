"""Datasets: the real loaders (GTA5, SYNTHIA, Cityscapes) and the bundled synthetic domains.

``build_domains(data_cfg)`` turns the ``data`` config section into the three splits an experiment
uses. The synthetic default is generated to disk in the GTA5 and Cityscapes layouts and read with
the same loaders as real data, so both paths are one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .cityscapes import CityscapesSegmentation
from .errors import DatasetError
from .gta5 import GTA5Segmentation
from .labelmaps import CLASS_SETS, IGNORE_INDEX
from .synthetic import SYNTHETIC_CLASSES, ensure_synthetic_domains
from .segmentation_pairs import read_image_size
from .synthia import SynthiaSegmentation
from .transforms import training_transform


def _source_cityscapes(root, class_set, size, augment):
    return CityscapesSegmentation(root, "train", class_set=class_set, size=size, augment=augment)


SOURCE_FORMATS = {
    "gta5": lambda root, class_set, size, augment: GTA5Segmentation(root, class_set, size=size, augment=augment),
    "synthia": lambda root, class_set, size, augment: SynthiaSegmentation(root, class_set, size=size, augment=augment),
    "cityscapes": _source_cityscapes,
}
TARGET_FORMATS = {
    "cityscapes": lambda root, split, class_set, size, native_labels=False: CityscapesSegmentation(
        root, split, class_set=class_set, size=size, native_labels=native_labels),
}
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
        chosen = torch.randperm(len(dataset), generator=generator)[:min(count, len(dataset))]
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


def domain_roots(data_cfg: dict, progress=None) -> tuple[Path, Path]:
    """Source and target roots; an empty root means the generated synthetic domain (made if missing)."""
    source_root, target_root = data_cfg["source"]["root"], data_cfg["target"]["root"]
    if not source_root or not target_root:
        generated = ensure_synthetic_domains(data_cfg["cache_dir"], data_cfg["height"], data_cfg["width"],
                                             data_cfg["synthetic"], progress=progress)
        source_root = source_root or generated[0]
        target_root = target_root or generated[1]
    return Path(source_root), Path(target_root)


def check_domains(data_cfg: dict, progress=None) -> DomainSplits:
    """Build the splits and read every image's and label's header, so a missing root, an empty split,
    a missing label or an unreadable file fails now, in one line naming it, not hours into a run."""
    domains = build_domains(data_cfg, progress)
    for name in ("source", "target_pool", "target_val"):
        dataset = getattr(domains, name)
        if len(dataset) == 0:
            raise DatasetError(f"the {name.replace('_', ' ')} split has no images")
        for image_path, label_path in dataset.files:
            if read_image_size(image_path) != read_image_size(label_path):
                raise DatasetError(f"label '{label_path}' and image '{image_path}' differ in size")
    return domains


def source_input_size(data_cfg: dict) -> tuple[int, int]:
    """(H, W) source images are resized to before augmentation: ``data.source.height/width``, 0 for
    one of them to keep each image's aspect ratio, both 0 for the target's ``data.height/width``."""
    height, width = data_cfg["source"]["height"], data_cfg["source"]["width"]
    if not height and not width:
        return data_cfg["height"], data_cfg["width"]
    return height, width


def build_domains(data_cfg: dict, progress=None) -> DomainSplits:
    """Build the splits named by a ``data`` config section (as a plain dict).

    Target images (pool and validation) are resized to ``data.height x data.width``, the grid of
    training and selection. Source images are resized to their own size (``source_input_size``),
    randomly rescaled, then randomly cropped to the target's size (padded with ignore where
    smaller), as AdaptSegNet and RIPU do, so both domains share one batch shape.
    """
    size = (data_cfg["height"], data_cfg["width"])
    source_size = source_input_size(data_cfg)
    class_set = data_cfg["class_set"]
    source_root, target_root = domain_roots(data_cfg, progress)
    aug = data_cfg["augment"]
    rescale = (aug["scale_min"], aug["scale_max"]) != (1.0, 1.0)
    augment = training_transform(size=None, scale=(aug["scale_min"], aug["scale_max"]),
                                 crop=size if rescale or source_size != size else None, hflip=aug["hflip"])
    source = SOURCE_FORMATS[data_cfg["source"]["format"]](source_root, class_set, source_size, augment)
    target_format = TARGET_FORMATS[data_cfg["target"]["format"]]
    pool = target_format(target_root, data_cfg["target"]["pool_split"], class_set, size)
    val = target_format(target_root, data_cfg["target"]["val_split"], class_set, size,
                        native_labels=data_cfg["eval_resolution"] == "native")
    if data_cfg["pool_images"]:
        pool = SeededSubset(pool, data_cfg["pool_images"], data_cfg["subset_seed"])
    if data_cfg["val_images"]:
        val = SeededSubset(val, data_cfg["val_images"], data_cfg["subset_seed"])
    return DomainSplits(source=source, target_pool=pool, target_val=val, classes=CLASS_SETS[class_set])


__all__ = ["CLASS_SETS", "DatasetError", "DomainSplits", "EVAL_RESOLUTIONS", "SeededSubset", "IGNORE_INDEX", "SOURCE_FORMATS",
           "SYNTHETIC_CLASSES", "TARGET_FORMATS", "build_domains", "source_input_size", "check_domains", "domain_roots"]
