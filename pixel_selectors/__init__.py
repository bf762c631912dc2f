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

from .base import PointQuery, RegionQuery, allocate_evenly, labeled_mask
from .baselines import entropy_points, margin_points, random_points, random_regions
from .budget import (BudgetResult, GlobalBudget, Pick, merge_points, merge_regions, points_per_image,
                     points_to_regions, share_of_candidates)
from .cost import clicks_for_points, clicks_for_region, clicks_for_regions
from .encoding import pack_bits, rle_decode, rle_encode, unpack_bits
from .labor import head_discrepancy, inconsistency_mask, labor_ppl, labor_spl
from .ripu import region_impurity, region_impurity_regions, ripu_maps

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



def select_image(name: str, head_probs, *, num_points: int = 0, budget_pixels: int = 0, labeled=None, seed: int = 0,
                 params: dict | None = None, region_spread: str = "share") -> PointQuery | RegionQuery:
    """What a ranking actor sends back for one image: selector ``name`` applied to its ``head_probs``
    on their device (a GPU selects on the GPU; only the query reaches the host).

    Point selectors give ``num_points`` points, or with a pool-wide ``budget_pixels`` as many as the
    budget could use from one image (``points_per_image``). Region selectors give their ranked
    candidates, rescored by ``share_of_candidates`` when ``region_spread`` is ``"share"`` (that needs
    all of the image's candidates, so it comes first), cut to the best ones covering the budget
    (``RegionQuery.head``: the global merge can use no more from one image).
    """
    select, params = SELECTORS[name], params or {}
    if SELECTOR_KIND[name] == "regions":
        query = select(head_probs, labeled=labeled, seed=seed, **params)
        if region_spread == "share":
            query = share_of_candidates(query)
        return query.head(budget_pixels)
    height, width = head_probs[0].shape[-2:]
    wanted = points_per_image(budget_pixels, height, width) if budget_pixels else num_points
    return select(head_probs, wanted, labeled=labeled, seed=seed, **params)


__all__ = ["SELECTORS", "SELECTOR_INPUTS", "SELECTOR_KIND", "BudgetResult", "GlobalBudget", "Pick", "PointQuery",
           "RegionQuery", "allocate_evenly", "labeled_mask", "select_image", "share_of_candidates", "clicks_for_points", "clicks_for_region", "clicks_for_regions",
           "entropy_points", "head_discrepancy", "inconsistency_mask", "labor_ppl", "labor_spl", "margin_points",
           "merge_points", "merge_regions", "pack_bits", "points_per_image", "points_to_regions", "random_points",
           "random_regions", "region_impurity", "region_impurity_regions", "ripu_maps", "rle_decode", "rle_encode",
           "unpack_bits"]
