"""The pool-wide budget merge: exact spending, order independence, bounded memory, points as regions."""

import itertools
import random

import numpy as np
import pytest
import torch

from pixel_selectors import (
    POINTS,
    RULES,
    GlobalBudget,
    PointQuery,
    RegionQuery,
    merge_points,
    merge_regions,
    points_per_image,
    points_to_regions,
    random_regions,
)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None


def rq(regions, scores, height=4, width=4):
    return RegionQuery.from_regions(regions, scores, height, width)


# Hand-made pool. Merge order (score desc, image asc, region asc):
#   D = image 2 region 1 (.95, 1 px) -> A = image 5 region 0 (.9, 3 px) -> E = image 7 region 0 (.9, 5 px)
#   -> C = image 2 region 0 (.5, 4 px) -> B = image 5 region 1 (.5, 2 px); 15 pixels in all.
POOL = [
    (5, rq([[0, 1, 2], [8, 9]], [0.9, 0.5])),
    (2, rq([[4, 5, 6, 7], [15]], [0.5, 0.95])),
    (7, rq([[10, 11, 12, 13, 14]], [0.9])),
]


def summary(result):
    return [(p.image_id, p.region, p.pixels.tolist(), p.truncated) for p in result.picks]


def test_merge_known_answer_spends_the_budget_exactly():
    result = merge_regions(POOL, 10)
    # 1 + 3 + 5 = 9 pixels, then C is cut to its first pixel
    assert summary(result) == [
        (2, 1, [15], False),
        (5, 0, [0, 1, 2], False),
        (7, 0, [10, 11, 12, 13, 14], False),
        (2, 0, [4], True),
    ]
    assert (result.spent_pixels, result.shortfall, result.offered_pixels) == (10, 0, 15)
    assert {i: a.tolist() for i, a in result.by_image().items()} == {2: [15, 4], 5: [0, 1, 2], 7: [10, 11, 12, 13, 14]}
    assert [len(r) for r in result.regions_by_image()[2]] == [1, 1]


def test_merge_truncates_in_stored_order_and_reports_shortfall():
    assert summary(merge_regions(POOL, 7))[-1] == (7, 0, [10, 11, 12], True)
    full = merge_regions(POOL, 15)
    assert full.spent_pixels == 15 and full.shortfall == 0 and not any(p.truncated for p in full.picks)
    short = merge_regions(POOL, 20)
    assert (short.spent_pixels, short.shortfall) == (15, 5)
    empty = merge_regions(POOL, 0)
    assert empty.picks == () and empty.spent_pixels == 0 and empty.shortfall == 0
    assert merge_regions([], 5).shortfall == 5


def test_merge_result_does_not_depend_on_arrival_order():
    for budget in (0, 1, 4, 9, 10, 13, 15, 30):
        expected = summary(merge_regions(POOL, budget))
        for permutation in itertools.permutations(POOL):
            assert summary(merge_regions(permutation, budget)) == expected


def test_merge_refuses_a_second_query_for_one_image_and_bad_input():
    merge = GlobalBudget(5)
    merge.add(1, rq([[0]], [1.0]))
    with pytest.raises(ValueError, match="already added"):
        merge.add(1, rq([[1]], [1.0]))
    with pytest.raises(TypeError, match="RegionQuery"):
        merge.add(2, PointQuery(np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.float32)))
    with pytest.raises(TypeError, match="integers"):
        merge.add(2.5, rq([[1]], [1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        GlobalBudget(-1)


def reference(pool, budget):
    """Brute force: sort every candidate of the pool, take until the budget is spent."""
    everything = sorted(
        ((-float(q.scores[r]), i, r, q.region(r)) for i, q in pool for r in range(len(q))), key=lambda e: e[:3]
    )
    out, remaining = [], budget
    for _, image_id, r, pixels in everything:
        if remaining == 0:
            break
        take = min(remaining, len(pixels))
        out.append((image_id, r, pixels[:take].tolist(), take < len(pixels)))
        remaining -= take
    return out


def random_pool(num_images, seed, size=(16, 16)):
    probs = (torch.full((2, *size), 0.5),)
    return [(i, random_regions(probs, seed=seed * 100_000 + i)) for i in range(num_images)]


def test_merge_memory_is_bounded_by_the_budget_not_the_pool():
    pool = random_pool(300, seed=1)  # about 300 * 27 regions, ~ 63,000 pixels
    budget = 500
    largest = max(int(q.sizes.max()) for _, q in pool)
    offered = sum(q.num_pixels for _, q in pool)
    assert offered > 100 * budget
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    merge = GlobalBudget(budget)
    peak = 0
    for image_id, query in shuffled:
        merge.add(image_id, query)
        peak = max(peak, merge.kept_pixels)
        assert merge.kept_pixels <= budget + largest
    result = merge.result()
    assert peak <= budget + largest and result.spent_pixels == budget and merge.offered_pixels == offered
    assert summary(result) == reference(pool, budget)


def test_sending_only_each_images_head_gives_the_same_result():
    pool = random_pool(40, seed=2, size=(9, 9))
    for budget in (1, 50, 400, 5000):
        trimmed = [(i, q.head(budget)) for i, q in pool]
        assert [(p.image_id, p.pixels.tolist()) for p in merge_regions(trimmed, budget).picks] == [
            (p.image_id, p.pixels.tolist()) for p in merge_regions(pool, budget).picks
        ]


# --- points under a pool-wide budget ----------------------------------------------------------


def pq(flat, scores, width=4):
    flat = np.asarray(flat)
    return PointQuery(
        ys=(flat // width).astype(np.int32), xs=(flat % width).astype(np.int32), scores=np.asarray(scores, np.float32)
    )


def test_points_to_regions_and_points_per_image():
    regions = points_to_regions(pq([5, 2, 9], [0.1, 0.7, 0.3]), 4, 4)
    assert [r.tolist() for r in regions.regions()] == [[5], [2], [9]]
    assert regions.scores.tolist() == pytest.approx([0.1, 0.7, 0.3])
    assert points_to_regions(pq([5, 2, 9], [0.1, 0.7, 0.3]), 4, 4, order="rank").scores.tolist() == [0, -1, -2]
    with pytest.raises(ValueError, match="outside"):
        points_to_regions(pq([5], [1.0]), 1, 4)
    assert points_per_image(100, 4, 4) == 16 and points_per_image(7, 4, 4) == 7


def test_merge_points_by_score_and_by_rank():
    pool = [(0, pq([1, 2, 3], [0.9, 0.8, 0.1])), (1, pq([7, 6], [0.85, 0.2]))]
    # by score: .9 (0:1), .85 (1:7), .8 (0:2), then .2 (1:6)
    assert {i: a.tolist() for i, a in merge_points(pool, 4, 4, 4).by_image().items()} == {0: [1, 2], 1: [7, 6]}
    assert {i: a.tolist() for i, a in merge_points(pool, 3, 4, 4).by_image().items()} == {0: [1, 2], 1: [7]}
    # by rank: round robin over images, ties by image id: 0:1, 1:7, 0:2, 1:6, 0:3
    by_rank = merge_points(pool, 3, 4, 4, order="rank")
    assert [(p.image_id, p.pixels.tolist()) for p in by_rank.picks] == [(0, [1]), (1, [7]), (0, [2])]
    assert merge_points(pool, 9, 4, 4).shortfall == 4


# --- properties -------------------------------------------------------------------------------

if given is not None:

    @st.composite
    def pools(draw):
        height, width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
        num_classes = draw(st.integers(1, 4))
        num_images = draw(st.integers(1, 4))
        name = draw(st.sampled_from(sorted(RULES)))
        seed = draw(st.integers(0, 2**16))
        gen = torch.Generator().manual_seed(seed)
        images = []
        for image_id in draw(st.lists(st.integers(0, 50), min_size=num_images, max_size=num_images, unique=True)):
            heads = tuple((3 * torch.randn(num_classes, height, width, generator=gen)).softmax(0) for _ in range(2))
            labeled = torch.rand(height, width, generator=gen) < draw(st.sampled_from([0.0, 0.3, 0.9]))
            images.append((image_id, heads, labeled))
        budget = draw(st.integers(0, num_images * height * width + 3))
        return name, height, width, images, budget

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pools(), st.randoms(use_true_random=False))
    def test_merge_properties(case, rng):
        name, height, width, images, budget = case
        select = RULES[name].select
        items = []
        for image_id, heads, labeled in images:
            if RULES[name].kind == POINTS:
                query = select(heads, points_per_image(budget, height, width), labeled=labeled, seed=image_id)
                items.append((image_id, points_to_regions(query, height, width)))
            else:
                items.append((image_id, select(heads, labeled=labeled, seed=image_id)))
        available = sum(q.num_pixels for _, q in items)
        result = merge_regions(items, budget)
        shuffled = items[:]
        rng.shuffle(shuffled)
        assert summary(merge_regions(shuffled, budget)) == summary(result)
        assert result.spent_pixels == min(budget, available) == sum(len(p.pixels) for p in result.picks)
        assert result.shortfall == budget - result.spent_pixels
        labeled_of = {image_id: labeled.reshape(-1).numpy() for image_id, _, labeled in images}
        for image_id, pixels in result.by_image().items():
            assert len(np.unique(pixels)) == len(pixels)  # never the same pixel twice
            assert not labeled_of[image_id][pixels].any()  # never a labeled pixel
        if RULES[name].kind == POINTS:
            # every unlabeled pixel is a candidate of a point rule asked for enough points
            unlabeled = sum(int((~labeled).sum()) for _, _, labeled in images)
            assert result.spent_pixels == min(budget, unlabeled)
else:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_merge_properties():
        pass


def test_share_of_candidates_gives_every_image_the_same_share_of_its_own_candidates():
    from pixel_selectors.budget import share_of_candidates

    # Image 1: a 16-pixel mask in 4 regions of 4 (the selector's scores are high); image 2: a 4-pixel
    # mask in 4 regions of 1 (low scores). By score, a 10-pixel budget all goes to image 1.
    big = rq([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], [0.9, 0.8, 0.7, 0.6], 4, 8)
    small = rq([[16], [17], [18], [19]], [0.4, 0.3, 0.2, 0.1], 4, 8)
    by_score = merge_regions([(1, big), (2, small)], budget_pixels=10).by_image()
    assert list(by_score) == [1] and len(by_score[1]) == 10  # its best three regions, the third cut to 2 px
    shared = share_of_candidates(big)
    assert shared.scores.tolist() == [-2 / 16, -6 / 16, -10 / 16, -14 / 16]  # minus the share at each middle
    assert [shared.region(r).tolist() for r in range(4)] == [big.region(r).tolist() for r in range(4)]
    result = merge_regions([(1, shared), (2, share_of_candidates(small))], budget_pixels=10).by_image()
    # Half of each mask: 8 of image 1's 16 pixels (its two best regions), 2 of image 2's 4.
    assert result[1].tolist() == list(range(8)) and result[2].tolist() == [16, 17]


def test_share_of_candidates_of_a_whole_budget_takes_every_candidate_and_keeps_the_ranked_order():
    from pixel_selectors.budget import share_of_candidates

    query = rq([[3], [0, 1, 2], [5, 6]], [0.1, 0.9, 0.5])  # stored out of rank order
    shared = share_of_candidates(query)
    assert [shared.region(r).tolist() for r in range(3)] == [[0, 1, 2], [5, 6], [3]]
    assert np.all(np.diff(shared.scores) < 0) and shared.scores.min() > -1 and shared.scores.max() < 0
    assert merge_regions([(0, shared)], budget_pixels=6).spent_pixels == 6
    empty = rq([], [])
    assert len(share_of_candidates(empty)) == 0
