"""Joint image + mask transforms for segmentation, on ``torchvision.transforms.v2``.

Images travel as ``tv_tensors.Image`` (uint8, (3, H, W)) and labels as ``tv_tensors.Mask`` (uint8
class indices, (H, W)) through one v2 pipeline call, so every random parameter (scale factor, crop
window, flip) is drawn once and applied to both, and v2 resizes masks with nearest neighbour by
itself: a label never gets a blended, meaningless class value.

The pipeline of a loader is: ``deterministic_transform(size)`` (what evaluation and the oracle see),
then optionally an ``augment`` transform (``training_transform``) for training, then
``to_model_tensors`` (float32 normalized image, int64 mask). Random transforms draw from torch's
global RNG, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .labelmaps import IGNORE_INDEX

# ImageNet statistics: the backbones this project fine-tunes were pretrained with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def check_size(size: Sequence[int] | None, name: str = "size", allow_aspect: bool = False) -> tuple[int, int] | None:
    """``size`` as a (height, width) tuple of positive ints, or None; anything else is a ValueError.

    ``allow_aspect``: one of the two may be 0, meaning "follow each image's aspect ratio".
    """
    if size is None:
        return None
    low = 0 if allow_aspect else 1
    if (
        isinstance(size, (str, bytes))
        or not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in size)
        or not any(size)
    ):
        extra = " (one may be 0: keep the aspect ratio)" if allow_aspect else ""
        raise ValueError(f"{name} must be (height, width) with two positive ints{extra}, got {size!r}")
    return int(size[0]), int(size[1])


def _channel_stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1)
    mean = torch.tensor(MEAN, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(STD, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1], (3, H, W) or (N, 3, H, W) -> ImageNet-normalized, same shape."""
    mean, std = _channel_stats(image)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize``: back to [0, 1] (up to rounding), e.g. to look at a model input."""
    mean, std = _channel_stats(image)
    return image * std + mean


class RandomScale:
    """Resize image and mask together by one factor drawn uniformly from ``scale_range``.

    The factor is relative to the input's own size (GTA5 images do not all have the same size, so a
    fixed target size would distort some of them). The image is resized bilinearly with antialias,
    the mask with nearest neighbour (v2 picks nearest for ``tv_tensors.Mask``).
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 1.5)) -> None:
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.scale_range = (low, high)

    def __call__(self, *inputs):
        height, width = F.get_size(inputs[0])
        low, high = self.scale_range
        factor = low + (high - low) * float(torch.rand(()))
        new_size = [max(1, round(height * factor)), max(1, round(width * factor))]
        outputs = tuple(F.resize(x, new_size, antialias=True) for x in inputs)
        return outputs if len(outputs) > 1 else outputs[0]

    def __repr__(self) -> str:
        return f"RandomScale(scale_range={self.scale_range})"


class ResizeInput:
    """Resize an image (bilinear, antialias) and its mask (nearest-exact) to ``size`` = (H, W).

    One of H, W may be 0: it then follows the input's aspect ratio (GTA5's 1914x1052 at width 1280
    stays 1.82:1). Masks use 'nearest-exact', each output pixel the label under its centre: the
    mapping of ``coordinates.label_coordinates``, so a grid-size label agrees pixel for pixel with
    what the oracle reveals from the original label.
    """

    def __init__(self, size: tuple[int, int]):
        self.size = check_size(size, allow_aspect=True)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        out_h, out_w = self.size
        if out_h == 0:
            out_h = max(1, round(height * out_w / width))
        elif out_w == 0:
            out_w = max(1, round(width * out_h / height))
        return out_h, out_w

    def __call__(self, *inputs):
        size = list(self.output_size(*F.get_size(inputs[0])))
        outputs = tuple(
            F.resize(x, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
            if isinstance(x, tv_tensors.Mask)
            else F.resize(x, size, antialias=True)
            for x in inputs
        )
        return outputs if len(outputs) > 1 else outputs[0]

    def __repr__(self) -> str:
        return f"ResizeInput(size={self.size})"


def deterministic_transform(size: tuple[int, int] | None) -> v2.Transform | ResizeInput:
    """Resize to ``size`` = (H, W) (image bilinear with antialias, mask nearest-exact); identity if None."""
    size = check_size(size)
    if size is None:
        return v2.Identity()
    return ResizeInput(size)


def training_transform(
    size: tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.5, 1.5),
    crop: tuple[int, int] | None = None,
    hflip: bool = True,
) -> v2.Compose:
    """Random augmentation applied identically to an (image, mask) pair.

    Steps: resize to ``size`` if given (a no-op when the loader already resized to the same size),
    random scale by a factor in ``scale``, random ``crop`` = (H, W) window (inputs smaller than the
    window are padded: image with black, mask with ``IGNORE_INDEX`` so padding never counts as a
    class), horizontal flip with probability 0.5 if ``hflip``.
    """
    crop = check_size(crop, "crop")
    steps: list = []
    if size is not None:
        steps.append(deterministic_transform(size))
    steps.append(RandomScale(scale))
    if crop is not None:
        steps.append(
            v2.RandomCrop(list(crop), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
        )
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps)


_TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True)
_NORMALIZE = v2.Normalize(list(MEAN), list(STD))


def to_model_tensors(image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 Image (3, H, W) + uint8 Mask (H, W) -> (float32 normalized (3, H, W), int64 (H, W)).

    Plain tensors come out: tv_tensor subclasses would otherwise leak into collate and the model.
    """
    image, mask = _TO_FLOAT(image, mask)
    image = _NORMALIZE(image)
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def image_to_model_tensor(image: tv_tensors.Image) -> torch.Tensor:
    """uint8 Image (3, H, W) -> float32 normalized (3, H, W), a plain tensor (the image half of ``to_model_tensors``)."""
    return _NORMALIZE(_TO_FLOAT(image)).as_subclass(torch.Tensor)
