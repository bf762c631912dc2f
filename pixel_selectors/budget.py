"""Spending one pixel budget over a whole pool: a streaming merge of per-image candidates.

Ranking actors return, per image, a ``RegionQuery`` of candidate regions (points are regions of one
pixel). ``GlobalBudget`` merges them as they arrive, in any order, and picks regions by

    (score desc, image_id asc, region index asc)

until exactly ``budget_pixels`` pixels are taken; the last region taken is cut to its first
``remaining`` pixels in stored order. If the pool offers fewer pixels, all of them are taken and
the result reports the shortfall.

Memory grows with the budget, not the pool. The merge keeps only candidates that can still be
picked: a kept region is dropped as soon as the better kept regions alone cover the budget, and a
new candidate no better than the worst kept one is never stored when the kept ones already cover
it. So after every ``add`` the kept pixels are fewer than ``budget_pixels`` + the size of the worst
kept region (<= budget + the largest region). The kept set is always the shortest best-first prefix
of everything seen so far, so the result does not depend on arrival order.

How the budget spreads over images is the scores' business: a rule's own scores (comparable
across images) send it where they are highest, wherever that is; ``share_of_candidates`` rescores
each image's query so that every image gets the same share of its own candidates.

Cost: per ``add``, one vectorised sort of that image's regions plus a heap push per region that
survives the filters (O(log kept) each). Image ids are integers, each added at most once.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .base import PointQuery, RegionQuery


@dataclass(frozen=True, eq=False)
class Pick:
    """One region taken by the merge: ``pixels`` are its flat indices taken (all of the region, or
    for the last pick possibly a prefix in stored order; then ``truncated`` is True)."""

    image_id: int
    region: int
    score: float
    pixels: np.ndarray
    truncated: bool = False


@dataclass(frozen=True, eq=False)
class BudgetResult:
    """What the merge took. ``picks`` are in selection order (best first).

    ``spent_pixels`` == min(budget_pixels, offered_pixels); ``shortfall`` = budget_pixels -
    spent_pixels (> 0 only when the pool offered fewer pixels than the budget); ``offered_pixels``
    counts every candidate pixel that was added, kept or not.
    """

    budget_pixels: int
    picks: tuple[Pick, ...]
    spent_pixels: int
    shortfall: int
    offered_pixels: int

    def by_image(self) -> dict[int, np.ndarray]:
        """image_id -> int64 flat indices taken in that image (pick order), ids ascending."""
        parts: dict[int, list[np.ndarray]] = {}
        for pick in self.picks:
            parts.setdefault(pick.image_id, []).append(pick.pixels)
        return {i: np.concatenate(parts[i]) for i in sorted(parts)}

    def regions_by_image(self) -> dict[int, list[np.ndarray]]:
        """image_id -> the pixel arrays of its picks (one per region, e.g. for the click cost)."""
        out: dict[int, list[np.ndarray]] = {}
        for pick in self.picks:
            out.setdefault(pick.image_id, []).append(pick.pixels)
        return {i: out[i] for i in sorted(out)}


class GlobalBudget:
    """Streaming merge of per-image candidate regions under one pool-wide pixel budget.

    >>> merge = GlobalBudget(budget_pixels=1000)
    >>> for image_id, query in stream:        # any order, e.g. as ranking actors finish
    ...     merge.add(image_id, query)
    >>> result = merge.result()               # BudgetResult; deterministic in the set of inputs
    """

    def __init__(self, budget_pixels: int):
        if int(budget_pixels) != budget_pixels or budget_pixels < 0:
            raise ValueError(f"budget_pixels must be a non-negative integer, got {budget_pixels!r}")
        self.budget_pixels = int(budget_pixels)
        # Min-heap whose root is the worst kept region: (score, -image_id, -region, pixels).
        self._heap: list[tuple[float, int, int, np.ndarray]] = []
        self._kept_pixels = 0
        self._seen: set[int] = set()
        self._offered = 0

    @property
    def kept_pixels(self) -> int:
        """Pixels currently held by kept candidates (the merge's memory, in pixels)."""
        return self._kept_pixels

    @property
    def kept_regions(self) -> int:
        return len(self._heap)

    @property
    def offered_pixels(self) -> int:
        return self._offered

    def add(self, image_id: int, query: RegionQuery) -> None:
        """Offer one image's candidates. Each image id may be added once."""
        if not isinstance(query, RegionQuery):
            raise TypeError(f"expected a RegionQuery, got {type(query).__name__} (see add_points for points)")
        image_id = _image_id(image_id)
        if image_id in self._seen:
            raise ValueError(f"image {image_id} was already added to the budget merge")
        self._seen.add(image_id)
        self._offered += query.num_pixels
        if self.budget_pixels == 0 or len(query) == 0:
            return
        # Inside one image the merge order is (score desc, index asc); this image can give at most
        # the budget, so regions past the first ones that cover it are never needed.
        order = np.argsort(-query.scores, kind="stable")
        sizes = query.sizes[order]
        last = int(np.searchsorted(np.cumsum(sizes), self.budget_pixels, side="left"))
        order = order[: last + 1]
        scores = query.scores[order]
        if self._kept_pixels >= self.budget_pixels and self._heap:
            # Only regions better than the worst kept one can change the result.
            worst_score, neg_worst_image, _, _ = self._heap[0]
            better = (scores > worst_score) | ((scores == worst_score) & (image_id < -neg_worst_image))
            order = order[better]  # a prefix: order is sorted best first
        for r in order.tolist():
            pixels = query.indices[query.offsets[r] : query.offsets[r + 1]].copy()
            heapq.heappush(self._heap, (float(query.scores[r]), -image_id, -r, pixels))
            self._kept_pixels += len(pixels)
            self._prune()

    def add_points(self, image_id: int, query: PointQuery, height: int, width: int, order: str = "score") -> None:
        """Offer one image's point query, each point a one-pixel region (see ``points_to_regions``)."""
        self.add(image_id, points_to_regions(query, height, width, order=order))

    def _prune(self) -> None:
        # Drop the worst kept region while the others (all better) still cover the budget.
        while self._heap and self._kept_pixels - len(self._heap[0][3]) >= self.budget_pixels:
            self._kept_pixels -= len(heapq.heappop(self._heap)[3])

    def result(self) -> BudgetResult:
        """The picks: kept regions best first, the last one truncated so the budget is spent exactly."""
        kept = sorted(self._heap, key=lambda e: (-e[0], -e[1], -e[2]))
        picks, remaining = [], self.budget_pixels
        for score, neg_image, neg_region, pixels in kept:
            if remaining == 0:
                break
            take = min(remaining, len(pixels))
            picks.append(
                Pick(
                    image_id=-neg_image,
                    region=-neg_region,
                    score=score,
                    pixels=pixels[:take],
                    truncated=take < len(pixels),
                )
            )
            remaining -= take
        spent = self.budget_pixels - remaining
        return BudgetResult(
            budget_pixels=self.budget_pixels,
            picks=tuple(picks),
            spent_pixels=spent,
            shortfall=remaining,
            offered_pixels=self._offered,
        )


REGION_SPREADS = ("score", "share")


def check_spread(spread: str) -> str:
    if spread not in REGION_SPREADS:
        raise ValueError(f"unknown region spread {spread!r}; choose one of: {', '.join(REGION_SPREADS)}")
    return spread


def share_of_candidates(query: RegionQuery) -> RegionQuery:
    """The query rescored so that a pool-wide merge gives every image the same share of its own candidates.

    Regions keep the rule's ranked order inside the image (its score decides which of the
    image's regions come first); region j's new score is minus the share of the image's candidate
    pixels at its middle, -(s_1 + ... + s_(j-1) + s_j / 2) / (s_1 + ... + s_R), in (-1, 0). The merge
    (score desc) then always takes next the region whose middle leaves its image with the smallest
    share: water filling, so every image ends with about the same fraction of its candidates (a
    region is taken whole or not at all, hence "about"; the middle, not the end, keeps an image
    whose only candidate is one big region from always coming last).

    For LabOR SPL, whose candidates are the inconsistency mask M, this is the paper's rule scaled to
    a budget: a budget equal to all masks' pixels labels every M whole, a smaller one the same
    share of each image's M. For rules whose candidates tile the image (random or RIPU squares)
    every image gets about the same number of pixels. Empty queries are returned as they are.
    """
    ranked = query.ranked()
    sizes = ranked.sizes.astype(np.float64)
    if len(sizes) == 0:
        return ranked
    return RegionQuery.derived(ranked, ranked.indices, ranked.offsets, share_scores(sizes, sizes.sum()))


def share_scores(sizes, of_pixels):
    """The ``share`` spread's score of each region, ``sizes`` (float64, the image's regions in ranked
    order) out of ``of_pixels``: -(s_1 + ... + s_(j-1) + s_j / 2) / of_pixels. numpy or torch (then on
    the tensor's device)."""
    return -(sizes.cumsum(0) - sizes / 2) / of_pixels


# How far above the pool's own share (budget / free pixels) a tiling rule's image is ranked: the
# merge's water level sits at that share give or take half a square, unless images run out of squares.
SHARE_CAP_MARGIN = 1.5


def share_cap(budget_pixels: int, free_pixels: int) -> float | None:
    """The share of an image's free pixels that a tiling rule under the ``share`` spread ranks
    (``select_image``'s ``max_share``): ``SHARE_CAP_MARGIN`` x budget / the pool's free pixels, or
    None when that is all of it. Under ``share`` the merge takes from every image about the same share
    of its free pixels, budget / free pixels, so an image ranked to 1.5 times that sends what the merge
    takes and little more: a few percent of the image instead of every square of it. Whether the cut
    was far enough is known after the merge (``within_share_cap``)."""
    if budget_pixels <= 0 or free_pixels <= 0:
        return None
    share = SHARE_CAP_MARGIN * budget_pixels / free_pixels
    return share if share < 1 else None


def within_share_cap(result: BudgetResult, max_share: float) -> bool:
    """Whether a merge of queries cut at ``max_share`` took what the whole queries would have given.

    A cut query keeps every region whose share score is at least -``max_share`` (the regions it
    leaves out start past that share of the image's free pixels), so the picks are the same as without
    the cut when the budget was spent and the worst pick scores at least -``max_share``. Otherwise (an
    image ran out of squares, or the budget exceeds what the pool offers) the driver ranks again
    without the cut."""
    return result.shortfall == 0 and (not result.picks or result.picks[-1].score >= -max_share)


def _image_id(image_id) -> int:
    if isinstance(image_id, bool) or int(image_id) != image_id:
        raise TypeError(f"image ids must be integers, got {image_id!r}")
    return int(image_id)


def merge_regions(items: Iterable[tuple[int, RegionQuery]], budget_pixels: int) -> BudgetResult:
    """``GlobalBudget`` over an iterable of ``(image_id, RegionQuery)``, streamed."""
    merge = GlobalBudget(budget_pixels)
    for image_id, query in items:
        merge.add(image_id, query)
    return merge.result()


POINT_ORDERS = ("score", "rank")


def points_to_regions(query: PointQuery, height: int, width: int, order: str = "score") -> RegionQuery:
    """A point query as one-pixel regions, in the query's order.

    ``order="score"``: each region keeps its point's score, so the merge takes the best-scored
    points of the whole pool (scores must be comparable across images, as they are for one
    rule and checkpoint). ``order="rank"``: the score of the j-th point is -j, so the merge
    goes round-robin over images (every image's first point, then every second point, ...; ties by
    image id): the per-image selection order (e.g. PPL's class balance) is kept and the budget is
    spread evenly over the pool.
    """
    if order not in POINT_ORDERS:
        raise ValueError(f"unknown point order {order!r}; choose one of: {', '.join(POINT_ORDERS)}")
    ys, xs = np.asarray(query.ys, np.int64), np.asarray(query.xs, np.int64)
    if len(ys) and (ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width):
        raise ValueError(f"point outside the {height}x{width} image")
    scores = np.asarray(query.scores, np.float64) if order == "score" else -np.arange(len(ys), dtype=np.float64)
    return RegionQuery(
        height=height,
        width=width,
        indices=ys * width + xs,
        offsets=np.arange(len(ys) + 1, dtype=np.int64),
        scores=scores,
    )


def points_per_image(budget_pixels: int, height: int, width: int) -> int:
    """How many points to ask each image for so that a pool-wide budget can be spent exactly.

    One image may end up giving the whole budget, so each is asked for min(budget, H * W) points;
    the merge then keeps only what the budget needs (its memory stays ~ the budget).
    """
    if budget_pixels < 0:
        raise ValueError(f"budget_pixels must be >= 0, got {budget_pixels}")
    return int(min(budget_pixels, height * width))


def merge_points(
    items: Iterable[tuple[int, PointQuery]], budget_pixels: int, height: int, width: int, order: str = "score"
) -> BudgetResult:
    """Global point budget: ``(image_id, PointQuery)`` items (images of one size) merged as one-pixel regions."""
    merge = GlobalBudget(budget_pixels)
    for image_id, query in items:
        merge.add_points(image_id, query, height, width, order=order)
    return merge.result()
