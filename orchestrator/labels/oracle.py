"""The oracle: reveals the ground truth of the target pool exactly at the queried pixels. ``Oracle`` is the
simulated annotator (the dataset's own labels); ``PendingOracle`` stands in while people annotate."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from orchestrator.labels.store import LabeledPixels
from trainers.data.coordinates import label_coordinates


class Oracle:
    """Reveals the ground truth of a dataset, exactly at the queried pixels and nowhere else.

    ``withheld_classes`` (class ids) are never revealed: a queried pixel of such a class is recorded
    with label 255 (ignored by training), so it is paid for, never queried again, and teaches
    nothing -- the semi-supervised setting where some classes have no target labels at all.
    """

    def __init__(self, dataset, withheld_classes: Iterable[int] = ()):
        self.dataset = dataset
        self.withheld = np.asarray(sorted({int(c) for c in withheld_classes}), dtype=np.uint8)

    def reveal(
        self, image_id: int, ys: np.ndarray, xs: np.ndarray, clicks: float | None = None, regions: bool = False
    ) -> LabeledPixels:
        """The truth at grid pixels (ys, xs) of one image, read from its original label at the pixels
        ``label_coordinates`` maps them to; ``clicks`` defaults to one per pixel (points)."""
        truth, grid = original_truth(self.dataset, image_id)
        height, width = grid
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        if len(ys) and (ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width):
            raise ValueError(f"query outside image {image_id} ({height}x{width})")
        label_ys, label_xs = label_coordinates(ys, xs, grid, tuple(truth.shape))
        labels = truth[label_ys, label_xs].numpy().astype(np.uint8)
        if len(self.withheld):
            labels[np.isin(labels, self.withheld)] = 255
        return LabeledPixels(
            image_id=int(image_id),
            ys=ys.astype(np.int32),
            xs=xs.astype(np.int32),
            labels=labels,
            height=int(height),
            width=int(width),
            clicks=float(len(ys) if clicks is None else clicks),
            regions=regions,
            label_height=int(truth.shape[0]),
            label_width=int(truth.shape[1]),
        )


def original_truth(dataset, image_id: int):
    """(the original label of one image, its selection-grid size). A dataset without ``native_label``
    (a label already at grid size) is its own original."""
    if hasattr(dataset, "native_label"):
        return dataset.native_label(image_id), tuple(dataset.grid_size(image_id))
    truth = dataset.label(image_id)
    return truth, tuple(truth.shape)


def grid_and_label_size(dataset, image_id: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(selection-grid size, original label size) of one image, from file headers where the dataset can."""
    if hasattr(dataset, "native_size"):
        return tuple(dataset.grid_size(image_id)), tuple(dataset.native_size(image_id))
    shape = tuple(dataset.label(image_id).shape)
    return shape, shape


class PendingOracle:
    """Stands in for the oracle when people annotate: the queried pixels, labels still unknown (255)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def reveal(self, image_id, ys, xs, clicks=None, regions=False) -> LabeledPixels:
        (height, width), (label_height, label_width) = grid_and_label_size(self.dataset, image_id)
        ys, xs = np.asarray(ys, np.int32), np.asarray(xs, np.int32)
        return LabeledPixels(
            int(image_id),
            ys,
            xs,
            np.full(len(ys), 255, np.uint8),
            int(height),
            int(width),
            float(len(ys) if clicks is None else clicks),
            regions,
            int(label_height),
            int(label_width),
        )
