"""GTA5 ("Playing for Data", Richter et al., ECCV 2016): the game-rendered source domain.

Layout under ``root``::

    images/NAME.png
    labels/NAME.png      (same file name; Cityscapes label ids 0..33)

The label PNGs are palette images whose palette *indices* are the Cityscapes ids (the palette only
makes them look like Cityscapes' colour labels), so they are read as indices, never converted to
grey or RGB. An image whose size differs from its label's is refused at read time with a message
naming both files, never silently resized (which would misalign every pixel).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .dataset_yaml import ClassSet
from .labelmaps import cityscapes_mapping
from .segmentation_pairs import PairedSegmentationDataset, check_root, inside_root, list_flat_pairs


class GTA5Segmentation(PairedSegmentationDataset):
    """GTA5 with Cityscapes label ids mapped to ``class_set`` (default: the 19 Cityscapes classes).

    ``ds[i]`` -> (float32 (3, H, W) normalized image, int64 (H, W) label, 255 = ignore);
    ``ds.label(i)`` -> the deterministic label alone.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        class_set: str | ClassSet = "cityscapes19",
        size: tuple[int, int] | None = None,
        augment: Callable | None = None,
    ) -> None:
        mapping = cityscapes_mapping(class_set)
        self.root = check_root(root)
        files = inside_root(self.root, list_flat_pairs(self.root / "images", self.root / "labels", "GTA5"), "GTA5")
        super().__init__(files, mapping, size=size, augment=augment)
