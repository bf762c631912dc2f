"""Region-building blocks shared by the region selectors (plain numpy/scipy, no I/O)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import RegionQuery, take_regions

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_window(k: int) -> int:
    """Validate an odd window size ``k`` and return its radius (k - 1) / 2."""
    if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"window size k must be an odd integer >= 1, got {k!r}")
    return (int(k) - 1) // 2


def ranked_query(indices: np.ndarray, offsets: np.ndarray, scores: np.ndarray, height: int, width: int) -> RegionQuery:
    """A RegionQuery with regions ordered by (score desc, given order)."""
    order = np.argsort(-scores, kind="stable")
    indices, offsets = take_regions(indices, offsets, order)
    return RegionQuery(height, width, indices, offsets, scores[order])


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool (H, W) mask in CSR form (indices, offsets).

    Components are numbered in raster order of their first pixel (``scipy.ndimage.label``); each
    component's pixels are in ascending flat index.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    flat = labels.reshape(-1)
    pixels = np.flatnonzero(flat)
    component = flat[pixels] - 1
    order = np.argsort(component, kind="stable")
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(component, minlength=count), out=offsets[1:])
    return pixels[order].astype(np.int64), offsets


def greedy_spread(order: np.ndarray, height: int, width: int, reach: int, limit: int | None = None) -> list[int]:
    """Walk flat pixel indices in ``order``; take each one unless a pixel already taken lies within
    Chebyshev distance ``reach`` of it; stop after ``limit`` picks (all when None).

    Sequential on purpose: the greedy order is the definition (RIPU's non-overlapping regions, and
    its spread-out points). One bool lookup per candidate plus one slice write per pick.
    """
    blocked = np.zeros((height, width), dtype=bool)
    blocked_flat = blocked.reshape(-1)
    taken: list[int] = []
    for c in order.tolist():
        if limit is not None and len(taken) == limit:
            break
        if blocked_flat[c]:
            continue
        taken.append(c)
        y, x = divmod(c, width)
        blocked[max(0, y - reach):y + reach + 1, max(0, x - reach):x + reach + 1] = True
    return taken


def greedy_squares(center_score: np.ndarray, free: np.ndarray, radius: int, centers: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-overlapping (2r+1)^2 squares chosen greedily by the score of their centre pixel.

    center_score: float (H*W,); free: bool (H, W) of unlabeled pixels; centers: optional bool (H, W)
    of the pixels allowed as centres (default: the free ones). Candidate centres are visited by
    (score desc, flat index asc); a centre is taken unless it lies within
    Chebyshev distance 2r of a centre already taken (then the squares would overlap), which is the
    rule of RIPU's region selection. Each square is clipped to the image and loses its labeled
    pixels; pixels keep raster order. Returns CSR (indices, offsets) and the centre scores, in
    the order taken (so already ranked by score).
    """
    height, width = free.shape
    candidates = np.flatnonzero((free if centers is None else centers).reshape(-1))
    order = candidates[np.argsort(-center_score[candidates], kind="stable")]
    taken = greedy_spread(order, height, width, reach=2 * radius)
    centers = np.asarray(taken, dtype=np.int64)
    cy, cx = centers // width, centers % width
    dy, dx = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="ij")
    ys, xs = cy[:, None] + dy.reshape(1, -1), cx[:, None] + dx.reshape(1, -1)  # (R, k*k), raster order
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    keep = inside.copy()
    keep[inside] = free[ys[inside], xs[inside]]
    offsets = np.zeros(len(centers) + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return (ys * width + xs)[keep].astype(np.int64), offsets, center_score[centers].astype(np.float64)
