"""Pieces of a mask that share a class: 8-connected components in which neighbours must also have the
same class label (torch, numpy and scipy; no I/O).

LabOR's point-based labeling takes one point per (predicted class, connected piece of the
inconsistency mask): two touching pixels of M predicted as different classes belong to different
pieces. ``class_pieces`` finds those pieces where its input lives: on the CPU with
``scipy.ndimage.label`` (one call per class present), elsewhere (a GPU) by label propagation as
tensor operations. Both number the pieces the same way and list their pixels in the same order, so
a selection does not depend on the device that computed it (``tests/test_ppl.py`` checks the
propagation path against scipy on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .device_loops import run_passes
from .regions import PROPAGATION_PASSES_PER_CHECK, hook_and_jump

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# The eight neighbours of a pixel, as (row, column) offsets.
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def class_pieces(mask: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pieces of a bool (H, W) ``mask`` whose pixels share their (H, W) integer ``classes``
    label and touch 8-connected, in CSR form (indices, offsets) on the mask's device.

    Pieces are numbered in raster order of their first pixel; each piece's pixels are in ascending
    flat index. Piece j is ``indices[offsets[j]:offsets[j + 1]]``.
    """
    if tuple(mask.shape) != tuple(classes.shape) or mask.dim() != 2:
        raise ValueError(
            f"mask and classes must be the same (H, W), got {tuple(mask.shape)} and {tuple(classes.shape)}"
        )
    if mask.device.type == "cpu":
        indices, offsets = pieces_by_scipy(mask.numpy(), classes.numpy())
        return torch.from_numpy(indices), torch.from_numpy(offsets)
    return pieces_by_propagation(mask, classes)


def pieces_by_scipy(mask: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``class_pieces`` with ``scipy.ndimage.label``, once per class present in the mask (numpy)."""
    height, width = mask.shape
    pixels = np.flatnonzero(mask)  # ascending flat index
    pixel_class = classes.reshape(-1)[pixels]
    masked_classes = np.where(mask, classes, -1)
    piece = np.empty(len(pixels), dtype=np.int64)
    count = 0
    for k in np.unique(pixel_class):
        piece_labels, found = ndimage.label(masked_classes == k, structure=EIGHT_CONNECTED)
        of_class = pixel_class == k
        piece[of_class] = piece_labels.reshape(-1)[pixels[of_class]] - 1 + count
        count += found
    # Renumber by first pixel (the smallest flat index of each piece).
    first = np.full(count, height * width, dtype=np.int64)
    np.minimum.at(first, piece, pixels)
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(count)
    piece = rank[piece]
    order = np.argsort(piece, kind="stable")
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(piece, minlength=count), out=offsets[1:])
    return pixels[order].astype(np.int64), offsets


def _piece_pass(height: int, width: int):
    """One pass of ``pieces_by_propagation`` over (labels, inside, index, same, changed), in place;
    ``same`` is (8, H, W): whether each neighbour (``NEIGHBOURS``) is in the mask with the pixel's class.
    The smallest label among the pixel and its allowed neighbours, then ``regions.hook_and_jump``."""
    count = height * width

    def named(values: torch.Tensor) -> torch.Tensor:  # the pixel each label names (non-mask: any pixel)
        return values.clamp_max(count - 1)

    def one_pass(labels, inside, index, same, changed):
        padded = F.pad(labels.reshape(1, height, width), (1, 1, 1, 1), value=count)[0]
        smallest = labels.reshape(height, width)
        for (dy, dx), allowed in zip(NEIGHBOURS, same):
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            smallest = torch.where(allowed, torch.minimum(smallest, neighbour), smallest)
        smallest = smallest.reshape(-1)
        hook_and_jump(labels, inside, index, smallest, named, changed)

    return one_pass


def pieces_by_propagation(mask: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``class_pieces`` as tensor operations, on any device (what a GPU runs).

    The scheme of ``regions.components_by_propagation`` with a class test: every mask pixel starts
    labelled with its own flat index; each pass, every pixel takes the smallest label among itself
    and its 8 neighbours that are in the mask and have its class, hands that label to the pixel its
    own label names (a scatter-min, so a whole tree moves at once), and jumps twice to the label of
    the pixel its label names. Labels only decrease and never leave a piece, so the passes end with
    every pixel labelled by its piece's smallest flat index, its first pixel in raster order. A
    minimum does not depend on the order a scatter applies it in: the result is deterministic.
    Labels are int64, exact at any image size.
    """
    height, width = mask.shape
    count = height * width
    device = mask.device
    none = count  # larger than every label: what non-mask pixels hold
    inside = mask.reshape(-1)
    index = torch.arange(count, device=device, dtype=torch.int64)
    labels = torch.where(inside, index, torch.full_like(index, none))
    # Padded by one pixel so every neighbour is a shifted view; the padding is outside the mask.
    padded_classes = torch.full((height + 2, width + 2), -1, dtype=torch.int64, device=device)
    padded_classes[1:-1, 1:-1] = torch.where(
        mask, classes.to(torch.int64), torch.full_like(classes, -1, dtype=torch.int64)
    )
    own_class = padded_classes[1:-1, 1:-1]
    same = torch.stack(
        [
            (padded_classes[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] == own_class) & mask
            for dy, dx in NEIGHBOURS
        ]
    )
    changed = torch.ones(1, dtype=torch.bool, device=device)
    run_passes(
        ("class pieces", height, width),
        (labels, inside, index, same, changed),
        _piece_pass(height, width),
        lambda labels, inside, index, same, changed: changed,
        lambda figures: not figures[0],  # a pass that changed nothing: every later one changes nothing
        passes=PROPAGATION_PASSES_PER_CHECK,
        label="propagation passes",
    )
    pixels = inside.nonzero().squeeze(1)  # ascending flat index
    piece_label = labels[pixels]
    order = torch.sort(piece_label, stable=True).indices  # by piece, pixels ascending inside
    _, sizes = torch.unique_consecutive(piece_label[order], return_counts=True)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64, device=device)
    torch.cumsum(sizes, 0, out=offsets[1:])
    return pixels[order], offsets
