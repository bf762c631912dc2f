"""Cityscapes (fine annotations): the real target domain of GTA5/SYNTHIA -> Cityscapes adaptation.

Layout under ``root`` (as downloaded: leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip)::

    leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

File discovery and image/label pairing are torchvision's ``datasets.Cityscapes`` (mode="fine",
target_type="semantic"); this module adds what that class leaves out: one-line errors for a bad
layout, a deterministic order (torchvision lists folders in ``os.listdir`` order, which differs
between machines), a check that every image has its label, and the id -> class-set mapping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets import Cityscapes

from .dataset_yaml import ClassSet
from .errors import DatasetError
from .labelmaps import cityscapes_mapping
from .segmentation_pairs import PairedSegmentationDataset, check_folder, check_root, inside_root

CITYSCAPES_SPLITS = ("train", "val", "test")
_IMAGE_SUFFIX = "_leftImg8bit.png"


def list_cityscapes_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    """Sorted (image, labelIds) paths of one fine split; ``DatasetError`` for anything malformed."""
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(f"unknown Cityscapes split '{split}'; choose one of: {', '.join(CITYSCAPES_SPLITS)}")
    image_dir = check_folder(root / "leftImg8bit" / split, "Cityscapes image folder")
    check_folder(root / "gtFine" / split, "Cityscapes label folder")
    # torchvision would os.listdir() a stray file as if it were a city and fail with a bare OSError.
    for entry in sorted(image_dir.iterdir()):
        if not entry.is_dir():
            raise DatasetError(f"unexpected file '{entry}' in Cityscapes image folder (expected only city folders)")

    try:
        listing = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    except (OSError, RuntimeError) as error:
        raise DatasetError(f"cannot list Cityscapes split '{split}' under '{root}': {error}") from error

    pairs = []
    for image_path, targets in zip(listing.images, listing.targets):
        if not image_path.endswith(_IMAGE_SUFFIX):
            raise DatasetError(
                f"unexpected entry '{image_path}' in Cityscapes image folder (expected only *{_IMAGE_SUFFIX} files)"
            )
        label_path = targets[0]
        if not os.path.isfile(image_path):
            raise DatasetError(f"unexpected entry '{image_path}' in Cityscapes image folder (not a file)")
        if not os.path.isfile(label_path):
            raise DatasetError(f"image '{image_path}' has no label file '{label_path}'")
        pairs.append((image_path, label_path))
    if not pairs:
        raise DatasetError(f"Cityscapes image folder '{image_dir}' contains no *{_IMAGE_SUFFIX} images")
    return sorted(pairs)


class CityscapesSegmentation(PairedSegmentationDataset):
    """Cityscapes fine split ``split`` with labelIds mapped to ``class_set`` (see ``labelmaps``).

    ``ds[i]`` -> (float32 (3, H, W) normalized image, int64 (H, W) label, 255 = ignore);
    ``ds.label(i)`` -> the deterministic label alone, for the oracle. The test split's labels are
    all void in the public release, so its items are all ignore.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        class_set: str | ClassSet = "cityscapes19",
        size: tuple[int, int] | None = None,
        augment: Callable | None = None,
        native_labels: bool = False,
    ) -> None:
        mapping = cityscapes_mapping(class_set)
        self.root = check_root(root)
        self.split = split
        files = inside_root(self.root, list_cityscapes_pairs(self.root, split), "Cityscapes")
        super().__init__(files, mapping, size=size, augment=augment, native_labels=native_labels)
