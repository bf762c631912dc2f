"""What the Cityscapes, GTA5, SYNTHIA and folder loaders share: a sorted list of (image, label) files, a raw-id
-> class mapping, PNG readers that fail with one clear line, and the common item contract.

Each dataset module only knows its folder layout (and, for SYNTHIA, its label encoding); everything
that must behave identically across datasets (validation, decoding, mapping, resizing, the oracle's
``label(i)``) lives here once, so they cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .errors import DatasetError
from .labelmaps import LabelMapping
from .transforms import ResizeInput, check_size, image_to_model_tensor, to_model_tensors

# What PIL raises for files it cannot identify or decode: UnidentifiedImageError is an OSError,
# a truncated stream raises OSError on load, some malformed headers raise SyntaxError or ValueError.
PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# PIL modes whose pixel values are the stored integers themselves (no colour conversion).
# 'P' matters for GTA5: its label PNGs are palette images whose palette *indices* are the ids.
SINGLE_CHANNEL_ID_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def check_root(root: str | os.PathLike) -> Path:
    """The dataset root as a Path; ``DatasetError`` if it does not exist or is not a folder."""
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"dataset root '{path}' does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset root '{path}' is not a folder")
    return path


def check_folder(folder: Path, what: str) -> Path:
    """``DatasetError`` naming ``folder`` unless it is an existing folder."""
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{what} '{folder}' {problem}")
    return folder


def inside_root(root: Path, files: list[tuple[str, str]], dataset_name: str) -> list[tuple[str, str]]:
    """``files`` unchanged if every one resolves inside ``root``; ``DatasetError`` naming the first that does not.

    The root itself may be a symlink (it is resolved first); a symlink *inside* it that leads out of it
    (say a label linked to /etc/shadow, or a city folder linked elsewhere) is refused, so a dataset is
    exactly the tree the config names.
    """
    real_root = Path(root).resolve()
    for pair in files:
        for path in pair:
            if not Path(path).resolve().is_relative_to(real_root):
                raise DatasetError(
                    f"{dataset_name} file '{path}' resolves to '{Path(path).resolve()}', outside the "
                    f"dataset root '{root}' (symlinks inside a dataset root must stay inside it)"
                )
    return files


def list_flat_pairs(image_dir: Path, label_dir: Path, dataset_name: str) -> list[tuple[str, str]]:
    """Pairs ``image_dir/NAME.png`` with ``label_dir/NAME.png`` (GTA5 and SYNTHIA layouts), sorted.

    Every entry of ``image_dir`` must be a .png file with its label: a stray entry or an image
    without label is an error naming it, never skipped, so the dataset is exactly what is on disk.
    """
    check_folder(image_dir, f"{dataset_name} image folder")
    check_folder(label_dir, f"{dataset_name} label folder")
    pairs = []
    for image_path in sorted(image_dir.iterdir()):
        if not (image_path.is_file() and image_path.suffix.lower() == ".png"):
            raise DatasetError(
                f"unexpected entry '{image_path}' in {dataset_name} image folder (expected only .png images)"
            )
        label_path = label_dir / image_path.name
        if not label_path.is_file():
            raise DatasetError(f"image '{image_path}' has no label file '{label_path}'")
        pairs.append((str(image_path), str(label_path)))
    if not pairs:
        raise DatasetError(f"{dataset_name} image folder '{image_dir}' contains no .png images")
    return pairs


def read_rgb_image(path: str) -> tv_tensors.Image:
    """Decode an image file as uint8 RGB (3, H, W); ``DatasetError`` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # convert() loads, so truncated data fails here, inside the try
    except PIL_READ_ERRORS as error:
        raise DatasetError(f"cannot read image '{path}': {error}") from error
    return tv_tensors.Image(F.pil_to_tensor(rgb))


def read_image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image from its header only (no pixel decoding): what ``label(i)`` checks against."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except PIL_READ_ERRORS as error:
        raise DatasetError(f"cannot read image '{path}': {error}") from error


def read_single_channel_ids(path: str) -> np.ndarray:
    """Raw ids (H, W) of a single-channel label PNG (8-bit grey, palette indices or 16-bit grey)."""
    try:
        with Image.open(path) as img:
            img.load()  # decode inside the try: a truncated stream fails here, not in numpy
            mode = img.mode
            ids = np.array(img) if mode in SINGLE_CHANNEL_ID_MODES else None
    except PIL_READ_ERRORS as error:
        raise DatasetError(f"cannot read label '{path}': {error}") from error
    if ids is None:
        raise DatasetError(
            f"label '{path}' has PIL mode {mode}; expected a single-channel id image "
            f"(8-bit grey, palette or 16-bit grey)"
        )
    return ids


class PairedSegmentationDataset(Dataset):
    """Images and label-id PNGs listed in ``files``, mapped to a class set.

    Item contract (the same for every dataset): ``ds[i]`` is ``(image, label)`` with image float32
    (3, H, W) ImageNet-normalized and label int64 (H, W) of class indices, ``IGNORE_INDEX`` = ignore;
    ``ds.label(i)`` is the deterministic label alone (after ``size``, never augmented), read without
    decoding the image. ``size`` = (H, W) resizes both (image bilinear with antialias, label
    nearest-exact; one of H, W may be 0 to keep each image's aspect ratio); ``augment`` (e.g.
    ``training_transform``) is applied after that.

    ``ds.native_label(i)`` is the label at the file's own size: what the oracle reveals (at the
    pixel ``coordinates.label_coordinates`` maps a grid pixel to) and what native-resolution
    evaluation scores. With ``native_labels=True`` items carry it instead of the resized label
    (the image is still resized): the papers' evaluation input.
    """

    def __init__(
        self,
        files: list[tuple[str, str]],
        mapping: LabelMapping,
        size: tuple[int, int] | None = None,
        augment: Callable | None = None,
        native_labels: bool = False,
    ) -> None:
        self.files = list(files)
        self.mapping = mapping
        self.classes: tuple[str, ...] = mapping.classes
        self.size = check_size(size, allow_aspect=True)
        self.augment = augment
        self.native_labels = native_labels
        self._resize = ResizeInput(self.size) if self.size is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def read_label_ids(self, path: str) -> np.ndarray:
        """Raw ids (H, W) of one label file; a dataset with another encoding overrides this."""
        return read_single_channel_ids(path)

    def _class_mask(self, index: int, image_size: tuple[int, int]) -> tv_tensors.Mask:
        image_path, label_path = self.files[index]
        raw_ids = self.read_label_ids(label_path)
        if tuple(raw_ids.shape) != tuple(image_size):
            raise DatasetError(
                f"label '{label_path}' is {raw_ids.shape[1]}x{raw_ids.shape[0]} but image "
                f"'{image_path}' is {image_size[1]}x{image_size[0]} (width x height)"
            )
        return tv_tensors.Mask(torch.from_numpy(self.mapping.apply(raw_ids, label_path)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_rgb_image(self.files[index][0])
        mask = self._class_mask(index, tuple(image.shape[-2:]))
        if self.native_labels:
            image = self._resize(image) if self._resize is not None else image
            return image_to_model_tensor(image), mask.as_subclass(torch.Tensor).to(torch.int64)
        if self._resize is not None:
            image, mask = self._resize(image, mask)
        if self.augment is not None:
            image, mask = self.augment(image, mask)
        return to_model_tensors(image, mask)

    def native_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index``'s original label, from the image header (no decoding)."""
        return read_image_size(self.files[index][0])

    def grid_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` after ``size``: the grid its selection and stored labels use."""
        native = self.native_size(index)
        return self._resize.output_size(*native) if self._resize is not None else native

    def native_label(self, index: int) -> torch.Tensor:
        """The ground truth at the label file's own size: int64 (H, W), ``IGNORE_INDEX`` = ignore."""
        mask = self._class_mask(index, read_image_size(self.files[index][0]))
        return mask.as_subclass(torch.Tensor).to(torch.int64)

    def label(self, index: int) -> torch.Tensor:
        """The deterministic ground truth of item ``index`` on its grid: int64 (H, W), ``IGNORE_INDEX`` = ignore."""
        mask = self._class_mask(index, read_image_size(self.files[index][0]))
        if self._resize is not None:
            mask = self._resize(mask)
        return mask.as_subclass(torch.Tensor).to(torch.int64)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, class_set='{self.mapping.class_set}', "
            f"size={self.size}, augment={self.augment is not None})"
        )
