"""Selection that stops at what a budget can use: the greedy pass with a pixel cover, the cut of a
tiling rule at a share of its free pixels (and the driver's check that the cut changed nothing),
LabOR SPL's ranking, share and head on the maps' device."""

import numpy as np
import pytest
import torch

from pixel_selectors import (
    GlobalBudget,
    labor_spl,
    random_regions,
    region_impurity_regions,
    select_image,
    share_cap,
    share_of_candidates,
    within_share_cap,
)
from pixel_selectors.budget import SHARE_CAP_MARGIN, share_scores
from pixel_selectors.regions import greedy_spread, greedy_spread_rounds, priority_order

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None


def smooth_softmax(seed, classes=6, height=48, width=80, heads=1):
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(heads, classes, height // 8, width // 8, generator=generator) * 3
    logits = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return [head.softmax(0) for head in logits]


if given is not None:

    @settings(max_examples=60, deadline=None)
    @given(
        height=st.integers(1, 20),
        width=st.integers(1, 20),
        levels=st.integers(1, 5),
        reach=st.integers(0, 3),
        cover=st.integers(0, 60),
        seed=st.integers(0, 10_000),
    )
    def test_rounds_stop_where_the_sequential_pass_covers_the_same_pixels(height, width, levels, reach, cover, seed):
        """Plateaus and chains (few score levels), weights 1..9 as the pixels of clipped squares."""
        generator = torch.Generator().manual_seed(seed)
        score = torch.randint(0, levels, (height * width,), generator=generator).double()
        free = torch.rand(height, width, generator=generator) < 0.85
        weights = torch.randint(1, 10, (height * width,), generator=generator)
        order = priority_order(score, free)
        expected = greedy_spread(order.numpy(), height, width, reach, weights=weights.numpy(), cover=cover)
        assert greedy_spread_rounds(order, height, width, reach, weights=weights, cover=cover).tolist() == expected
        whole = greedy_spread(order.numpy(), height, width, reach)
        assert expected == whole[: len(expected)]  # a prefix of the whole pass ...
        covered = weights[expected].sum().item() if expected else 0
        assert covered >= cover or expected == whole  # ... covering ``cover``, or all there is ...
        assert not expected or covered - weights[expected[-1]].item() < cover  # ... and no more picks than that


@pytest.mark.parametrize("name", ["random_regions", "region_impurity_regions"])
def test_a_tiling_selector_cut_at_a_share_is_the_head_of_its_whole_query(name):
    probs = smooth_softmax(3)
    labeled = torch.zeros(48, 80, dtype=torch.bool)
    labeled[5:20, 10:30] = True
    free = int((~labeled).sum())
    select = {"random_regions": random_regions, "region_impurity_regions": region_impurity_regions}[name]
    whole = select(probs, labeled=labeled, seed=4, spread="share")
    assert np.array_equal(whole.scores, share_scores(whole.sizes.astype(float), free))  # share of the free pixels
    for max_share in (0.01, 0.05, 0.2):
        cut = select_image(
            name, probs, budget_pixels=10_000, labeled=labeled, seed=4, params={"k": 3}, max_share=max_share
        )
        assert cut.num_pixels >= max_share * free > cut.num_pixels - int(cut.sizes[-1])  # the fewest that cover it
        assert np.array_equal(cut.indices, whole.indices[: cut.num_pixels])
        assert np.array_equal(cut.scores, whole.scores[: len(cut)])
        assert cut.scores[-1] >= -max_share - 9 / free / 2 and (
            len(whole) == len(cut) or whole.scores[len(cut)] < -max_share
        )
    # The budget still bounds it, and the "score" spread ignores the share.
    assert (
        select_image(name, probs, budget_pixels=30, labeled=labeled, seed=4, params={"k": 3}, max_share=0.5).num_pixels
        < 40
    )
    by_score = select_image(
        name, probs, budget_pixels=200, labeled=labeled, seed=4, params={"k": 3}, region_spread="score", max_share=0.01
    )
    assert by_score.num_pixels >= 200 and np.array_equal(
        by_score.indices, select(probs, labeled=labeled, seed=4).head(200).indices
    )


def pool_queries(max_share, images=12, budget=400):
    out = []
    for image_id in range(images):
        probs = (torch.full((2, 24, 40), 0.5),)
        labeled = torch.zeros(24, 40, dtype=torch.bool)
        labeled[:, :image_id] = True  # images with fewer free pixels than others
        out.append(
            (
                image_id,
                select_image(
                    "random_regions",
                    probs,
                    budget_pixels=budget,
                    labeled=labeled,
                    seed=image_id,
                    params={"k": 3},
                    max_share=max_share,
                ),
            )
        )
    return out


def merged(queries, budget):
    merge = GlobalBudget(budget)
    for image_id, query in queries:
        merge.add(image_id, query)
    return merge.result()


def picks(result):
    return [(p.image_id, p.region, p.pixels.tolist()) for p in result.picks]


def test_the_merge_of_cut_queries_equals_the_merge_of_whole_ones_when_it_says_so():
    free = sum(24 * 40 - 24 * i for i in range(12))
    budget = 400
    max_share = share_cap(budget, free)
    assert max_share == pytest.approx(SHARE_CAP_MARGIN * budget / free)
    cut, whole = merged(pool_queries(max_share), budget), merged(pool_queries(None), budget)
    assert within_share_cap(cut, max_share) and picks(cut) == picks(whole)
    assert sum(q.num_pixels for _, q in pool_queries(max_share)) < sum(q.num_pixels for _, q in pool_queries(None)) / 5
    # A cut too tight for the budget is noticed: the driver then ranks again without it.
    tight = merged(pool_queries(max_share / 3), budget)
    assert not within_share_cap(tight, max_share / 3) and picks(tight) != picks(whole)
    short = merged(pool_queries(max_share), 10**6)  # more than the pool offers
    assert short.shortfall > 0 and not within_share_cap(short, max_share)
    assert share_cap(0, free) is None and share_cap(budget, 0) is None and share_cap(free, free) is None


@pytest.mark.parametrize("spread", ["score", "share"])
@pytest.mark.parametrize("budget", [1, 50, 400, 10**6])
def test_spl_ranks_shares_and_cuts_on_the_device_as_the_query_would(spread, budget):
    probs = smooth_softmax(5, heads=2)
    labeled = torch.zeros(48, 80, dtype=torch.bool)
    labeled[::7] = True  # cuts pieces of the mask into several regions
    whole = labor_spl(probs, labeled=labeled)
    expected = (share_of_candidates(whole) if spread == "share" else whole).head(budget)
    got = select_image("labor_spl", probs, budget_pixels=budget, labeled=labeled, region_spread=spread)
    assert len(whole) > 3 and (budget < whole.num_pixels) == (got.num_pixels < whole.num_pixels)
    assert np.array_equal(got.indices, expected.indices) and np.array_equal(got.offsets, expected.offsets)
    assert np.array_equal(got.scores, expected.scores)


class _BlankTruth:
    def label(self, index):
        return torch.zeros(24, 40, dtype=torch.long)


def test_a_round_ranks_again_without_the_cut_when_the_merge_needed_more(monkeypatch, tmp_path):
    """select_round asks tiling rules for a share of each image; a share too small for the
    budget is caught after the merge and the round is ranked again without the cut."""
    from experiment_config import load_config
    from orchestrator.labels.oracle import Oracle
    from orchestrator.labels.store import LabelStore
    from orchestrator.round import selection as experiment
    from orchestrator.round.ranking import RankingStats

    cfg = load_config(
        None,
        {
            "selection.rule": "random_regions",
            "selection.budget_fraction": 0.05,
            "selection.region_size": 3,
            "data.height": 24,
            "data.width": 40,
            "output_dir": str(tmp_path),
        },
    )
    asked = []

    def rank_in_process(
        checkpoint, config, pool_size, labeled, consume, round_index, budget_pixels, progress, ranker, max_share=None
    ):  # the actors' select_image, without Ray
        asked.append(max_share)
        for image_id in range(pool_size):
            consume(
                image_id,
                select_image(
                    "random_regions",
                    [torch.zeros(2, 24, 40)],
                    budget_pixels=budget_pixels,
                    seed=image_id,
                    params={"k": 3},
                    max_share=max_share,
                ),
            )
        return RankingStats(images=pool_size, actors=1, startup_s=0.0, ranking_s=1.0, actors_replaced=0)

    def run(tag, cap):
        monkeypatch.setattr(experiment, "share_cap", cap)
        lines, store = [], LabelStore(tmp_path / tag)
        labels, shortfall = experiment.select_round(
            "unused", cfg, 8, store, Oracle(_BlankTruth()), 1, 8 * 24 * 40, lines.append, None
        )
        return {(p.image_id, tuple(p.ys), tuple(p.xs)) for p in labels}, shortfall, lines

    monkeypatch.setattr(experiment, "rank_pool", rank_in_process)
    budget = round(0.05 * 8 * 24 * 40)
    whole, _, _ = run("whole", lambda *args: None)
    assert asked == [None] and sum(len(ys) for _, ys, _ in whole) == budget
    asked.clear()
    cut, shortfall, lines = run("cut", share_cap)
    assert asked == [pytest.approx(SHARE_CAP_MARGIN * 0.05)] and cut == whole and shortfall == 0
    assert not any("ranking again" in line for line in lines)
    asked.clear()
    tight, shortfall, lines = run("tight", lambda budget, free: share_cap(budget, free) / 4)
    assert asked == [pytest.approx(SHARE_CAP_MARGIN * 0.05 / 4), None] and tight == whole and shortfall == 0
    assert any("ranking again with every square" in line for line in lines)
