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
selector rebuilds it from the labeled mask it is given, dilated by the window's radius.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import PointQuery, RegionQuery, check_head_probs, predicted_class, unlabeled_mask
from .regions import check_window, greedy_spread, greedy_squares


# RIPU's point window: radius 32 at 2048 pixels wide (configs/gtav/deeplabv2_r101_PA.yaml, RADIUS_K).
RIPU_POINT_RADIUS, RIPU_IMAGE_WIDTH = 32, 2048


def ripu_point_window(width: int) -> int:
    """Side of RIPU's point window for images ``width`` pixels wide: 2 r + 1 with r = 32 * width / 2048
    rounded, at least 1 (65 at 2048, 33 at 1024, 5 at 128, 3 at 64 and below)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return 2 * max(1, round(RIPU_POINT_RADIUS * width / RIPU_IMAGE_WIDTH)) + 1


def blocked_by_labels(labeled: torch.Tensor | None, radius: int, height: int, width: int) -> torch.Tensor:
    """Bool (H, W): pixels within Chebyshev distance ``radius`` of a labeled pixel (the labeled mask
    dilated by a (2r+1)^2 square; two 1-D max-pools, so the cost does not grow with r squared)."""
    if labeled is None or radius == 0 or not bool(labeled.any()):
        return unlabeled_mask(labeled, height, width, device=None if labeled is None else labeled.device).logical_not()
    mask = labeled.to(torch.float32)[None, None]
    side = 2 * radius + 1
    mask = F.max_pool2d(mask, kernel_size=(1, side), stride=1, padding=(0, radius))
    mask = F.max_pool2d(mask, kernel_size=(side, 1), stride=1, padding=(radius, 0))
    return mask[0, 0] > 0


def _window_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of (H, W) ``values`` over each k x k window, counting only in-image pixels."""
    pooled = F.avg_pool2d(values[None, None], kernel_size=k, stride=1, padding=(k - 1) // 2, count_include_pad=False)
    return pooled[0, 0]


def ripu_maps(probs: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(impurity P, uncertainty U, window-mean uncertainty) as float64 (H, W) maps of a (K, H, W) softmax."""
    check_window(k)
    num_classes = probs.shape[0]
    probs = probs.detach().to(torch.float64).cpu()
    scale = math.log(num_classes) if num_classes > 1 else 1.0
    uncertainty = -(probs * probs.clamp_min(1e-12).log()).sum(dim=0) / scale
    predicted = predicted_class(probs)
    impurity = torch.zeros_like(uncertainty)
    # One class at a time: memory stays at a few (H, W) maps, not a (K, H, W) one-hot.
    for c in torch.unique(predicted).tolist():
        share = _window_mean((predicted == c).to(torch.float64), k)
        impurity -= share * share.clamp_min(1e-12).log()
    return impurity / scale, uncertainty, _window_mean(uncertainty, k)


def _mean_probs(head_probs) -> tuple[torch.Tensor, int, int]:
    _, height, width = check_head_probs(head_probs)
    return torch.stack([p.detach().cpu() for p in head_probs]).mean(dim=0), height, width


def region_impurity(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0, *,
                    k: int = 3, suppress: bool = True) -> PointQuery:
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
    fewer unlabeled pixels than asked reports a shortfall. ``seed`` is unused.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, uncertainty, _ = ripu_maps(probs, k)
    score = (impurity * uncertainty).reshape(-1).numpy()
    free = unlabeled_mask(labeled, height, width).cpu().reshape(-1).numpy()
    blocked = (blocked_by_labels(labeled, radius if suppress else 0, height, width).cpu().reshape(-1).numpy()
               & free)
    candidates = np.flatnonzero(free & ~blocked)
    order = candidates[np.argsort(-score[candidates], kind="stable")]

    if suppress and radius > 0:
        taken = greedy_spread(order, height, width, reach=radius, limit=num_points)
        chosen = np.asarray(taken, dtype=np.int64)
        chosen_scores = score[chosen]
        if len(chosen) < num_points:
            is_taken = np.zeros(height * width, dtype=bool)
            is_taken[chosen] = True
            extra = order[~is_taken[order]][:num_points - len(chosen)]
            chosen = np.concatenate([chosen, extra])
            chosen_scores = np.concatenate([chosen_scores, score[extra] - 1.0])
        if len(chosen) < num_points:
            earlier = np.flatnonzero(blocked)
            extra = earlier[np.argsort(-score[earlier], kind="stable")][:num_points - len(chosen)]
            chosen = np.concatenate([chosen, extra])
            chosen_scores = np.concatenate([chosen_scores, score[extra] - 2.0])
    else:
        chosen = order[:num_points]
        chosen_scores = score[chosen]
    return PointQuery(ys=(chosen // width).astype(np.int32), xs=(chosen % width).astype(np.int32),
                      scores=chosen_scores.astype(np.float32), shortfall=int(num_points - len(chosen)))


def region_impurity_regions(head_probs, labeled: torch.Tensor | None = None, seed: int = 0, *,
                            k: int = 3) -> RegionQuery:
    """RIPU regions: non-overlapping k x k squares ranked by P(i) * mean U over the square.

    Every pixel i whose square holds no labeled pixel is a candidate centre with score P(i) *
    mean_{j in N_k(i)} U(j) (RIPU's region score: the square's impurity times its mean
    uncertainty; not the mean of per-pixel P * U). Centres are taken greedily by (score desc, flat
    index asc), skipping any centre within Chebyshev distance k - 1 of one already taken, so squares
    never overlap (RIPU masks the same 2r-neighbourhood after each pick), nor overlap what earlier
    rounds labeled (RIPU keeps that mask from round to round). Each region is its square clipped to
    the image, in raster order; regions come ranked. The greedy pass covers the whole image (there
    is no per-image budget): the global merge decides how many regions each image gives.
    ``seed`` is unused.
    """
    radius = check_window(k)
    probs, height, width = _mean_probs(head_probs)
    impurity, _, window_uncertainty = ripu_maps(probs, k)
    center_score = (impurity * window_uncertainty).reshape(-1).numpy()
    free = unlabeled_mask(labeled, height, width).cpu().numpy()
    centers = ~blocked_by_labels(labeled, radius, height, width).cpu().numpy()
    indices, offsets, scores = greedy_squares(center_score, free, radius, centers=centers)
    return RegionQuery(height, width, indices, offsets, scores)
