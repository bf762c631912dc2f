"""Region Impurity and Prediction Uncertainty (RIPU): Xie et al., "Towards Fewer Annotations: Active
Learning via Region Impurity and Prediction Uncertainty for Domain Adaptive Semantic Segmentation",
CVPR 2022.

RIPU reads the segmenter's prediction. For a pixel i and its k x k neighbourhood N_k(i) (k odd,
clipped at the image border, only in-image pixels counted):

- region impurity  P(i) = -sum_c h_c log h_c / log K, where h_c is the fraction of N_k(i) whose
  predicted class (argmax p) is c: high where several classes meet (object boundaries, small
  objects), zero inside a uniform area;
- prediction uncertainty U(i) = -sum_c p_c(i) log p_c(i) / log K, the normalised softmax entropy.

Both lie in [0, 1] (K = 1 gives 0). RIPU's two acquisition modes:

- points (``region_impurity``, RIPU's "PA"): score(i) = P(i) * U(i); the best pixel is taken and
  the k x k window around it is suppressed before the next pick, so points spread out;
- regions (``region_impurity_regions``, RIPU's "RA"): score(i) = P(i) * mean_{j in N_k(i)} U(j),
  the region impurity times the region's mean uncertainty; the candidate is the k x k square
  around i, and squares are taken greedily by score without overlapping.

Windows, as RIPU's code (``core/active/build.py`` and its configs) sets them: the point mode uses
radius 32, a 65 x 65 window, on 2048 x 1024 images, both for the impurity and for the area a
chosen point blocks (``ripu_point_window`` scales it to the image width); the region mode uses
radius 1, 3 x 3 squares, and blocks the 5 x 5 around a chosen centre, so squares never overlap.
What is blocked stays blocked in later rounds (RIPU keeps an ``active`` mask per image): here the
rule rebuilds it from the labeled mask it is given, dilated by the window's radius.
"""

from __future__ import annotations

import functools
import math

import torch

from .base import PointQuery, RegionQuery, check_head_probs, predicted_class, unlabeled_mask
from .exact import to_fixed_point
from .regions import check_window, greedy_order_picks, greedy_squares, priority_order

# RIPU's point window: radius 32 at 2048 pixels wide (configs/gtav/deeplabv2_r101_PA.yaml, RADIUS_K).
RIPU_POINT_RADIUS, RIPU_IMAGE_WIDTH = 32, 2048


def ripu_point_window(width: int) -> int:
    """Side of RIPU's point window for images ``width`` pixels wide: 2 r + 1 with r = 32 * width / 2048
    rounded, at least 1 (65 at 2048, 33 at 1024, 5 at 128, 3 at 64 and below)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return 2 * max(1, round(RIPU_POINT_RADIUS * width / RIPU_IMAGE_WIDTH)) + 1


def blocked_by_labels(labeled: torch.Tensor | None, radius: int, height: int, width: int, device=None) -> torch.Tensor:
    """Bool (H, W): pixels within Chebyshev distance ``radius`` of a labeled pixel (the labeled mask
    dilated by a (2r+1)^2 square: integer window sums, so the cost does not grow with r)."""
    if labeled is None:
        return torch.zeros(height, width, dtype=torch.bool, device=device)
    labeled = labeled.to(device=device or labeled.device, dtype=torch.bool)
    if radius == 0 or not bool(labeled.any()):
        return labeled.clone()
    return _window_sums(labeled[None], radius)[0] > 0


def _window_mean(units: torch.Tensor, radius: int, bits: int) -> torch.Tensor:
    """Mean of (H, W) fixed-point ``units`` (int64, in units of 2**-bits) over each (2r+1)^2 window
    clipped to the image, only in-image pixels counted; float64. The sums are exact integers, so equal
    windows give equal means on every device, whatever order a device would add in."""
    height, width = units.shape
    sums = _window_sums(units[None], radius, dtype=torch.int64)[0]
    rows, cols = (
        _window_sums(torch.ones(1, n, 1, dtype=torch.int32, device=units.device), radius)[0, :, 0]
        for n in (height, width)
    )  # in-image pixels of each window: (rows in it) x (columns in it)
    return sums.to(torch.float64) * 2.0**-bits / (rows[:, None] * cols[None, :]).to(torch.float64)


def _window_sums(counts: torch.Tensor, radius: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Sum of integer (..., H, W) ``counts`` over each (2r+1)^2 window clipped to the image; exact
    integers (``dtype``), one axis at a time. A small window adds its shifted copies (on the CPU a
    running sum along the row axis is slow); a large one (RIPU's point window is 65 x 65 at
    2048 x 1024) subtracts running sums, which costs the same for any window."""
    counts = counts.to(dtype)
    for dim in (-2, -1):
        size = counts.shape[dim]
        if radius <= SHIFTED_SUM_MAX_RADIUS:
            total = counts.clone()
            for shift in range(1, min(radius, size - 1) + 1):
                total.narrow(dim, 0, size - shift).add_(counts.narrow(dim, shift, size - shift))
                total.narrow(dim, shift, size - shift).add_(counts.narrow(dim, 0, size - shift))
            counts = total
            continue
        running = torch.cumsum(counts, dim=dim, dtype=dtype)
        # Padded so that window i is padded[i + 2r + 1] - padded[i]: r + 1 zeros in front (running
        # sums before the image), r copies of the total behind: two slices, no gather.
        before = torch.zeros_like(running.narrow(dim, 0, 1)).repeat_interleave(radius + 1, dim=dim)
        behind = running.narrow(dim, size - 1, 1).repeat_interleave(radius, dim=dim)
        padded = torch.cat([before, running, behind], dim=dim)
        counts = padded.narrow(dim, 2 * radius + 1, size) - padded.narrow(dim, 0, size)
    return counts


# Up to this radius window sums add shifted copies (2r adds per axis); beyond, running sums.
SHIFTED_SUM_MAX_RADIUS = 4


# Fixed-point steps (exact.py): m log m in RIPU's impurity in units of 2**-40; the per-pixel
# uncertainty in units of 2**-24, about the float32 probabilities' own resolution and far above the
# few-ulp differences between two devices' float64 logarithms, so that a device's rounding almost
# never moves a pixel to another unit (a mathematically equal window must stay exactly equal).
IMPURITY_BITS = 40
UNCERTAINTY_BITS = 24


@functools.cache
def _xlogx_units(size: int) -> tuple[int, ...]:
    """round(m ln m * 2**IMPURITY_BITS) for m = 0..size-1, computed once on the host (Python floats):
    the same integers whatever device reads them."""
    return tuple(round(m * math.log(m) * 2**IMPURITY_BITS) if m > 1 else 0 for m in range(size))


def window_impurity(predicted: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """RIPU's region impurity: the entropy of the predicted-class histogram in each k x k window
    (clipped to the image; only in-image pixels counted), divided by log K; float64 (H, W).

    predicted: int64 (H, W) class map. Exact class counts per window (integer running sums over a
    (K, H, W) one-hot, one tensor operation for all classes), then
    H = (n log n - sum_c n_c log n_c) / n with m log m from a fixed-point table made on the host and
    the sum over classes in int64: exact, so equal windows score exactly equal on any device (a float
    sum over classes would round by the device's order) and a window of one class scores exactly 0.
    """
    radius = check_window(k)
    height, width = predicted.shape
    one_hot = torch.zeros(num_classes, height, width, dtype=torch.uint8, device=predicted.device)
    one_hot.scatter_(0, predicted[None], 1)
    # Each count <= k * k: a small window's shifted sums fit in uint8 (a quarter of int32's traffic).
    counts = _window_sums(one_hot, radius, torch.uint8 if radius <= SHIFTED_SUM_MAX_RADIUS else torch.int32)
    in_image = counts.sum(dim=0)  # n: the window's in-image pixels
    table = torch.tensor(_xlogx_units(k * k + 1), dtype=torch.int64, device=predicted.device)
    class_terms = table.index_select(0, counts.reshape(-1).to(torch.int32)).reshape(counts.shape)
    entropy = (table[in_image.long()] - class_terms.sum(dim=0)).clamp_min(0)  # n H, in units of 2**-40
    scale = math.log(num_classes) if num_classes > 1 else 1.0
    return entropy.to(torch.float64) * 2.0**-IMPURITY_BITS / in_image.to(torch.float64) / scale


def uncertainty_units(probs: torch.Tensor) -> torch.Tensor:
    """RIPU's prediction uncertainty U = -sum_c p_c log p_c / log K of a (K, H, W) softmax, in units
    of 2**-UNCERTAINTY_BITS (int64 (H, W)).

    Each class's -p log p in float64, added class after class in a fixed order, then rounded to the
    fixed-point unit: two devices' logarithms differ in the last bits of a float64, far below the
    unit, so they give the same units (a float32 sum differs by device in its last bits, about the
    size of the differences between neighbouring windows of an upsampled softmax, and reorders them).
    One (H, W) float64 buffer: no (K, H, W) float64 copy.
    """
    num_classes = probs.shape[0]
    scale = math.log(num_classes) if num_classes > 1 else 1.0
    total = torch.zeros(probs.shape[1:], dtype=torch.float64, device=probs.device)
    term = torch.empty_like(total)
    for c in range(num_classes):
        term.copy_(probs[c]).clamp_min_(0.0)
        total += torch.special.entr(term, out=term)
    return to_fixed_point(total / scale, UNCERTAINTY_BITS)


def ripu_maps(
    probs: torch.Tensor, k: int = 3, window_uncertainty: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(impurity P, uncertainty U, window-mean uncertainty) as float64 (H, W) maps of a (K, H, W)
    softmax, on the softmax's device, the same bits on every device (see ``window_impurity`` and
    ``uncertainty_units``). ``window_uncertainty=False`` skips the third (None): only RIPU's regions
    read it."""
    radius = check_window(k)
    num_classes = probs.shape[0]
    probs = probs.detach()
    units = uncertainty_units(probs)
    uncertainty = units.to(torch.float64) * 2.0**-UNCERTAINTY_BITS
    impurity = window_impurity(predicted_class(probs), num_classes, k)
    window_mean = _window_mean(units, radius, UNCERTAINTY_BITS) if window_uncertainty else None
    return impurity, uncertainty, window_mean


def _mean_probs(head_probs) -> tuple[torch.Tensor, int, int]:
    _, height, width = check_head_probs(head_probs)
    if len(head_probs) == 1:  # the segmenter's one head: no copy
        return head_probs[0].detach(), height, width
    return torch.stack([p.detach() for p in head_probs]).mean(dim=0), height, width


def region_impurity(
    head_probs,
    num_points: int,
    labeled: torch.Tensor | None = None,
    seed: int = 0,
    *,
    k: int = 3,
    suppress: bool = True,
) -> PointQuery:
    """RIPU points: pixels of highest P * U, each suppressing its k x k window (RIPU's pixel mode).

    head_probs: one or more (K, H, W) softmax maps (several heads are averaged); labeled: optional
    bool (H, W), never selected. ``k`` is both the impurity window and the blocked window, as in
    RIPU (``ripu_point_window`` gives RIPU's size for an image width). Candidates are visited by
    (score desc, flat index asc); with ``suppress`` a pixel within Chebyshev distance (k-1)/2 of a
    point already taken -- in this call, or labeled before (RIPU keeps chosen windows blocked in
    later rounds) -- is skipped. If that leaves fewer than ``num_points``, the budget is still spent
    exactly: first with the pixels skipped in this call, in the same order, scored P * U - 1 (in
    [-1, 0]), then with those blocked by earlier labels, scored P * U - 2 (in [-2, -1]), so they
    rank below every regular point (scores of regular points are in [0, 1]). Only an image with
    fewer unlabeled pixels than asked reports a shortfall. ``seed`` is unused. Runs on the maps'
    device.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, uncertainty, _ = ripu_maps(probs, k, window_uncertainty=False)
    score = (impurity * uncertainty).reshape(-1)
    free = unlabeled_mask(labeled, height, width, device=probs.device)
    blocked = blocked_by_labels(labeled, radius if suppress else 0, height, width, device=probs.device) & free
    order = priority_order(score, free & ~blocked)

    if suppress and radius > 0:
        chosen = greedy_order_picks(order, height, width, reach=radius, limit=num_points).to(order.device)
        chosen_scores = score[chosen]
        if len(chosen) < num_points:
            is_taken = torch.zeros(height * width, dtype=torch.bool, device=order.device)
            is_taken[chosen] = True
            extra = order[~is_taken[order]][: num_points - len(chosen)]
            chosen = torch.cat([chosen, extra])
            chosen_scores = torch.cat([chosen_scores, score[extra] - 1.0])
        if len(chosen) < num_points:
            extra = priority_order(score, blocked)[: num_points - len(chosen)]
            chosen = torch.cat([chosen, extra])
            chosen_scores = torch.cat([chosen_scores, score[extra] - 2.0])
    else:
        chosen = order[:num_points]
        chosen_scores = score[chosen]
    return PointQuery.from_flat(chosen, chosen_scores, width, shortfall=int(num_points - len(chosen)))


def region_impurity_regions(
    head_probs,
    labeled: torch.Tensor | None = None,
    seed: int = 0,
    *,
    k: int = 3,
    max_pixels: int | None = None,
    spread: str = "score",
) -> RegionQuery:
    """RIPU regions: non-overlapping k x k squares ranked by P(i) * mean U over the square.

    Every pixel i whose square holds no labeled pixel is a candidate centre with score P(i) *
    mean_{j in N_k(i)} U(j) (RIPU's region score: the square's impurity times its mean
    uncertainty; not the mean of per-pixel P * U). Centres are taken greedily by (score desc, flat
    index asc), skipping any centre within Chebyshev distance k - 1 of one already taken, so squares
    never overlap (RIPU masks the same 2r-neighbourhood after each pick), nor overlap what earlier
    rounds labeled (RIPU keeps that mask from round to round). Each region is its square clipped to
    the image, in raster order; regions come ranked. The global merge decides how many regions each
    image gives: the greedy pass covers the whole image, or with ``max_pixels`` stops after the best
    squares that hold that many pixels (what the merge can take from this image; RIPU itself takes a
    fixed number of squares per image). ``spread="share"`` scores each square by its share of the
    image's free pixels instead (``greedy_squares``). ``seed`` is unused. Runs on the maps' device.
    """
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, _, window_uncertainty = ripu_maps(probs, k)
    center_score = (impurity * window_uncertainty).reshape(-1)
    free = unlabeled_mask(labeled, height, width, device=probs.device)
    centers = ~blocked_by_labels(labeled, radius, height, width, device=probs.device)
    indices, offsets, scores = greedy_squares(
        center_score, free, radius, centers=centers, max_pixels=max_pixels, spread=spread
    )
    return RegionQuery(height, width, indices, offsets, scores)
