"""Pixel selection strategies: plain PyTorch/numpy, probabilities in, queries out.

``SELECTORS`` maps each strategy's config name to its function and ``SELECTOR_KIND`` says which of
two signatures it has:

- ``"points"``: ``fn(head_probs, num_points, labeled=None, seed=0, **params) -> PointQuery``, the
  ``num_points`` best points of one image (exactly that many unless the image runs out; then
  ``shortfall`` says by how much);
- ``"regions"``: ``fn(head_probs, labeled=None, seed=0, **params) -> RegionQuery``, every candidate
  region of one image, ranked, with no per-image budget: the pool-wide pixel budget is spent by
  ``budget.GlobalBudget``, which merges the candidates of all images.

``head_probs`` is a sequence of (K, H, W) softmax maps of ONE target image, ``labeled`` an optional
bool (H, W) mask of pixels already labeled (never returned), ``seed`` makes random strategies
repeatable. ``SELECTOR_INPUTS`` says which network's outputs a strategy reads: LabOR's two-head
selector S (``"selector"``) or the segmenter G (``"segmenter"``). Point selectors can spend a
pool-wide budget too: ask each image for ``budget.points_per_image(...)`` points and merge with
``GlobalBudget.add_points`` / ``budget.merge_points``.
"""

import math

from torch.profiler import record_function

from .base import PointQuery, RegionQuery, allocate_evenly, labeled_mask
from .baselines import entropy_points, margin_points, random_points, random_regions
from .budget import (
    BudgetResult,
    GlobalBudget,
    Pick,
    merge_points,
    merge_regions,
    points_per_image,
    points_to_regions,
    share_cap,
    share_of_candidates,
    within_share_cap,
)
from .cost import clicks_for_points, clicks_for_region, clicks_for_regions
from .encoding import pack_bits, rle_decode, rle_encode, unpack_bits
from .labor import PPL_RULES, head_discrepancy, inconsistency_mask, labor_ppl, labor_spl, ppl_piece_count
from .ripu import blocked_by_labels, region_impurity, region_impurity_regions, ripu_maps, ripu_point_window

SELECTORS = {
    "labor_ppl": labor_ppl,
    "labor_spl": labor_spl,
    "random": random_points,
    "entropy": entropy_points,
    "margin": margin_points,
    "region_impurity": region_impurity,
    "region_impurity_regions": region_impurity_regions,
    "random_regions": random_regions,
}

SELECTOR_KIND = {
    "labor_ppl": "points",
    "labor_spl": "regions",
    "random": "points",
    "entropy": "points",
    "margin": "points",
    "region_impurity": "points",
    "region_impurity_regions": "regions",
    "random_regions": "regions",
}

SELECTOR_INPUTS = {
    "labor_ppl": "selector",
    "labor_spl": "selector",
    "random": "segmenter",  # only the image size is used
    "entropy": "segmenter",
    "margin": "segmenter",
    "region_impurity": "segmenter",
    "region_impurity_regions": "segmenter",
    "random_regions": "segmenter",  # only the image size is used
}


# Point selectors that ``selection.ppl_mode=whole_mask`` applies to: LabOR PPL gives one point per piece
# of its inconsistency mask, and random points buy the same count per image. That count is read from
# the selector network S (``selector_input``), so both take it from the same checkpoint's S: in round 1,
# where every trial starts from the same warmed-up models, the very same count in every image.
PPL_WHOLE_MASK_SELECTORS = ("labor_ppl", "random")
# The ``params`` entry (from ``selector_params``) that asks ``select_image`` for the whole-mask count.
WHOLE_MASK = "ppl_whole_mask"


def selector_input(name: str, selection: dict) -> str:
    """Which network's outputs the ranking feeds selector ``name`` under the ``selection`` config
    section: ``SELECTOR_INPUTS[name]``, except random points at PPL's whole-mask count, which need
    S's two heads to count the pieces of its mask."""
    if name in PPL_WHOLE_MASK_SELECTORS and selection.get("ppl_mode", "budget") == "whole_mask":
        return "selector"
    return SELECTOR_INPUTS[name]


# Region selectors whose candidates tile the unlabeled pixels (non-overlapping squares): under the
# ``share`` spread an image's share is of its free pixels, so a driver can bound, before ranking,
# the share any image can be asked for (``select_image``'s ``max_share``); LabOR SPL's share is of its
# inconsistency mask, whose size only the ranking finds.
TILING_SELECTORS = ("random_regions", "region_impurity_regions")


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
    """What a ranking actor sends back for one image: selector ``name`` applied to its ``head_probs``
    on their device (a GPU selects on the GPU; only the query reaches the host).

    Point selectors give ``num_points`` points, or with a pool-wide ``budget_pixels`` as many as the
    budget could use from one image (``points_per_image``), or under PPL's whole mask (``params``
    holding ``WHOLE_MASK``, from ``selector_params``) as many as the pieces of LabOR's inconsistency
    mask in ``head_probs`` (S's two heads): LabOR PPL one per piece, random points that many. Region selectors give their best regions,
    rescored by their share of the image's candidates when ``region_spread`` is ``"share"``, up to
    the first ones that cover the budget (``RegionQuery.head``: the global merge can use no more from
    one image); without a budget (``budget_pixels`` 0: LabOR SPL's whole mask) all of them, with their
    own scores. A tiling selector under ``share`` stops sooner with ``max_share``: at the first
    regions that cover ``max_share`` of the image's free pixels (``budget.share_cap``; the driver
    checks that its merge needed no more, ``budget.within_share_cap``), and never runs its greedy
    pass past what it sends.
    """
    select, params = SELECTORS[name], dict(params or {})
    whole_mask = params.pop(WHOLE_MASK, False)
    with record_function(f"select:{name}"):  # a row of its own in a profile (benchmarks.profile_selectors)
        if whole_mask:  # PPL's whole mask: one point per piece of M, or as many random points
            if name == "labor_ppl":
                return select(head_probs, None, labeled=labeled, seed=seed, **params)
            return select(head_probs, ppl_piece_count(head_probs, labeled), labeled=labeled, seed=seed, **params)
        if SELECTOR_KIND[name] == "regions":
            if not budget_pixels:  # no budget (LabOR SPL's whole mask): every candidate region is wanted
                return select(head_probs, labeled=labeled, seed=seed, **params)
            cap = budget_pixels
            if max_share is not None and name in TILING_SELECTORS and region_spread == "share":
                height, width = head_probs[0].shape[-2:]
                free = height * width - (0 if labeled is None else int(labeled.sum()))
                cap = min(cap, math.ceil(max_share * free))
            return select(head_probs, labeled=labeled, seed=seed, max_pixels=cap, spread=region_spread, **params)
        height, width = head_probs[0].shape[-2:]
        wanted = points_per_image(budget_pixels, height, width) if budget_pixels else num_points
        return select(head_probs, wanted, labeled=labeled, seed=seed, **params)


# Selectors that take a window side ``k``: RIPU's points (its own window, ``selection.point_window``)
# and the square regions (``selection.region_size``).
WINDOWED = ("region_impurity", "region_impurity_regions", "random_regions")


def selector_params(name: str, selection: dict, width: int) -> dict:
    """Keyword parameters of selector ``name`` for images ``width`` pixels wide, from the ``selection``
    config section: LabOR PPL's rule (``ppl_rule``), PPL's whole-mask count (``ppl_mode``, for
    ``select_image``), the point window of ``region_impurity`` (RIPU's 65 at 2048 wide, scaled,
    unless ``point_window`` is set) and the square side of the region selectors (``region_size``)."""
    params: dict = {}
    if name == "labor_ppl":
        params["rule"] = selection.get("ppl_rule", "per_piece")
    if name in PPL_WHOLE_MASK_SELECTORS and selection.get("ppl_mode", "budget") == "whole_mask":
        params[WHOLE_MASK] = True
    if name == "region_impurity":
        params["k"] = int(selection.get("point_window") or 0) or ripu_point_window(width)
    elif name in WINDOWED:
        params["k"] = int(selection["region_size"])
    return params


__all__ = [
    "PPL_RULES",
    "PPL_WHOLE_MASK_SELECTORS",
    "SELECTORS",
    "SELECTOR_INPUTS",
    "SELECTOR_KIND",
    "TILING_SELECTORS",
    "WHOLE_MASK",
    "WINDOWED",
    "BudgetResult",
    "GlobalBudget",
    "Pick",
    "PointQuery",
    "RegionQuery",
    "allocate_evenly",
    "blocked_by_labels",
    "clicks_for_points",
    "clicks_for_region",
    "clicks_for_regions",
    "entropy_points",
    "head_discrepancy",
    "inconsistency_mask",
    "labeled_mask",
    "labor_ppl",
    "labor_spl",
    "margin_points",
    "merge_points",
    "merge_regions",
    "pack_bits",
    "points_per_image",
    "points_to_regions",
    "ppl_piece_count",
    "random_points",
    "random_regions",
    "region_impurity",
    "region_impurity_regions",
    "ripu_maps",
    "ripu_point_window",
    "rle_decode",
    "rle_encode",
    "select_image",
    "selector_input",
    "selector_params",
    "share_cap",
    "share_of_candidates",
    "unpack_bits",
    "within_share_cap",
]
