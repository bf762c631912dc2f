"""Applying a selection rule to one image: what a ranking actor sends back for it."""

from __future__ import annotations

import math

from torch.profiler import record_function

from .base import PointQuery, RegionQuery
from .budget import points_per_image
from .rules import REGIONS, RULES


def select_image(
    name: str,
    head_probs,
    *,
    num_points: int = 0,
    budget_pixels: int = 0,
    labeled=None,
    seed: int = 0,
    params: dict | None = None,
    region_spread: str = "share",
    max_share: float | None = None,
) -> PointQuery | RegionQuery:
    """Selection rule ``name`` (``rules.RULES``) applied to one image's ``head_probs`` on their device
    (a GPU selects on the GPU; only the query reaches the host).

    Point rules give ``num_points`` points, or with a pool-wide ``budget_pixels`` as many as the
    budget could use from one image (``points_per_image``). Region rules give their best regions,
    rescored by their share of the image's candidates when ``region_spread`` is ``"share"``, up to
    the first ones that cover the budget (``RegionQuery.head``: the global merge can use no more from
    one image); without a budget (``budget_pixels`` 0: LabOR SPL's whole mask) all of them, with their
    own scores. A tiling rule under ``share`` stops sooner with ``max_share``: at the first regions
    that cover ``max_share`` of the image's free pixels (``budget.share_cap``; the driver checks that
    its merge needed no more, ``budget.within_share_cap``), and never runs its greedy pass past what
    it sends.
    """
    rule, params = RULES[name], params or {}
    select = rule.select
    with record_function(f"select:{name}"):  # a row of its own in a profile (benchmarks.profile_selectors)
        if rule.kind == REGIONS:
            if not budget_pixels:  # no budget (LabOR SPL's whole mask): every candidate region is wanted
                return select(head_probs, labeled=labeled, seed=seed, **params)
            cap = budget_pixels
            if max_share is not None and rule.tiles and region_spread == "share":
                height, width = head_probs[0].shape[-2:]
                free = height * width - (0 if labeled is None else int(labeled.sum()))
                cap = min(cap, math.ceil(max_share * free))
            return select(head_probs, labeled=labeled, seed=seed, max_pixels=cap, spread=region_spread, **params)
        height, width = head_probs[0].shape[-2:]
        wanted = points_per_image(budget_pixels, height, width) if budget_pixels else num_points
        return select(head_probs, wanted, labeled=labeled, seed=seed, **params)
