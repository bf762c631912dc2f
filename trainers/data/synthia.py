"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016): the other game-like source domain.

Layout under ``root``::

    RGB/NAME.png
    GT/LABELS/NAME.png   (same file name)

The label PNGs are 16 bits per channel with several channels: the class id (0..22, see
``datasets/synthia.yaml``) is in the first channel, the instance id in the second. PIL cannot
read them: it opens 16-bit RGB as 8-bit RGB keeping only the high byte of each value, which turns
every class id below 256 into 0 (checked with Pillow 13). ``torchvision.io.decode_png`` with
``ImageReadMode.UNCHANGED`` keeps all 16 bits, so multi-channel 16-bit labels go through it; anything
else (single-channel 8- or 16-bit ids, as written by conversion scripts) is read with PIL.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .dataset_yaml import ClassSet
from .errors import DatasetError
from .labelmaps import synthia_mapping
from .segmentation_pairs import (
    PIL_READ_ERRORS,
    SINGLE_CHANNEL_ID_MODES,
    PairedSegmentationDataset,
    check_root,
    inside_root,
    list_flat_pairs,
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types with more than one channel: grey+alpha, RGB, RGBA (palette is 3 and single-channel).
_MULTI_CHANNEL_COLOR_TYPES = (4, 2, 6)


def _png_depth_and_color_type(path: str) -> tuple[int, int]:
    """Bit depth and colour type from the IHDR chunk, which a valid PNG has right after its signature."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as error:
        raise DatasetError(f"cannot read label '{path}': {error}") from error
    # signature (8) + chunk length (4) + b"IHDR" (4) + width (4) + height (4) + depth (1) + colour type (1)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DatasetError(f"cannot read label '{path}': not a PNG file")
    return head[24], head[25]


def _decode_png_16bit_first_channel(path: str) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which is not a
            # dependency here; the decoder still works and is the only installed one that keeps 16 bits.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_png(read_file(path), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, OSError, ValueError) as error:
        raise DatasetError(f"cannot read label '{path}': {error}") from error
    return decoded[0].to(torch.int32).numpy()


def read_synthia_label_ids(path: str) -> np.ndarray:
    """SYNTHIA class ids (H, W) of a label PNG: first channel of a multi-channel PNG (8 or 16 bits),
    or the only channel of a single-channel one."""
    depth, color_type = _png_depth_and_color_type(path)
    if depth == 16 and color_type in _MULTI_CHANNEL_COLOR_TYPES:
        return _decode_png_16bit_first_channel(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            pixels = np.array(img)
    except PIL_READ_ERRORS as error:
        raise DatasetError(f"cannot read label '{path}': {error}") from error
    if mode in SINGLE_CHANNEL_ID_MODES:
        return pixels
    if pixels.ndim == 3:  # 8-bit RGB / RGBA / grey+alpha: same convention, id in the first channel
        return pixels[..., 0]
    raise DatasetError(f"label '{path}' has PIL mode {mode}; expected class ids in the first channel")


class SynthiaSegmentation(PairedSegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES with its class ids mapped to ``class_set`` (default: the 16 classes).

    ``ds[i]`` -> (float32 (3, H, W) normalized image, int64 (H, W) label, 255 = ignore);
    ``ds.label(i)`` -> the deterministic label alone. Void, parking-slot, road-work and lane-marking
    are ignored, as in the usual SYNTHIA -> Cityscapes protocol.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        class_set: str | ClassSet = "synthia16",
        size: tuple[int, int] | None = None,
        augment: Callable | None = None,
    ) -> None:
        mapping = synthia_mapping(class_set)
        self.root = check_root(root)
        files = inside_root(
            self.root, list_flat_pairs(self.root / "RGB", self.root / "GT" / "LABELS", "SYNTHIA"), "SYNTHIA"
        )
        super().__init__(files, mapping, size=size, augment=augment)

    def read_label_ids(self, path: str) -> np.ndarray:
        return read_synthia_label_ids(path)
