import math

import numpy as np
import pytest
import torch

from pixel_selectors import POINTS, RULES, allocate_evenly, inconsistency_mask, labor_ppl

# Known-answer maps: K=3 classes on a 2x4 image; per pixel (p1, p2).
PIXELS = [
    ([0.7, 0.3, 0], [0.4, 0.6, 0]),  # 0: heads disagree (0 vs 1); mean [.55, .45, 0] -> class 0
    ([0.9, 0.1, 0], [0.2, 0.8, 0]),  # 1: disagree; mean [.55, .45, 0] -> class 0
    ([0.8, 0.2, 0], [0.45, 0.55, 0]),  # 2: disagree; mean [.625, .375, 0] -> class 0
    ([1, 0, 0], [1, 0, 0]),  # 3: agree
    ([0, 0.6, 0.4], [0, 0.3, 0.7]),  # 4: disagree; mean [0, .45, .55] -> class 2
    ([0, 0, 1], [0, 0, 1]),  # 5: agree
    ([0.1, 0.5, 0.4], [0.1, 0.2, 0.7]),  # 6: disagree; mean [.1, .35, .55] -> class 2
    ([0, 1, 0], [0, 1, 0]),  # 7: agree
]


def heads():
    p1 = torch.tensor([p for p, _ in PIXELS], dtype=torch.float32).T.reshape(3, 2, 4)
    p2 = torch.tensor([q for _, q in PIXELS], dtype=torch.float32).T.reshape(3, 2, 4)
    return p1, p2


def flat(query):
    return (query.ys.astype(int) * 4 + query.xs.astype(int)).tolist()


def test_inconsistency_mask():
    p1, p2 = heads()
    assert inconsistency_mask(p1, p2).flatten().tolist() == [True, True, True, False, True, False, True, False]


def test_ppl_one_point_per_class_nearest_the_prototype():
    # class 0: prototype [.575, .425, 0]; pixels 0 and 1 are nearest (tie -> lower index first).
    # class 2: prototype [.05, .4, .55]; pixels 4 and 6 tie -> 4.
    query = labor_ppl(heads(), 2)
    assert flat(query) == [0, 4]
    assert query.shortfall == 0
    d0 = np.hypot(0.025, 0.025)
    assert query.scores[0] == pytest.approx(1 / (1 + d0), rel=1e-5)


def test_ppl_share_moves_to_classes_with_candidates_left():
    # 4 points over classes {0: 3 candidates, 2: 2}: equal split 2 + 2.
    assert flat(labor_ppl(heads(), 4)) == [0, 1, 4, 6]
    # 5 points: class 2 saturates at 2, class 0 gives 3.
    assert flat(labor_ppl(heads(), 5)) == [0, 1, 2, 4, 6]


def test_ppl_tops_up_outside_the_mask_to_spend_the_budget_exactly():
    query = labor_ppl(heads(), 6)
    assert flat(query) == [0, 1, 2, 4, 6, 3]  # consistent pixels all have discrepancy 0 -> lowest index
    assert query.shortfall == 0
    assert query.scores[-1] < 0 < query.scores[:-1].min()


def test_ppl_reports_shortfall_when_the_image_runs_out():
    query = labor_ppl(heads(), 9)
    assert sorted(flat(query)) == list(range(8))
    assert query.shortfall == 1


def test_ppl_never_reselects_labeled_pixels():
    labeled = torch.zeros(2, 4, dtype=torch.bool)
    labeled[0, 0] = True
    labeled[1, 0] = True  # pixel 4
    query = labor_ppl(heads(), 3, labeled=labeled)
    assert 0 not in flat(query) and 4 not in flat(query)
    assert flat(query) == [1, 2, 6]


def test_ppl_is_deterministic_and_exact_on_random_maps():
    torch.manual_seed(1)
    logits1, logits2 = torch.randn(5, 16, 16), torch.randn(5, 16, 16)
    probs = (logits1.softmax(0), logits2.softmax(0))
    a, b = labor_ppl(probs, 40), labor_ppl(probs, 40)
    assert flat(a) == flat(b) and len(a) == 40
    assert len(set(zip(a.ys.tolist(), a.xs.tolist()))) == 40


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(
    classes=st.integers(1, 6),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    points=st.integers(0, 90),
    seed=st.integers(0, 10_000),
    nan_pixels=st.integers(0, 3),
    as_logits=st.booleans(),
)
def test_ppl_spends_exactly_the_budget_on_any_input(classes, height, width, points, seed, nan_pixels, as_logits):
    """Exact spending and no repeats for any map: probabilities or raw logits (distances above 2),
    and NaN pixels (a diverged model) -- a NaN once made PPL return more points than asked."""
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(classes, height, width, generator=generator) * 3 for _ in range(2)]
    if not as_logits:
        maps = [m.softmax(0) for m in maps]
    for n in range(min(nan_pixels, height * width)):
        maps[n % 2][:, n // width, n % width] = float("nan")
    labeled = torch.rand(height, width, generator=generator) < 0.2
    query = labor_ppl(maps, points, labeled=labeled)
    free = int((~labeled).sum())
    assert len(query) == min(points, free) and query.shortfall == points - len(query)
    picked = set(zip(query.ys.tolist(), query.xs.tolist()))
    assert len(picked) == len(query) and not any(labeled[y, x] for y, x in picked)


def test_ppl_rejects_wrong_head_count():
    p1, _ = heads()
    with pytest.raises(ValueError, match="expected 2 heads"):
        labor_ppl((p1,), 2)


@pytest.mark.parametrize(
    "capacities, total, expected",
    [
        ([5, 1, 0, 3], 7, [3, 1, 0, 3]),
        ([4, 4, 4], 5, [2, 2, 1]),
        ([1, 1], 10, [1, 1]),
        ([0, 0], 3, [0, 0]),
        ([2, 9], 0, [0, 0]),
    ],
)
def test_allocate_evenly(capacities, total, expected):
    assert allocate_evenly(capacities, total) == expected


def test_registry_names():
    assert RULES["labor_ppl"].select is labor_ppl


# --- baselines ------------------------------------------------------------------------------

from pixel_selectors import entropy_points, margin_points, random_points


def one_head(rows):
    """(K=3, 1, W) probabilities from per-pixel rows."""
    return (torch.tensor(rows, dtype=torch.float32).T.reshape(3, 1, len(rows)),)


def test_entropy_picks_the_flattest_pixels():
    probs = one_head([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0], [0.8, 0.1, 0.1]])
    assert entropy_points(probs, 2).xs.tolist() == [1, 2]


def test_margin_picks_the_closest_top_two():
    probs = one_head([[0.9, 0.1, 0], [0.45, 0.44, 0.11], [0.6, 0.4, 0], [0.5, 0.3, 0.2]])
    assert margin_points(probs, 2).xs.tolist() == [1, 3]  # margins .01 and .2


def test_random_is_seeded_exact_and_skips_labeled():
    probs = one_head([[1, 0, 0]] * 10)
    labeled = torch.zeros(1, 10, dtype=torch.bool)
    labeled[0, :5] = True
    a = random_points(probs, 3, labeled=labeled, seed=7)
    assert a.xs.tolist() == random_points(probs, 3, labeled=labeled, seed=7).xs.tolist()
    assert len(a) == 3 and min(a.xs) >= 5
    assert random_points(probs, 8, labeled=labeled, seed=7).shortfall == 3
    draws = {tuple(random_points(probs, 3, seed=s).xs.tolist()) for s in range(5)}
    assert len(draws) > 1  # the seed matters


# --- registry ---------------------------------------------------------------------------------

from pixel_selectors import (
    REGIONS,
    SEGMENTER,
    SELECTOR_NETWORK,
    RegionQuery,
    labor_spl,
    random_regions,
    region_impurity,
    region_impurity_regions,
)


def test_registry_kinds_and_inputs_cover_every_rule():
    assert {rule.kind for rule in RULES.values()} == {POINTS, REGIONS}
    assert RULES["labor_spl"].kind == REGIONS and RULES["labor_spl"].reads == SELECTOR_NETWORK
    assert RULES["region_impurity"].kind == POINTS and RULES["region_impurity"].reads == SEGMENTER
    assert RULES["region_impurity_regions"].kind == REGIONS and RULES["region_impurity_regions"].select is (
        region_impurity_regions
    )
    assert RULES["random_regions"].kind == REGIONS and RULES["random_regions"].select is random_regions
    assert RULES["labor_spl"].select is labor_spl and RULES["region_impurity"].select is region_impurity


def test_every_selector_honours_its_signature():
    torch.manual_seed(0)
    probs = (torch.randn(3, 6, 7).softmax(0), torch.randn(3, 6, 7).softmax(0))
    labeled = torch.zeros(6, 7, dtype=torch.bool)
    labeled[2, :] = True
    for rule in RULES.values():
        select = rule.select
        if rule.kind == POINTS:
            query = select(probs, 5, labeled=labeled, seed=3)
            assert len(query) == 5 and query.shortfall == 0
            assert not labeled[
                torch.as_tensor(query.ys, dtype=torch.long), torch.as_tensor(query.xs, dtype=torch.long)
            ].any()
        else:
            query = select(probs, labeled=labeled, seed=3)
            assert isinstance(query, RegionQuery) and (query.height, query.width) == (6, 7)
            assert not (query.mask() & labeled.numpy()).any()
            assert (np.diff(query.scores) <= 0).all()  # ranked


# --- LabOR SPL ---------------------------------------------------------------------------------


def spl_heads():
    """K=3 on a 4x6 image; heads agree ([1,0,0]) except on three blobs of M:

    . . . . . .     A = {0,1,6,7}   2x2 square, p1=[.6,.4,0] p2=[.4,.6,0]   d = .4/3 = .1333
    . . . . . .     B = {9,16,23}   a diagonal (one 8-connected piece), p1=[1,0,0] p2=[0,1,0]  d = 2/3
    . . . . . .     C = {18}        p1=[.55,.45,0] p2=[.45,.55,0]  d = .2/3 = .0667
    . . . . . .
    """
    p1 = torch.zeros(3, 4, 6)
    p1[0] = 1
    p2 = p1.clone()
    for flat_index, a, b in (
        [(i, [0.6, 0.4, 0], [0.4, 0.6, 0]) for i in (0, 1, 6, 7)]
        + [(i, [1, 0, 0], [0, 1, 0]) for i in (9, 16, 23)]
        + [(18, [0.55, 0.45, 0], [0.45, 0.55, 0])]
    ):
        y, x = divmod(flat_index, 6)
        p1[:, y, x] = torch.tensor(a)
        p2[:, y, x] = torch.tensor(b)
    return p1, p2


def regions_of(query):
    return [r.tolist() for r in query.regions()]


def test_spl_regions_are_the_8_connected_pieces_of_m_ranked_by_mean_discrepancy():
    query = labor_spl(spl_heads())
    assert regions_of(query) == [[9, 16, 23], [0, 1, 6, 7], [18]]  # B, A, C
    assert query.scores.tolist() == pytest.approx([2 / 3, 0.4 / 3, 0.2 / 3], rel=1e-6)


@pytest.mark.parametrize(
    "score, expected, values",
    [
        ("size", [[0, 1, 6, 7], [9, 16, 23], [18]], [4, 3, 1]),
        ("sum_discrepancy", [[9, 16, 23], [0, 1, 6, 7], [18]], [2.0, 1.6 / 3, 0.2 / 3]),
    ],
)
def test_spl_other_scores(score, expected, values):
    query = labor_spl(spl_heads(), score=score)
    assert regions_of(query) == expected
    assert query.scores.tolist() == pytest.approx(values, rel=1e-6)


def test_spl_skips_labeled_pixels_and_splits_pieces_they_cut():
    labeled = torch.zeros(4, 6, dtype=torch.bool)
    labeled[0, 1] = True  # pixel 1: A shrinks to {0, 6, 7}, still connected
    labeled[2, 4] = True  # pixel 16: B falls into {9} and {23} (Chebyshev distance 2)
    query = labor_spl(spl_heads(), labeled=labeled)
    assert regions_of(query) == [[9], [23], [0, 6, 7], [18]]  # equal scores keep raster order
    assert regions_of(labor_spl(spl_heads(), labeled=labeled, min_pixels=2)) == [[0, 6, 7]]


def test_spl_is_deterministic_and_refuses_bad_arguments():
    torch.manual_seed(2)
    probs = (torch.randn(4, 12, 12).softmax(0), torch.randn(4, 12, 12).softmax(0))
    a, b = labor_spl(probs), labor_spl(probs)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.scores, b.scores)
    assert a.mask().tolist() == inconsistency_mask(*probs).tolist()  # with nothing labeled, all of M
    with pytest.raises(ValueError, match="unknown SPL score"):
        labor_spl(probs, score="area")
    with pytest.raises(ValueError, match="expected 2 heads"):
        labor_spl(probs[:1])


# --- RIPU -------------------------------------------------------------------------------------


def ripu_map():
    """K=2 on 5x5: every pixel p=[.9,.1] except (1,1)=[.55,.45] and (2,2)=[.4,.6].

    Only (2,2) predicts class 1, so the 3x3 impurity P is H(8/9, 1/9)/ln2 for the nine pixels of
    rows 1-3 x cols 1-3 (their windows hold (2,2) and nine in-image pixels) and 0 elsewhere.
    Uncertainty U = H(p)/ln2: .9928 at (1,1) > .9710 at (2,2) > .4690 elsewhere.
    """
    probs = torch.tensor([0.9, 0.1]).reshape(2, 1, 1).repeat(1, 5, 5)
    probs[:, 1, 1] = torch.tensor([0.55, 0.45])
    probs[:, 2, 2] = torch.tensor([0.4, 0.6])
    return (probs,)


def h2(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


PURITY = h2(1 / 9)


def pixel_flat(query, width=5):
    return (query.ys.astype(int) * width + query.xs.astype(int)).tolist()


def test_ripu_points_known_answer():
    # P*U ranks (1,1)=6 first, (2,2)=12 second, then the other seven pixels of the block (ties by index).
    plain = region_impurity(ripu_map(), 3, suppress=False)
    assert pixel_flat(plain) == [6, 12, 7]
    assert plain.scores[0] == pytest.approx(PURITY * h2(0.45), rel=1e-5)
    # RIPU suppresses the 3x3 window of each pick: 6 blocks 12 and 7; next free is 8 = (1,3), then
    # 16 = (3,1) (two rows from both picks).
    assert pixel_flat(region_impurity(ripu_map(), 3)) == [6, 8, 16]


def test_ripu_points_top_up_after_suppression_to_spend_exactly():
    # After 6, 8, 16, 18 every unlabeled pixel is within one of a pick; the 5th point is the best
    # skipped one, 12, scored P*U - 1 so it ranks below the regular points.
    query = region_impurity(ripu_map(), 5)
    assert pixel_flat(query) == [6, 8, 16, 18, 12]
    assert query.shortfall == 0 and query.scores[-1] < 0 <= query.scores[:-1].min()
    assert region_impurity(ripu_map(), 26).shortfall == 1


def test_ripu_points_skip_labeled():
    labeled = torch.zeros(5, 5, dtype=torch.bool)
    labeled[1, 1] = True
    assert pixel_flat(region_impurity(ripu_map(), 2, labeled=labeled, suppress=False)) == [12, 7]


def test_ripu_regions_known_answer():
    # Centre score P(i) * mean U over the 3x3 window. Centres (1,1), (1,2), (2,1), (2,2) tie at the
    # top (their windows hold both uncertain pixels); lowest index wins: 6. It blocks centres up to
    # Chebyshev distance 2 (rows 0-3, cols 0-3): every other positive centre. The rest score 0 and
    # go by index: 4 = (0,4), then 19 = (3,4), then 20 = (4,0); then nothing is free.
    query = region_impurity_regions(ripu_map())
    assert regions_of(query) == [
        [0, 1, 2, 5, 6, 7, 10, 11, 12],
        [3, 4, 8, 9],
        [13, 14, 18, 19, 23, 24],
        [15, 16, 20, 21],
    ]
    mean_u = (h2(0.45) + h2(0.4) + 7 * h2(0.1)) / 9
    assert query.scores.tolist() == pytest.approx([PURITY * mean_u, 0, 0, 0], rel=1e-6)  # float32 input


def test_ripu_regions_keep_labeled_windows_blocked():
    labeled = torch.zeros(5, 5, dtype=torch.bool)
    labeled[1, 1] = True
    query = region_impurity_regions(ripu_map(), labeled=labeled)
    # As RIPU keeps an earlier round's windows blocked, no square may touch the labeled (1,1): centres
    # in rows 0-2 x cols 0-2 are out, the four tied best among them. The best left score 0.264 (a
    # window that holds (2,2) only): (1,3), (2,3), (3,1), (3,2) or (3,3), tied up to rounding.
    regions = regions_of(query)
    assert all(6 not in region for region in regions)  # no square holds the labeled pixel
    covered = [pixel for region in regions for pixel in region]
    assert len(covered) == len(set(covered))  # squares never overlap
    first = regions[0]
    assert len(first) == 9 and first[4] in (8, 13, 16, 17, 18)  # a whole square around one of those
    mean_u = (h2(0.4) + 8 * h2(0.1)) / 9
    assert query.scores[0] == pytest.approx(PURITY * mean_u, rel=1e-6)
    assert regions_of(region_impurity_regions(ripu_map()))[0][4] == 6  # unlabeled, (1,1) would win
    with pytest.raises(ValueError, match="odd"):
        region_impurity_regions(ripu_map(), k=4)


# --- random regions ---------------------------------------------------------------------------


def test_random_regions_are_seeded_disjoint_squares_that_skip_labeled():
    probs = (torch.full((2, 10, 12), 0.5),)
    labeled = torch.zeros(10, 12, dtype=torch.bool)
    labeled[:, :3] = True
    a = random_regions(probs, labeled=labeled, seed=11)
    b = random_regions(probs, labeled=labeled, seed=11)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.indices, random_regions(probs, labeled=labeled, seed=12).indices)
    assert (a.indices % 12 >= 3).all()
    assert (a.sizes <= 9).all() and (np.diff(a.scores) <= 0).all()
    for region in a.regions():  # each region lies inside one 3x3 box
        ys, xs = region // 12, region % 12
        assert ys.max() - ys.min() <= 2 and xs.max() - xs.min() <= 2
    assert len(random_regions(probs, seed=0, k=1)) == 120  # k=1: every pixel its own region


# --- the device algorithms: the same answers as the CPU ones -----------------------------------

from pixel_selectors.regions import (
    components,
    components_by_propagation,
    greedy_spread,
    greedy_spread_rounds,
    priority_order,
)
from pixel_selectors.ripu import window_impurity


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 24), width=st.integers(1, 24), density=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_label_propagation_finds_scipys_components(height, width, density, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(height, width, generator=generator) < density
    indices, offsets = components(mask.numpy())
    got_indices, got_offsets = components_by_propagation(mask)
    assert got_indices.tolist() == indices.tolist() and got_offsets.tolist() == offsets.tolist()


def test_label_propagation_follows_a_long_snake():
    mask = torch.zeros(9, 40, dtype=torch.bool)
    mask[::2] = True  # rows 0, 2, 4, 6, 8 ...
    mask[1::4, -1] = True  # ... joined at alternate ends: one component winding through the image
    mask[3::4, 0] = True
    indices, offsets = components_by_propagation(mask)
    assert (
        offsets.tolist() == [0, int(mask.sum())] and indices.tolist() == mask.reshape(-1).nonzero().squeeze(1).tolist()
    )


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 20),
    width=st.integers(1, 20),
    levels=st.integers(1, 5),
    reach=st.integers(0, 4),
    limit=st.one_of(st.none(), st.integers(0, 12)),
    seed=st.integers(0, 10_000),
)
def test_parallel_rounds_pick_what_the_sequential_greedy_picks(height, width, levels, reach, limit, seed):
    """Few score levels make plateaus and long chains: ties go by flat index on both paths."""
    generator = torch.Generator().manual_seed(seed)
    score = torch.randint(0, levels, (height * width,), generator=generator).double()
    free = torch.rand(height, width, generator=generator) < 0.85
    order = priority_order(score, free)
    expected = greedy_spread(order.numpy(), height, width, reach, limit)
    assert greedy_spread_rounds(order, height, width, reach, limit).tolist() == expected


def test_priority_order_puts_nan_last_and_breaks_ties_by_index():
    score = torch.tensor([0.5, float("nan"), 0.9, 0.5, 0.1])
    assert priority_order(score, torch.ones(5, dtype=torch.bool)).tolist() == [2, 0, 3, 4, 1]


@pytest.mark.parametrize("k", [1, 3, 5, 11, 65])
def test_window_impurity_matches_the_per_class_definition(k):
    """Exact window counts for all classes at once (shifted sums or running sums by window size)
    against one window-mean histogram per class, as RIPU defines it."""
    generator = torch.Generator().manual_seed(k)
    predicted = (torch.rand(23, 70, generator=generator) * 4).long().clamp_max(3)
    predicted[5:15, 10:40] = 2  # a uniform area: impurity exactly 0 inside it
    expected = torch.zeros(23, 70, dtype=torch.float64)
    for c in range(5):
        share = torch.nn.functional.avg_pool2d(
            (predicted == c).double()[None, None], k, 1, k // 2, count_include_pad=False
        )[0, 0]
        expected -= share * share.clamp_min(1e-12).log()
    got = window_impurity(predicted, 5, k)
    assert torch.allclose(got, expected / math.log(5), atol=1e-12)
    if k <= 5:
        assert (got[5 + k // 2 : 15 - k // 2, 10 + k // 2 : 40 - k // 2] == 0).all()


def test_top_k_and_a_full_sort_choose_the_same_points():
    from pixel_selectors.baselines import _top_points

    generator = torch.Generator().manual_seed(3)
    score = torch.randint(0, 6, (40 * 50,), generator=generator).float()  # many ties
    score[7] = float("nan")
    free = torch.rand(40 * 50, generator=generator) < 0.9
    for wanted in (1, 5, 40, 123, 2000):
        fast = _top_points(score, free, wanted, 50)  # top k below 1/16 of the candidates
        candidates = free.nonzero().squeeze(1)
        key = torch.nan_to_num(score[candidates].double(), nan=-float("inf"))
        slow = candidates[torch.sort(-key, stable=True).indices[:wanted]]
        assert (fast.ys.astype(int) * 50 + fast.xs).tolist() == slow.tolist()


def test_select_image_spends_a_point_budget_or_a_region_budget():
    from pixel_selectors import select_image

    probs = heads()
    assert len(select_image("labor_ppl", probs, num_points=3)) == 3
    assert len(select_image("labor_ppl", probs, budget_pixels=5)) == 5  # one image may give the whole budget
    regions = select_image("labor_spl", probs, budget_pixels=1, region_spread="score")
    assert regions.num_pixels >= 1 and len(regions) == 1  # the best region that covers the budget
    shared = select_image("labor_spl", probs, budget_pixels=100)
    assert shared.num_pixels == int(inconsistency_mask(*probs).sum()) and shared.scores.max() < 0
