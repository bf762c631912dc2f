"""Cityscapes-sized generated content for the scale benchmark and the GPU check (plain PyTorch).

Nothing here imports Ray or MLflow: the GPU check runs it on a machine that has neither.

- ``GeneratedPool``: a target pool of street-like layouts at any size (2,975 images of 1024 x 2048
  and 19 classes stand in for Cityscapes train), each image and label map computed from its id in
  a few tens of milliseconds, so no file is written: 2,975 PNGs of that size would be gigabytes.
- ``CheapSegmenter``: a network that costs little but ends as a real segmentation network does
  (class logits at 1/8 resolution, upsampled bilinearly to the image, one map per head), with two
  heads that disagree near class boundaries on a few percent of the pixels, as a trained LabOR
  selector does. Ranking with it costs what selection costs at full size, not what a backbone costs.
- ``time_selectors``: each selector's time per image on given probability maps, on their device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from experiment_config.schema import SelectionConfig
from pixel_selectors.apply import select_image
from pixel_selectors.budget import share_cap
from pixel_selectors.rules import POINTS, RULES, SELECTOR_NETWORK

CITYSCAPES_TRAIN_IMAGES = 2975
CITYSCAPES_SIZE = (1024, 2048)
CITYSCAPES_CLASSES = 19
# LabOR's SPL labels about 2.2% of the pixels; PPL about 40 points per image.
SPL_FRACTION = 0.022
PPL_POINTS = 40
# RIPU's region window (BIT-DA/RIPU configs): 3 x 3; its point window is pixel_selectors.ripu_point_window.
RIPU_REGION_WINDOW = 3

# Class shares of the generated layouts: a few large classes (road, building, vegetation, sky) and
# many small ones, roughly as in Cityscapes.
_CLASS_WEIGHTS = [30, 5, 20, 1, 1, 1, 0.5, 0.5, 12, 2, 5, 1.5, 0.3, 6, 0.4, 0.3, 0.2, 0.2, 0.5]
_CELL = 64  # the layout's cell side in pixels at 1024 x 2048


def _palette(num_classes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.rand(num_classes, 3, generator=generator) * 2 - 1  # (K, 3), normalized-image range


class GeneratedPool:
    """``size`` generated street-like images with labels, each a pure function of its id.

    ``pool[i]`` -> (float32 (3, H, W) image, int64 (H, W) label); ``pool.label(i)`` -> the label alone
    (what the oracle reads). A layout is a coarse grid of classes (cells of 1/16 of the height):
    horizontal bands of sky, buildings and road with cells of the other classes strewn over them;
    the image is each class's colour plus smooth noise. With ``distinct_scenes`` the pool repeats
    that many layouts (image i shows scene i mod distinct_scenes): what the scale benchmark's actors
    exploit to compute each scene's query once.
    """

    def __init__(
        self,
        size: int,
        height: int,
        width: int,
        num_classes: int = CITYSCAPES_CLASSES,
        seed: int = 0,
        distinct_scenes: int = 0,
    ):
        self.size, self.height, self.width, self.num_classes, self.seed = size, height, width, num_classes, seed
        self.distinct_scenes = distinct_scenes
        self.palette = _palette(num_classes)
        weights = torch.tensor((_CLASS_WEIGHTS * math.ceil(num_classes / len(_CLASS_WEIGHTS)))[:num_classes])
        self.class_weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> int:
        """Which layout image ``index`` shows."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        return index % self.distinct_scenes if self.distinct_scenes else index

    def _layout(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.scene(index))
        rows = max(2, round(16 * self.height / 1024))
        cols = max(2, round(rows * self.width / self.height))
        grid = torch.multinomial(self.class_weights, rows * cols, replacement=True, generator=generator)
        bands = (torch.arange(rows) * 3 // rows)[:, None].expand(rows, cols)  # sky, buildings, road
        big = torch.tensor([min(10, self.num_classes - 1), 2 % self.num_classes, 0])[bands]
        strewn = torch.rand(rows, cols, generator=generator) < 0.35
        grid = torch.where(strewn, grid.reshape(rows, cols), big)
        row_of = torch.arange(self.height) * rows // self.height
        col_of = torch.arange(self.width) * cols // self.width
        return grid[row_of[:, None], col_of[None, :]]

    def label(self, index: int) -> torch.Tensor:
        return self._layout(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = self._layout(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.scene(index) + 7)
        noise = torch.randn(1, 3, max(1, self.height // 32), max(1, self.width // 32), generator=generator) * 0.15
        noise = F.interpolate(noise, size=(self.height, self.width), mode="bilinear", align_corners=False)[0]
        return self.palette.T[:, label] + noise, label


class CheapSegmenter(nn.Module):
    """Two (or ``num_heads``) class-logit maps per image for almost no compute.

    Each head scores every class by the distance of the image's colour (averaged over 8 x 8 blocks)
    to the class colour, at 1/8 resolution, and upsamples the logits bilinearly to the image size,
    as DeepLab's output stage does. The second head sees slightly shifted class colours, so the
    heads disagree where two classes are nearly as close: along boundaries, a few percent of the
    pixels (LabOR's inconsistency mask of a trained selector).
    """

    def __init__(
        self,
        num_classes: int = CITYSCAPES_CLASSES,
        num_heads: int = 2,
        sharpness: float = 6.0,
        head_shift: float = 0.08,
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(99)
        centres = [_palette(num_classes)]
        for _ in range(1, num_heads):
            centres.append(centres[0] + head_shift * torch.randn(num_classes, 3, generator=generator))
        self.register_buffer("centres", torch.stack(centres))  # (heads, K, 3)
        self.sharpness = sharpness

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        coarse = F.avg_pool2d(images.float(), kernel_size=8, stride=8, ceil_mode=True)  # (N, 3, h, w)
        outputs = []
        for centres in self.centres:
            distance = ((coarse[:, None] - centres[None, :, :, None, None]) ** 2).sum(dim=2)  # (N, K, h, w)
            outputs.append(
                F.interpolate(-self.sharpness * distance, size=images.shape[-2:], mode="bilinear", align_corners=False)
            )
        return tuple(outputs)


@dataclass(frozen=True)
class SelectorTiming:
    name: str
    seconds_per_image: float
    query_pixels: float  # mean pixels (points or region pixels) of the queries


def selector_settings(name: str, height: int, width: int) -> dict:
    """How a ranking actor asks each selector to select in one image of a Cityscapes-sized pool,
    with LabOR's budgets and RIPU's windows: 40 points; for regions, 2.2% of the pool's pixels
    spread by share, so an image sends what the merge could take from it (LabOR SPL: its whole
    inconsistency mask; squares: the first ones covering ``share_cap`` of its free pixels, 1.5 x 2.2%)."""
    params = RULES[name].params(SelectionConfig(point_window=0, region_size=RIPU_REGION_WINDOW), width)
    if RULES[name].kind == POINTS:
        return {"num_points": PPL_POINTS, "budget_pixels": 0, "params": params}
    pool_pixels = CITYSCAPES_TRAIN_IMAGES * height * width
    budget = int(SPL_FRACTION * pool_pixels)
    return {"budget_pixels": budget, "max_share": share_cap(budget, pool_pixels), "params": params}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_selectors(
    maps: list[tuple[torch.Tensor, torch.Tensor]], names: list[str] | None = None, repeats: int = 1, progress=None
) -> list[SelectorTiming]:
    """Seconds per image of each selector on ``maps`` (per image: the two heads' (K, H, W)
    probabilities, on the device the selection runs on). Selectors that read the segmenter G get the
    first map alone. A first call per selector warms the device up and is not counted."""
    names = names or sorted(RULES)
    device = maps[0][0].device
    height, width = maps[0][0].shape[-2:]
    out = []
    for name in names:
        settings = selector_settings(name, height, width)

        def run(pair, seed):
            probs = list(pair) if RULES[name].reads == SELECTOR_NETWORK else [pair[0]]
            return select_image(name, probs, seed=seed, **settings)

        run(maps[0], 0)
        _synchronize(device)
        started, pixels = time.perf_counter(), 0
        for repeat in range(repeats):
            for n, pair in enumerate(maps):
                query = run(pair, n + 1000 * repeat)
                pixels += len(query) if RULES[name].kind == POINTS else query.num_pixels
        _synchronize(device)
        seconds = (time.perf_counter() - started) / (repeats * len(maps))
        out.append(SelectorTiming(name, seconds, pixels / (repeats * len(maps))))
        if progress is not None:
            progress(f"{name}: {1000 * seconds:.1f} ms per image")
    return out
