"""Selecting one round's pixels: rank the pool on the ranking actors, spend the round's budget (per image,
or merged over the pool), and reveal the chosen pixels through the oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from experiment_config.schema import ExperimentConfig
from orchestrator.cluster.storage import open_storage
from orchestrator.labels.oracle import Oracle
from orchestrator.labels.store import LabeledPixels, LabelStore, storage_settings
from orchestrator.round.ranking import rank_pool
from pixel_selectors.base import PointQuery
from pixel_selectors.budget import GlobalBudget, share_cap, within_share_cap
from pixel_selectors.cost import clicks_by_image, clicks_for_points
from pixel_selectors.rules import REGIONS, RULES


def select_round(
    checkpoint: str,
    cfg: ExperimentConfig,
    pool_size: int,
    store: LabelStore,
    oracle: Oracle,
    round_index: int,
    pool_pixels: int,
    progress: Callable[[str], None],
    ranker: type | None = None,
) -> tuple[list[LabeledPixels], int]:
    """Rank the pool, spend the round's budget, and reveal the chosen pixels: (labels, shortfall).

    Per-image point budgets take each image's points as they are. A global pixel budget
    (``selection.budget_fraction``) is met by merging every image's candidates on the driver
    (``GlobalBudget``: memory grows with the budget, not the pool), best score first. LabOR SPL's
    whole-mask mode (``selection.spl_mode=whole_mask``) has no budget: every image's mask is bought,
    and what it cost (pixels, clicks) is the outcome. ``ranker``: the ranking actors' class
    (``Ranker`` unless a benchmark brings its own pool and network).
    """
    width = cfg.data.width
    budget_pixels = int(round(cfg.selection.budget_fraction * pool_pixels))
    rule = RULES[cfg.selection.rule]
    regions = rule.kind == REGIONS
    per_image: list[tuple[int, PointQuery]] = []
    merged = GlobalBudget(budget_pixels) if budget_pixels else None

    def consume(image_id: int, query) -> None:
        if merged is None:
            per_image.append((image_id, query))
        elif regions:
            merged.add(image_id, query)
        else:
            merged.add_points(image_id, query, cfg.data.height, width)

    # Actors read the labeled pixels of their own images from the store (pushed to storage.uri first,
    # so an actor on another node finds every earlier round).
    open_storage(cfg).push_folder(store.root, "round-*.parquet")
    labeled = store.reader(upto_round=round_index - 1, storage=storage_settings(cfg))
    # Squares that tile an image, spread by share: each image ranks only about the share the merge can
    # take (budget / the pool's free pixels, with a margin), not every square of the image.
    max_share = None
    if merged is not None and rule.tiles and cfg.selection.region_spread == "share":
        labeled_before = int(store.totals(upto_round=round_index - 1)["labeled_pixels"])
        max_share = share_cap(budget_pixels, pool_pixels - labeled_before)
    stats = rank_pool(
        checkpoint,
        cfg,
        pool_size,
        labeled,
        consume,
        round_index=round_index,
        budget_pixels=budget_pixels,
        progress=progress,
        ranker=ranker,
        max_share=max_share,
    )
    result = merged.result() if merged is not None else None
    if max_share is not None and not within_share_cap(result, max_share):
        progress(
            f"round {round_index}: the budget needs more than {max_share:.2%} of some images' free pixels; "
            f"ranking again with every square"
        )
        merged = GlobalBudget(budget_pixels)
        stats = rank_pool(
            checkpoint,
            cfg,
            pool_size,
            labeled,
            consume,
            round_index=round_index,
            budget_pixels=budget_pixels,
            progress=progress,
            ranker=ranker,
        )
        result = merged.result()
    progress(
        f"round {round_index}: ranked {stats.images} images with {stats.actors} actor(s) in "
        f"{stats.startup_s + stats.ranking_s:.1f} s ({stats.startup_s:.1f} s actor start-up, "
        f"{stats.images_per_s:.1f} images/s after)"
    )
    if merged is None and regions:  # SPL's whole mask: every candidate region of every image
        # Bought whole, so each region's clicks were counted on its ranking actor (``cost.counted``).
        clicks = clicks_by_image(per_image, cfg.data.height, width)
        labeled = []
        for image_id, query in sorted(per_image, key=lambda item: item[0]):
            if query.num_pixels:
                flat = query.indices.astype(np.int64)
                labeled.append(
                    oracle.reveal(image_id, flat // width, flat % width, clicks=clicks[image_id], regions=True)
                )
        return labeled, 0
    if merged is None:
        labeled = [oracle.reveal(i, q.ys, q.xs) for i, q in sorted(per_image, key=lambda item: item[0])]
        return labeled, sum(q.shortfall for _, q in per_image)
    labeled = []
    bought = result.regions_by_image()
    # What the merge took (whole regions, the last one possibly cut), counted for the whole round at once.
    region_clicks = clicks_by_image(bought.items(), cfg.data.height, width) if regions else {}
    for image_id, pieces in bought.items():
        flat = np.concatenate(pieces)
        clicks = region_clicks[image_id] if regions else clicks_for_points(len(flat))
        labeled.append(oracle.reveal(image_id, flat // width, flat % width, clicks=clicks, regions=regions))
    return labeled, int(result.shortfall)
