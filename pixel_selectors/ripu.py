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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import PointQuery, RegionQuery, check_head_probs, predicted_class, unlabeled_mask
from .regions import check_window, greedy_order_picks, greedy_squares, priority_order


def _window_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of (H, W) ``values`` over each k x k window, counting only in-image pixels."""
    pooled = F.avg_pool2d(values[None, None], kernel_size=k, stride=1, padding=(k - 1) // 2, count_include_pad=False)
    return pooled[0, 0]


def _window_sums(counts: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of integer (..., H, W) ``counts`` over each (2r+1)^2 window clipped to the image; exact
    integers (int32), one axis at a time. A small window adds its shifted copies (on the CPU a
    running sum along the row axis is slow); a large one (RIPU's point window is 65 x 65 at
    2048 x 1024) subtracts running sums, which costs the same for any window."""
    counts = counts.to(torch.int32)
    for dim in (-2, -1):
        size = counts.shape[dim]
        if radius <= SHIFTED_SUM_MAX_RADIUS:
            total = counts.clone()
            for shift in range(1, min(radius, size - 1) + 1):
                total.narrow(dim, 0, size - shift).add_(counts.narrow(dim, shift, size - shift))
                total.narrow(dim, shift, size - shift).add_(counts.narrow(dim, 0, size - shift))
            counts = total
            continue
        running = torch.cumsum(counts, dim=dim, dtype=torch.int32)
        running = torch.cat([torch.zeros_like(running.narrow(dim, 0, 1)), running], dim=dim)  # running[i] = sum of [0, i)
        position = torch.arange(size, device=counts.device)
        upper = (position + radius + 1).clamp_max(size)
        lower = (position - radius).clamp_min(0)
        counts = running.index_select(dim, upper) - running.index_select(dim, lower)
    return counts


# Up to this radius window sums add shifted copies (2r adds per axis); beyond, running sums.
SHIFTED_SUM_MAX_RADIUS = 4


def window_impurity(predicted: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """RIPU's region impurity: the entropy of the predicted-class histogram in each k x k window
    (clipped to the image; only in-image pixels counted), divided by log K; float64 (H, W).

    predicted: int64 (H, W) class map. Exact class counts per window (integer running sums over a
    (K, H, W) one-hot, one tensor operation for all classes), then
    H = (n log n - sum_c n_c log n_c) / n, with m log m read from one float64 table, so equal
    windows score exactly equal on any device and a window of one class scores exactly 0.
    """
    radius = check_window(k)
    height, width = predicted.shape
    one_hot = torch.zeros(num_classes, height, width, dtype=torch.uint8, device=predicted.device)
    one_hot.scatter_(0, predicted[None], 1)
    counts = _window_sums(one_hot, radius)  # (K, H, W) int32, each <= k * k
    in_image = counts.sum(dim=0)  # n: the window's in-image pixels
    table = torch.arange(k * k + 1, dtype=torch.float64, device=predicted.device)
    table = torch.special.xlogy(table, table)  # m log m, with 0 log 0 = 0
    class_terms = table.index_select(0, counts.reshape(-1)).reshape(counts.shape)  # int32 indices: no int64 copy
    entropy = (table[in_image.long()] - class_terms.sum(dim=0)) / in_image.to(torch.float64)
    scale = math.log(num_classes) if num_classes > 1 else 1.0
    return entropy.clamp_min(0.0) / scale


def ripu_maps(probs: torch.Tensor, k: int = 3, window_uncertainty: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(impurity P, uncertainty U, window-mean uncertainty) as float64 (H, W) maps of a (K, H, W)
    softmax, on the softmax's device. ``window_uncertainty=False`` skips the third (None): only
    RIPU's regions read it."""
    check_window(k)
    num_classes = probs.shape[0]
    probs = probs.detach()
    scale = math.log(num_classes) if num_classes > 1 else 1.0
    # -p log p per class in the input's precision, summed in float64: no (K, H, W) float64 copy.
    uncertainty = torch.special.entr(probs.clamp_min(0)).sum(dim=0, dtype=torch.float64) / scale
    impurity = window_impurity(predicted_class(probs), num_classes, k)
    return impurity, uncertainty, _window_mean(uncertainty, k) if window_uncertainty else None


def _mean_probs(head_probs) -> tuple[torch.Tensor, int, int]:
    _, height, width = check_head_probs(head_probs)
    if len(head_probs) == 1:  # the segmenter's one head: no copy
        return head_probs[0].detach(), height, width
    return torch.stack([p.detach() for p in head_probs]).mean(dim=0), height, width


def region_impurity(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0, *,
                    k: int = 3, suppress: bool = True) -> PointQuery:
    """RIPU points: pixels of highest P * U, each suppressing its k x k window (RIPU's pixel mode).

    head_probs: one or more (K, H, W) softmax maps (several heads are averaged); labeled: optional
    bool (H, W), never selected. Candidates are visited by (score desc, flat index asc); with
    ``suppress`` a pixel within Chebyshev distance (k-1)/2 of a point already taken is skipped.
    If suppression leaves fewer than ``num_points``, the budget is still spent exactly with the
    skipped pixels in the same order, scored P * U - 1 (in [-1, 0]) so they rank below every
    regular point (scores of regular points are in [0, 1]). Only an image with fewer unlabeled
    pixels than asked reports a shortfall. ``seed`` is unused. Runs on the maps' device.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, uncertainty, _ = ripu_maps(probs, k, window_uncertainty=False)
    score = (impurity * uncertainty).reshape(-1)
    free = unlabeled_mask(labeled, height, width, device=probs.device)
    order = priority_order(score, free)

    if suppress and radius > 0:
        chosen = greedy_order_picks(order, height, width, reach=radius, limit=num_points).to(order.device)
        chosen_scores = score[chosen]
        if len(chosen) < num_points:
            is_taken = torch.zeros(height * width, dtype=torch.bool, device=order.device)
            is_taken[chosen] = True
            extra = order[~is_taken[order]][:num_points - len(chosen)]
            chosen = torch.cat([chosen, extra])
            chosen_scores = torch.cat([chosen_scores, score[extra] - 1.0])
    else:
        chosen = order[:num_points]
        chosen_scores = score[chosen]
    return PointQuery.from_flat(chosen, chosen_scores, width, shortfall=int(num_points - len(chosen)))


def region_impurity_regions(head_probs, labeled: torch.Tensor | None = None, seed: int = 0, *,
                            k: int = 3) -> RegionQuery:
    """RIPU regions: non-overlapping k x k squares ranked by P(i) * mean U over the square.

    Every unlabeled pixel i is a candidate centre with score P(i) * mean_{j in N_k(i)} U(j) (RIPU's
    region score: the square's impurity times its mean uncertainty; not the mean of per-pixel
    P * U). Centres are taken greedily by (score desc, flat index asc), skipping any centre within
    Chebyshev distance k - 1 of one already taken, so squares never overlap (RIPU masks the same
    2r-neighbourhood after each pick). Each region is its square clipped to the image minus the
    labeled pixels, in raster order; regions come ranked. The greedy pass covers the whole image
    (there is no per-image budget): the global merge decides how many regions each image gives.
    ``seed`` is unused. Runs on the maps' device.
    """
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, _, window_uncertainty = ripu_maps(probs, k)
    center_score = (impurity * window_uncertainty).reshape(-1)
    free = unlabeled_mask(labeled, height, width, device=probs.device)
    indices, offsets, scores = greedy_squares(center_score, free, radius)
    return RegionQuery(height, width, indices, offsets, scores)
