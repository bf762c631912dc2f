"""LabOR pixel selection (Shin et al., "LabOR: Labeling Only if Required for Domain Adaptive
Semantic Segmentation", ICCV 2021).

The selector network S is a shared backbone with two classifier heads C1, C2 whose disagreement marks
the target pixels the model is unsure about: the *inconsistency mask* M = {argmax p1 != argmax p2}.
Point-based Pixel Labeling (PPL) then asks for a few points per image that best represent M;
Segment-based Pixel Labeling (SPL) offers the connected pieces of M as regions to label.
"""

from __future__ import annotations

import torch

from .base import (
    PointQuery,
    RegionQuery,
    allocate_evenly,
    check_head_probs,
    head_length,
    predicted_class,
    take_regions,
    to_host,
    unlabeled_mask,
)
from .budget import check_spread, share_scores
from .exact import group_sums, segment_sums
from .regions import connected_components


def inconsistency_mask(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """M = {pixels where argmax_k p1 != argmax_k p2}.

    p1, p2: (K, H, W) probabilities (or logits: only the argmax matters) of the two heads.
    Returns a bool (H, W) mask.
    """
    if p1.shape != p2.shape:
        raise ValueError(f"head outputs differ in shape: {tuple(p1.shape)} vs {tuple(p2.shape)}")
    return predicted_class(p1) != predicted_class(p2)


def head_discrepancy(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """MCD discrepancy per pixel, d = mean_k |p1_k - p2_k|; (K, H, W) x 2 -> (H, W)."""
    return (p1 - p2).abs().mean(dim=0)


def labor_ppl(head_probs, num_points: int, labeled: torch.Tensor | None = None, seed: int = 0) -> PointQuery:
    """Point-based Pixel Labeling: ``num_points`` points per image near per-class prototypes of M.

    head_probs: two (K, H, W) softmax maps, from C1 and C2. labeled: optional bool (H, W) of pixels
    already labeled; they are never selected.

    Rule, following LabOR: p = (p1 + p2) / 2; for each class k, D(k) = unlabeled pixels of M whose
    argmax p is k; the prototype mu_k is the mean of p over D(k); the points of class k are the
    pixels of D(k) nearest mu_k (Euclidean distance between probability vectors, ties by flat
    index). The budget is split evenly over the classes present in M (``allocate_evenly``): a class
    with fewer candidates than its share gives them all and the others share the rest.

    Exact budget: when M holds fewer unlabeled pixels than ``num_points``, the remaining points are
    the unlabeled pixels outside M with the largest head discrepancy mean_k |p1 - p2| (they are the
    nearest to disagreeing). Only an image with fewer unlabeled pixels than asked gives fewer
    points, and the query reports the shortfall.

    Scores: 1 / (1 + distance to the prototype) for points from M (in (0, 1]), and the head
    discrepancy minus 1 (in [-1, 0)) for top-up points, so every M point outranks every top-up point.
    ``seed`` is unused: the rule is deterministic.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    num_classes, height, width = check_head_probs(head_probs, expected_heads=2)
    p1, p2 = head_probs[0], head_probs[1]
    free = unlabeled_mask(labeled, height, width, device=p1.device).flatten()
    candidates_mask = inconsistency_mask(p1, p2).flatten() & free

    candidates = candidates_mask.nonzero().squeeze(1)  # ascending flat index
    # Only the candidates' mean probabilities are needed (M is a small part of a trained model's
    # image). Class-major (K, N) layout: contiguous along the candidates, which reductions run over.
    vectors = ((p1.reshape(num_classes, -1)[:, candidates] + p2.reshape(num_classes, -1)[:, candidates]) / 2).to(
        torch.float64
    )  # (K, N)
    candidate_class = predicted_class(vectors)
    counts = torch.bincount(candidate_class, minlength=num_classes)
    allocation = allocate_evenly(counts.tolist(), num_points)

    # All classes at once: prototypes by exact sums over the candidates grouped by class, then the
    # candidates ordered by (class, distance) -- two stable sorts, so ties stay in flat-index order --
    # keeping the first allocation[k] of each class. A NaN distance (a diverged model) sorts last within its class.
    sums = group_sums(vectors, candidate_class, num_classes)  # column k: the sum over D(k)
    prototypes = sums / counts.clamp_min(1).to(torch.float64)  # column k: mu_k
    distance = (vectors - prototypes[:, candidate_class]).square().sum(dim=0).sqrt()
    order = torch.sort(torch.nan_to_num(distance, nan=float("inf")), stable=True).indices
    order = order[torch.sort(candidate_class[order], stable=True).indices]
    class_of = candidate_class[order]
    first_of_class = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(order.numel(), device=order.device) - first_of_class[class_of]
    keep = order[rank_in_class < torch.as_tensor(allocation, device=order.device)[class_of]]
    chosen = [candidates[keep]]
    scores = [1.0 / (1.0 + distance[keep])]

    missing = num_points - sum(allocation)
    if missing > 0:
        rest = (free & ~candidates_mask).nonzero().squeeze(1)
        discrepancy = head_discrepancy(p1, p2).flatten()[rest]
        order = torch.sort(-discrepancy, stable=True).indices[:missing]
        chosen.append(rest[order])
        scores.append(discrepancy[order] - 1.0)

    flat = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.int64)
    score = torch.cat(scores) if scores else torch.empty(0)
    return PointQuery.from_flat(flat, score, width, shortfall=num_points - flat.numel())


SPL_SCORES = ("mean_discrepancy", "size", "sum_discrepancy")


def labor_spl(
    head_probs,
    labeled: torch.Tensor | None = None,
    seed: int = 0,
    *,
    score: str = "mean_discrepancy",
    min_pixels: int = 1,
    max_pixels: int | None = None,
    spread: str = "score",
) -> RegionQuery:
    """Segment-based Pixel Labeling: the unlabeled part of M, one candidate region per 8-connected piece.

    head_probs: two (K, H, W) softmax maps, from C1 and C2. labeled: optional bool (H, W); labeled
    pixels are removed from M before splitting it, so a piece cut by labels becomes several regions.
    Pieces smaller than ``min_pixels`` are dropped. Pixels inside a region are in raster order.

    LabOR labels the whole of M in every image; with a pool-wide pixel budget the regions of all
    images compete in the global merge, ranked by ``score``:

    - ``"mean_discrepancy"`` (default): mean over the region of d = mean_k |p1_k - p2_k|. It is
      LabOR's own signal (the MCD discrepancy the selector heads are trained to expose), and it is
      independent of region size, so the budget goes to where the heads disagree most rather than
      to whichever image has the largest mask; one huge piece cannot swallow the budget by size
      alone. Values lie in [0, 2/K].
    - ``"size"``: pixels in the region; most labels per polygon (clicks grow with the perimeter,
      pixels with the area).
    - ``"sum_discrepancy"``: size x mean discrepancy, a compromise.

    Regions are returned ranked by (score desc, raster order of their first pixel). There is no
    top-up outside M: if the pool's masks hold fewer pixels than the budget, the merge reports
    the shortfall. ``seed`` is unused: the rule is deterministic.

    ``spread="share"`` rescores the ranked regions by their share of the image's M
    (``budget.share_scores``, as ``share_of_candidates``); ``max_pixels`` keeps only the best regions
    that hold that many pixels (``RegionQuery.head``). Both happen on the maps' device, so only what
    is kept reaches the host (M of a young selector network is most of the image).
    """
    if score not in SPL_SCORES:
        raise ValueError(f"unknown SPL score {score!r}; choose one of: {', '.join(SPL_SCORES)}")
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    check_spread(spread)
    _, height, width = check_head_probs(head_probs, expected_heads=2)
    p1, p2 = head_probs[0], head_probs[1]
    free = unlabeled_mask(labeled, height, width, device=p1.device)
    # On the maps' device: the mask, its pieces and their scores; only the query leaves it.
    indices, offsets = connected_components(inconsistency_mask(p1, p2) & free)
    sizes = offsets[1:] - offsets[:-1]
    discrepancy = head_discrepancy(p1, p2).reshape(-1).to(torch.float64)
    total = segment_sums(discrepancy[indices], sizes)
    scores = {
        "mean_discrepancy": lambda: total / sizes.clamp_min(1),
        "size": lambda: sizes.to(torch.float64),
        "sum_discrepancy": lambda: total,
    }[score]()
    keep = (sizes >= min_pixels).nonzero().squeeze(1)
    if len(keep) < len(sizes):
        indices, offsets = take_regions(indices, offsets, keep)
        scores, sizes = scores[keep], sizes[keep]
    ranked = torch.sort(-scores, stable=True).indices  # score desc; ties: components' raster order
    sizes = sizes[ranked]
    scores = share_scores(sizes.to(torch.float64), sizes.sum()) if spread == "share" else scores[ranked]
    count = len(ranked) if max_pixels is None else head_length(sizes, max_pixels)
    indices, offsets = take_regions(indices, offsets, ranked[:count])
    return RegionQuery(height, width, *to_host(indices, offsets, scores[:count]))
