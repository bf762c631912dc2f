"""Baseline point rules that every active domain-adaptation paper compares against.

``random`` draws uniformly among the unlabeled pixels; ``entropy`` and ``margin`` take the most
uncertain pixels of the segmenter's prediction (highest entropy, smallest top-2 margin). All three
spend the budget exactly unless the image runs out of unlabeled pixels (then ``shortfall`` says
by how much), and break ties by flat pixel index. ``random_regions`` is the region counterpart of
``random``: seeded random k x k squares for region budgets.
"""

from __future__ import annotations

import torch

from .base import PointQuery, RegionQuery, check_head_probs, unlabeled_mask
from .exact import seeded_uniform
from .regions import check_window, greedy_squares


def _top_points(score: torch.Tensor, free: torch.Tensor, num_points: int, width: int) -> PointQuery:
    """The ``num_points`` free pixels with the highest ``score`` (H*W,), ties by lower flat index; a
    NaN score ranks last. On the score's device; a small budget takes the top k instead of sorting
    every candidate (the same points: the k-th best score, then its ties in index order)."""
    candidates = free.nonzero().squeeze(1)  # ascending flat index
    key = torch.nan_to_num(score[candidates].to(torch.float64), nan=-float("inf"))
    wanted = min(num_points, len(candidates))
    if 0 < wanted <= len(candidates) // 16:
        threshold = torch.topk(key, wanted).values[-1]
        above = (key > threshold).nonzero().squeeze(1)
        tied = (key == threshold).nonzero().squeeze(1)[: wanted - len(above)]
        pool = torch.cat([above, tied])  # ascending index inside each part; ties all at the threshold
        chosen = candidates[pool[torch.sort(-key[pool], stable=True).indices]]
    else:
        chosen = candidates[torch.sort(-key, stable=True).indices[:wanted]]
    return PointQuery.from_flat(chosen, score[chosen], width, shortfall=num_points - chosen.numel())


def random_points(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0) -> PointQuery:
    """Uniformly random unlabeled pixels: those with the highest draws of ``exact.seeded_uniform``
    (seed, pixel index). Uses only the image size; the seed makes it repeatable, on any device."""
    _, height, width = check_head_probs(head_probs)
    device = head_probs[0].device
    free = unlabeled_mask(labeled, height, width, device=device).flatten()
    return _top_points(seeded_uniform(seed, height * width, device), free, num_points, width)


def _mean_head(head_probs) -> torch.Tensor:
    """(K, H*W): the mean of the heads' probabilities (one head: itself, no copy)."""
    num_classes = head_probs[0].shape[0]
    mean = head_probs[0] if len(head_probs) == 1 else torch.stack(list(head_probs)).mean(dim=0)
    return mean.reshape(num_classes, -1)


def entropy_points(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0) -> PointQuery:
    """Pixels of highest predictive entropy H(p) = -sum_k p_k log p_k of the mean head prediction."""
    _, height, width = check_head_probs(head_probs)
    probs = _mean_head(head_probs)
    entropy = torch.special.entr(probs.clamp_min(0)).sum(dim=0)
    return _top_points(
        entropy, unlabeled_mask(labeled, height, width, device=probs.device).flatten(), num_points, width
    )


def margin_points(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0) -> PointQuery:
    """Pixels of smallest margin between the two most probable classes (score = -margin)."""
    num_classes, height, width = check_head_probs(head_probs)
    probs = _mean_head(head_probs)
    best = probs.max(dim=0)
    if num_classes > 1:
        # The runner-up: the maximum once the best class is set aside (topk along the class axis
        # is several times slower on the CPU).
        runner_up = probs.scatter(0, best.indices[None], -float("inf")).max(dim=0).values
        margin = best.values - runner_up
    else:
        margin = best.values
    return _top_points(
        -margin, unlabeled_mask(labeled, height, width, device=probs.device).flatten(), num_points, width
    )


def random_regions(
    head_probs,
    labeled: torch.Tensor | None = None,
    seed: int = 0,
    *,
    k: int = 3,
    max_pixels: int | None = None,
    spread: str = "score",
) -> RegionQuery:
    """Random non-overlapping k x k squares: the region-budget baseline.

    Every unlabeled pixel draws a uniform score from (``seed``, its flat index) (the same draw as
    ``random_points``: ``exact.seeded_uniform``); squares are then placed greedily by that score
    exactly as RIPU's regions are (centre within Chebyshev distance k - 1 of a taken centre is
    skipped; clipped to the image; labeled pixels removed; raster order). A region's score is its centre's draw, so the global
    merge picks uniformly random squares across the pool. ``max_pixels``: stop after the best squares
    that hold that many pixels; ``spread="share"``: score them by their share of the free pixels
    (both: ``greedy_squares``).
    """
    radius = check_window(k)
    _, height, width = check_head_probs(head_probs)
    device = head_probs[0].device
    score = seeded_uniform(seed, height * width, device)
    free = unlabeled_mask(labeled, height, width, device=device)
    indices, offsets, scores = greedy_squares(score, free, radius, max_pixels=max_pixels, spread=spread)
    return RegionQuery(height, width, indices, offsets, scores)
