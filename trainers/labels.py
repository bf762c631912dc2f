"""What ``trainers/`` reads of the labeled target pixels: the ``TargetLabels`` protocol.

The label store lives above this package (``orchestrator.labels.store``); its reader
(``LabelReader``) implements this protocol and is what a Train worker or a ranking actor receives:
a reference (a folder and round numbers) that reads the rows of the images asked for, in the
process that asks. ``InMemoryLabels`` is the implementation that holds its pixels: tests,
benchmarks and the label-free warm-up (``NO_LABELS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np

# (ys, xs, classes) of one image: int32 coordinates on the selection grid (the image as training
# sees it) and the uint8 class of each; classes are None when they were not asked for.
LabeledArrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@runtime_checkable
class TargetLabels(Protocol):
    """The revealed pixels of the target pool, read image by image.

    Implemented by ``orchestrator.labels.store.LabelReader`` (by reference, reads the store) and
    ``InMemoryLabels``. Read by ``trainers.step.SparseTargetDataset`` (each image's labels when the
    image is loaded) and by the ranking actors (the pixels a selection rule must not return).
    """

    def read(self, image_ids: Iterable[int], with_labels: bool = True) -> dict[int, LabeledArrays]:
        """image id -> (ys, xs, classes) for those of ``image_ids`` that have labeled pixels (the
        others are left out); ``with_labels=False``: classes are None (what a ranking actor needs)."""
        ...


class InMemoryLabels(TargetLabels):
    """``TargetLabels`` held in memory: image id -> (ys, xs, classes).

    For tests, benchmarks and jobs without labels (``NO_LABELS``); a trial's labels are read from
    its label store instead (``LabelReader``), so they never travel by value.
    """

    def __init__(self, pixels: Mapping[int, tuple] | None = None):
        self._pixels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
            int(image_id): (np.asarray(ys, np.int32), np.asarray(xs, np.int32), np.asarray(classes, np.uint8))
            for image_id, (ys, xs, classes) in (pixels or {}).items()
        }

    def __repr__(self) -> str:
        return f"InMemoryLabels({len(self._pixels)} images)"

    def read(self, image_ids: Iterable[int], with_labels: bool = True) -> dict[int, LabeledArrays]:
        out = {}
        for image_id in image_ids:
            found = self._pixels.get(int(image_id))
            if found is not None:
                ys, xs, classes = found
                out[int(image_id)] = (ys, xs, classes if with_labels else None)
        return out


# No labeled pixel at all: the warm-up's labels (it adapts before anything is bought).
NO_LABELS = InMemoryLabels()


def labeled_coordinates(labels: TargetLabels, image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (ys, xs) already labeled, for those of ``image_ids`` that have any: what a selection
    rule must not return."""
    return {i: (ys, xs) for i, (ys, xs, _) in labels.read(image_ids, with_labels=False).items()}
