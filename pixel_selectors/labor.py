"""LabOR pixel selection (Shin et al., "LabOR: Labeling Only if Required for Domain Adaptive
Semantic Segmentation", ICCV 2021).

The selector network S is a shared backbone with two classifier heads C1, C2 whose disagreement marks
the target pixels the model is unsure about: the *inconsistency mask* M = {argmax p1 != argmax p2}.
Point-based Pixel Labeling (PPL) then asks for points that best represent M, one per piece of M;
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
from .exact import fixed_point_bits, group_sums, segment_sums, to_fixed_point
from .pieces import class_pieces
from .regions import connected_components
from .rules import PPL_RULES


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


def labor_ppl(
    head_probs,
    num_points: int | None,
    labeled: torch.Tensor | None = None,
    seed: int = 0,
    *,
    rule: str = "per_piece",
) -> PointQuery:
    """Point-based Pixel Labeling: points of one image that represent LabOR's inconsistency mask M.

    head_probs: two (K, H, W) softmax maps, from C1 and C2. labeled: optional bool (H, W) of pixels
    already labeled; they are never selected (they are taken out of M before it is cut in pieces).
    ``num_points``: how many points; None is the whole-mask mode, one point per piece of M (the
    number of points is the outcome). ``seed`` is unused: the rules are deterministic.

    Both rules read p = (p1 + p2) / 2 and split the unlabeled part of M by the class argmax p.

    ``rule="per_piece"`` (the paper's reading, the default): a *piece* is an 8-connected component
    of the pixels of M predicted as one class (two touching pixels of different classes are in
    different pieces). Each piece's prototype mu is the mean of p over its pixels, and its point is
    the pixel nearest mu in Euclidean distance between probability vectors (ties: lower flat index).
    Euclidean because the mean is the centre of that distance (the point minimising the summed
    squared distances to the piece's pixels), so "nearest the mean" is the piece's most central,
    most representative pixel in the very geometry the prototype is taken in. The squared distances
    are summed in fixed point (``exact``), so the choice is the same on a CPU and a GPU.

    Points go round-robin over the pieces: every piece gets its first point before any piece gets
    a second (a piece's j-th point is its j-th nearest pixel to mu). Pieces are taken largest first
    (ties: raster order of their first pixel): a point stands for its piece, so when
    ``num_points`` is smaller than the number of pieces, the points go to the pieces that stand
    for the most pixels of M; a single-pixel fringe where the heads disagree on a class boundary
    comes last. (Mean discrepancy, SPL's default score, was not chosen: one point per piece already
    keeps a large piece from swallowing the budget, which is what that score guards against in SPL,
    and a tiny piece's mean discrepancy is the noisiest.)

    ``rule="nearest_k"`` (the earlier reading, kept for comparison): one prototype per class over
    all of its M pixels; the budget is split evenly over the classes present (``allocate_evenly``)
    and each class takes its pixels nearest its prototype. Those pile up on one spot.

    Exact budget (both rules): when M holds fewer unlabeled pixels than ``num_points``, the rest
    are the unlabeled pixels outside M with the largest head discrepancy mean_k |p1 - p2| (the
    nearest to disagreeing). Only an image with fewer unlabeled pixels than asked gives fewer
    points, and ``shortfall`` says by how many.

    Scores (higher first; the order above, comparable across images for a pool-wide merge):
    per_piece: s / (H W + 1) - j for a piece's j-th point (j from 0), s its size, so every first
    point outranks every second point anywhere; nearest_k: 1 / (1 + distance); top-up points: the
    discrepancy minus H W + 1 (per_piece) or minus 1 (nearest_k), below every point of M.
    """
    if rule not in PPL_RULES:
        raise ValueError(f"unknown PPL rule {rule!r}; choose one of: {', '.join(PPL_RULES)}")
    if num_points is not None and num_points < 0:
        raise ValueError(f"num_points must be >= 0 or None (one point per piece), got {num_points}")
    _, height, width = check_head_probs(head_probs, expected_heads=2)
    p1, p2 = head_probs[0], head_probs[1]
    free = unlabeled_mask(labeled, height, width, device=p1.device)
    candidates_mask = inconsistency_mask(p1, p2) & free
    mean = (p1 + p2) / 2
    pieces = None
    if rule == "per_piece" or num_points is None:
        pieces = class_pieces(candidates_mask, predicted_class(mean))
    if num_points is None:
        num_points = len(pieces[1]) - 1
    if rule == "per_piece":
        flat, score = _per_piece_points(mean, pieces, num_points, height * width)
        below = -float(height * width + 1)
    else:
        flat, score = _nearest_k_points(mean, candidates_mask.flatten(), num_points)
        below = -1.0
    missing = num_points - flat.numel()
    if missing > 0:
        rest = (free & ~candidates_mask).flatten().nonzero().squeeze(1)
        discrepancy = exact_discrepancy(p1, p2)[rest]
        order = torch.sort(-discrepancy, stable=True).indices[:missing]
        flat = torch.cat([flat, rest[order]])
        score = torch.cat([score, discrepancy[order] + below])
    return PointQuery.from_flat(flat, score, width, shortfall=num_points - flat.numel())


def ppl_piece_count(head_probs, labeled: torch.Tensor | None = None) -> int:
    """How many points LabOR PPL's whole-mask mode gives this image: the pieces (predicted class,
    8-connected component) of the unlabeled part of M (``labor_ppl`` with ``num_points=None``).
    Random points at the same count per image are its fair rival."""
    _, height, width = check_head_probs(head_probs, expected_heads=2)
    p1, p2 = head_probs[0], head_probs[1]
    mask = inconsistency_mask(p1, p2) & unlabeled_mask(labeled, height, width, device=p1.device)
    return len(class_pieces(mask, predicted_class((p1 + p2) / 2))[1]) - 1


def exact_discrepancy(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """(H*W,) float64: ``head_discrepancy`` summed in fixed point, so it has the same bits on every
    device (it orders the top-up points)."""
    num_classes = p1.shape[0]
    terms = (p1 - p2).abs().reshape(num_classes, -1).to(torch.float64)
    return _exact_column_sums(terms) / num_classes


def _exact_column_sums(terms: torch.Tensor) -> torch.Tensor:
    """float64 (N,): the sums over the first axis of (K, N) ``terms``, each term rounded to a fixed-point
    multiple of a power of two and added as int64 (exact, so the same bits in any order). A column
    holding a NaN or an infinity sums to NaN."""
    bad = ~torch.isfinite(terms)
    terms = terms.masked_fill(bad, 0.0)
    bound = float(terms.abs().max()) if terms.numel() else 0.0
    bits = fixed_point_bits(bound, terms.shape[0])
    sums = to_fixed_point(terms, bits).sum(dim=0).to(torch.float64) * 2.0**-bits
    return sums.masked_fill(bad.any(dim=0), float("nan"))


def _per_piece_points(
    mean: torch.Tensor, pieces: tuple[torch.Tensor, torch.Tensor], num_points: int, image_pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``labor_ppl``'s per-piece rule: (flat indices, scores) of at most ``num_points`` points of M."""
    indices, offsets = pieces
    device = indices.device
    num_classes = mean.shape[0]
    sizes = offsets[1:] - offsets[:-1]
    count = len(sizes)
    if count == 0 or num_points == 0:
        return indices[:0], torch.empty(0, dtype=torch.float64, device=device)
    piece_of = torch.repeat_interleave(torch.arange(count, device=device), sizes)  # per pixel, pieces in order
    vectors = mean.reshape(num_classes, -1)[:, indices].to(torch.float64)  # (K, N), piece by piece
    prototypes = segment_sums(vectors, sizes) / sizes.to(torch.float64)  # (K, P), exact sums
    distance = _exact_column_sums((vectors - prototypes[:, piece_of]).square())  # squared: same order
    # Inside each piece: by (distance, flat index). Pixels come piece by piece in ascending flat index,
    # so a stable sort by distance, then a stable sort by piece, gives that order; NaN goes last.
    order = torch.sort(torch.nan_to_num(distance, nan=float("inf")), stable=True).indices
    order = order[torch.sort(piece_of[order], stable=True).indices]
    rank_in_piece = torch.arange(len(order), device=device) - offsets[:-1][piece_of[order]]
    # Pieces largest first, ties in raster order of their first pixel (their numbering).
    piece_priority = torch.empty(count, dtype=torch.int64, device=device)
    piece_priority[torch.sort(-sizes, stable=True).indices] = torch.arange(count, device=device)
    # Round robin: every piece's first point (by priority), then every second point, ...
    round_robin = torch.sort(rank_in_piece * count + piece_priority[piece_of[order]]).indices[:num_points]
    chosen = order[round_robin]
    score = sizes[piece_of[chosen]].to(torch.float64) / (image_pixels + 1) - rank_in_piece[round_robin]
    return indices[chosen], score


def _nearest_k_points(mean: torch.Tensor, candidates_mask: torch.Tensor, num_points: int):
    """``labor_ppl``'s nearest_k rule: (flat indices, scores) of at most ``num_points`` points of M."""
    num_classes = mean.shape[0]
    candidates = candidates_mask.nonzero().squeeze(1)  # ascending flat index
    # Class-major (K, N) layout: contiguous along the candidates, which reductions run over.
    vectors = mean.reshape(num_classes, -1)[:, candidates].to(torch.float64)
    candidate_class = predicted_class(vectors)
    counts = torch.bincount(candidate_class, minlength=num_classes)
    allocation = allocate_evenly(counts.tolist(), num_points)
    # All classes at once: prototypes by exact sums over the candidates grouped by class, then the
    # candidates ordered by (class, distance) -- two stable sorts, so ties stay in flat-index order --
    # keeping the first allocation[k] of each class. A NaN distance sorts last within its class.
    sums = group_sums(vectors, candidate_class, num_classes)  # column k: the sum over D(k)
    prototypes = sums / counts.clamp_min(1).to(torch.float64)  # column k: mu_k
    distance = _exact_column_sums((vectors - prototypes[:, candidate_class]).square()).sqrt()
    order = torch.sort(torch.nan_to_num(distance, nan=float("inf")), stable=True).indices
    order = order[torch.sort(candidate_class[order], stable=True).indices]
    class_of = candidate_class[order]
    first_of_class = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(order.numel(), device=order.device) - first_of_class[class_of]
    keep = order[rank_in_class < torch.as_tensor(allocation, device=order.device)[class_of]]
    return candidates[keep], 1.0 / (1.0 + distance[keep])


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
