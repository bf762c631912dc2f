"""The vectorised click count (``region_clicks``, ``ClickCounter``, ``counted``, ``clicks_by_image``)
against the reference, ``clicks_for_region`` one region at a time: the same clicks, and the same outlines
(``outline_table`` against ``outline_stats``), on hand-made and random masks."""

import pickle
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from pixel_selectors import RegionQuery
from pixel_selectors.budget import GlobalBudget
from pixel_selectors.cost import (
    ClickCounter,
    CountedRegions,
    clicks_by_image,
    clicks_for_region,
    counted,
    outline_stats,
    outline_table,
    region_clicks,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None


def csr(regions):
    regions = [np.asarray(r, dtype=np.int64).reshape(-1) for r in regions]
    offsets = np.zeros(len(regions) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in regions], out=offsets[1:])
    return (np.concatenate(regions) if regions else np.empty(0, np.int64)), offsets


def assert_same_as_reference(regions, height, width, segment_lengths=(1, 2, 3, 8)):
    """Every region's clicks and outlines as the reference finds them, region by region."""
    indices, offsets = csr(regions)
    for segment_length in segment_lengths:
        expected = [clicks_for_region(r, height, width, segment_length) for r in regions]
        assert region_clicks(indices, offsets, height, width, segment_length).tolist() == expected
    table = outline_table(indices, offsets, height, width)
    for r, region in enumerate(regions):
        ours = Counter(
            (int(c), int(p)) for c, p in zip(table.corners[table.region == r], table.perimeter[table.region == r])
        )
        singles = int(np.sum(table.single_pixels == r))
        reference = outline_stats(region, height, width)
        assert singles == sum(1 for pixels, _, _ in reference if pixels == 1), r
        assert ours == Counter((c, p) for pixels, c, p in reference if pixels > 1), r


def mask_regions(mask):
    """A bool (H, W) mask as one region of all its pixels."""
    return [np.flatnonzero(mask.reshape(-1))]


def from_rows(*rows):
    return np.array([[c == "#" for c in row] for row in rows])


HAND_MADE = {
    "single pixel": from_rows("...", ".#.", "..."),
    "single pixel in a corner of the image": from_rows("#..", "...", "..."),
    "the whole image": from_rows("###", "###"),
    "one pixel image": from_rows("#"),
    "a row of the image": from_rows("#####"),
    "a column of the image": from_rows("#", "#", "#", "#"),
    "ring (a hole)": from_rows("###", "#.#", "###"),
    "ring on the image border": from_rows("#####", "#...#", "#...#", "#####"),
    "two holes": from_rows("#####", "#.#.#", "#####"),
    "a piece inside a hole": from_rows("#######", "#.....#", "#.###.#", "#.#.#.#", "#.###.#", "#.....#", "#######"),
    "diagonal pair": from_rows("#.", ".#"),
    "anti-diagonal pair": from_rows(".#", "#."),
    "diagonal line": np.eye(10, dtype=bool),
    "checkerboard": (np.indices((6, 7)).sum(axis=0) % 2).astype(bool),
    "diagonal touch closing a hole": from_rows(".#.", "#.#", ".#."),
    "hole open through a diagonal": from_rows("##.", "#.#", "###"),
    "several pieces": from_rows("##...#", "##....", "....##", "#...##"),
    "L": from_rows("#....", "#....", "#####"),
    "U open to the image border": from_rows("#.#", "#.#", "###"),
    "a row's end next to the next row's start": from_rows("...#", "#..."),
    "a row's end diagonal to the next row's start": from_rows("..#.", "...#", "#..."),
    "staircase": np.tril(np.ones((8, 8), dtype=bool)),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_hand_made_masks_cost_what_the_reference_says(name):
    mask = HAND_MADE[name]
    assert_same_as_reference(mask_regions(mask), *mask.shape)
    padded = np.pad(mask, ((2, 3), (1, 4)))  # away from the image border
    assert_same_as_reference(mask_regions(padded), *padded.shape)


def test_known_counts_of_the_fast_path():
    one = lambda rows: int(region_clicks(*csr(mask_regions(from_rows(*rows))), len(rows), len(rows[0]))[0])  # noqa: E731
    assert one(["...", ".#.", "..."]) == 1  # a point
    assert one(["###", "#.#", "###"]) == 8  # outer outline 4 + hole 4
    assert one(["#.", ".#"]) == 4  # one 8-connected piece: min(8 corners, max(4, ceil(8 / 8)))
    assert one(["...#", "#..."]) == 2  # flat indices 3 and 4 are not neighbours: two points
    assert one(["#####"]) == 4


def test_regions_are_drawn_separately_even_where_they_touch():
    width = 8
    left = [y * width + x for y in range(3) for x in range(3)]
    right = [y * width + x for y in range(3) for x in range(3, 6)]
    diagonal = [3 * width + 6]  # touches ``right`` at a corner only
    regions = [left, right, diagonal]
    assert region_clicks(*csr(regions), 4, width).tolist() == [4, 4, 1]
    assert_same_as_reference(regions, 4, width)
    assert clicks_for_region(left + right, 4, width) == 4  # drawn as one: one rectangle


def test_pixel_order_and_empty_regions_do_not_matter():
    rng = np.random.default_rng(5)
    mask = ndimage.binary_dilation(rng.random((20, 30)) < 0.05, iterations=2)
    region = np.flatnonzero(mask.reshape(-1))
    expected = clicks_for_region(region, 20, 30)
    shuffled = rng.permutation(region)
    assert region_clicks(*csr([[], shuffled, []]), 20, 30).tolist() == [0, expected, 0]
    assert region_clicks(*csr([]), 20, 30).tolist() == []


def random_image(rng, height, width, num_regions, density):
    """Disjoint regions of an H x W image: random pixels, or blobs with holes and several pieces."""
    if num_regions == 0:
        return []
    if rng.random() < 0.5:
        owner = rng.integers(1, num_regions + 1, size=(height, width)) * (rng.random((height, width)) < density)
    else:
        smooth = ndimage.gaussian_filter(rng.random((height, width)), sigma=rng.uniform(0.5, 2.5))
        inside = smooth > np.quantile(smooth, 1 - density)
        owner = np.zeros((height, width), dtype=np.int64)
        # Each region a random subset of the blobs' pixels: vertical stripes, raster runs, or scattered.
        split = rng.integers(3)
        if split == 0:
            owner[inside] = 1 + (np.indices((height, width))[1][inside] * num_regions // width)
        elif split == 1:
            owner[inside] = 1 + (np.arange(inside.sum()) * num_regions // max(1, inside.sum()))
        else:
            owner[inside] = rng.integers(1, num_regions + 1, size=int(inside.sum()))
    flat = owner.reshape(-1)
    return [rng.permutation(np.flatnonzero(flat == r + 1)) for r in range(num_regions)]


def test_random_masks_cost_what_the_reference_says():
    rng = np.random.default_rng(2026)
    for _ in range(400):
        height, width = (int(v) for v in rng.integers(1, 24, size=2))
        regions = random_image(rng, height, width, int(rng.integers(1, 5)), rng.uniform(0.05, 0.95))
        assert_same_as_reference(regions, height, width, segment_lengths=(int(rng.integers(1, 12)), 8))


if given is not None:

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(1, 12).flatmap(
            lambda h: st.integers(1, 12).flatmap(
                lambda w: st.tuples(st.just(h), st.just(w), st.lists(st.integers(0, 3), min_size=h * w, max_size=h * w))
            )
        ),
        st.integers(1, 10),
    )
    def test_any_mask_costs_what_the_reference_says(shape_and_owners, segment_length):
        height, width, owners = shape_and_owners
        owner = np.array(owners)
        regions = [np.flatnonzero(owner == r) for r in (1, 2, 3)]
        assert_same_as_reference(regions, height, width, segment_lengths=(segment_length,))


def test_the_counter_sums_each_image_over_several_passes_whatever_the_pass_size():
    rng = np.random.default_rng(11)
    height, width = 24, 40
    images = {i: random_image(rng, height, width, int(rng.integers(0, 6)), rng.uniform(0.02, 0.6)) for i in range(40)}
    expected = {i: sum(clicks_for_region(r, height, width) for r in regions) for i, regions in images.items()}
    for pass_pixels in (1, 50, 700, 10**6):  # one image a pass, a few, or all of them in one pass
        counter = ClickCounter(height, width, pass_pixels=pass_pixels)
        for image_id, regions in images.items():
            counter.add_pieces(image_id, regions)
        assert counter.totals() == expected
    assert clicks_by_image(images.items(), height, width) == expected
    assert clicks_by_image([], height, width) == {}


def test_the_counter_refuses_what_it_cannot_count_in_one_line():
    counter = ClickCounter(4, 5)
    counter.add_pieces(1, [np.array([0, 1])])
    with pytest.raises(ValueError, match="image 1 was already added"):
        counter.add_pieces(1, [np.array([3])])
    with pytest.raises(ValueError, match="image 2: flat index out of range for a 4x5 image"):
        counter.add_pieces(2, [np.array([20])])
    with pytest.raises(ValueError, match="image 3: offsets must rise"):
        counter.add(3, np.array([1, 2]), np.array([0, 3]))
    with pytest.raises(ValueError, match="more than one region of an image.*one of images 1, 4"):
        counter.add_pieces(4, [np.array([5, 6]), np.array([6])])
        counter.totals()
    with pytest.raises(ValueError, match="segment_length must be >= 1"):
        region_clicks(*csr([[0]]), 4, 5, segment_length=0)


def test_the_counter_can_be_used_after_a_refused_image():
    counter = ClickCounter(4, 5, pass_pixels=1)
    with pytest.raises(ValueError):
        counter.add_pieces(0, [np.array([1, 1])])
    counter.add_pieces(1, [np.array([1, 2])])  # the canvas was cleared: pixel 1 is free again
    assert counter.totals() == {1: 4}


def test_the_merges_picks_cut_mid_region_cost_what_the_reference_says():
    """A pool-wide budget takes whole regions and cuts the last one to a prefix of its pixels, which may
    fall apart into several pieces (a U cut in raster order): counted on the driver, as bought."""
    height, width = 16, 20
    u_shape = from_rows("#...#", "#...#", "#####")
    u_region = np.flatnonzero(np.pad(u_shape, ((2, 11), (3, 12))).reshape(-1))  # rows 2-4
    square = np.array([y * width + x for y in range(8, 11) for x in range(8, 11)])
    other = np.array([y * width + x for y in range(12, 15) for x in range(1, 6)])
    query = RegionQuery.from_regions([square, u_region], [2.0, 1.0], height, width)
    merge = GlobalBudget(budget_pixels=len(square) + 4 + len(other))  # the U cut after its first 4 pixels
    merge.add(0, query)
    merge.add(1, RegionQuery.from_regions([other], [1.5], height, width))
    result = merge.result()
    assert result.picks[-1].truncated and len(result.picks[-1].pixels) == 4
    bought = result.regions_by_image()
    expected = {i: sum(clicks_for_region(p, height, width) for p in pieces) for i, pieces in bought.items()}
    assert expected == {0: 4 + 4 + 4, 1: 4}  # the U cut to its first 4 pixels (raster order): two 1 x 2 pieces
    assert clicks_by_image(bought.items(), height, width) == expected


def test_a_query_counted_where_it_was_made_carries_each_regions_clicks():
    rng = np.random.default_rng(3)
    regions = [r for r in random_image(rng, 30, 40, 6, 0.5) if len(r)]
    query = RegionQuery.from_regions(regions, np.arange(len(regions), dtype=float), 30, 40)
    with_clicks = counted(query)
    assert isinstance(with_clicks, CountedRegions) and isinstance(with_clicks, RegionQuery)
    assert with_clicks.clicks.tolist() == [clicks_for_region(r, 30, 40) for r in regions]
    assert np.array_equal(with_clicks.indices, query.indices) and np.array_equal(with_clicks.scores, query.scores)
    assert with_clicks.total_clicks == sum(with_clicks.clicks.tolist())
    with pytest.raises(ValueError):
        with_clicks.clicks[0] = 1  # read-only, as the query's arrays
    assert pickle.loads(pickle.dumps(with_clicks)).clicks.tolist() == with_clicks.clicks.tolist()
    # The driver adds a counted query up (it does not count again), and counts a plain one itself.
    told = CountedRegions(
        height=30, width=40, indices=query.indices, offsets=query.offsets, scores=query.scores, clicks=[7] * len(query)
    )
    assert clicks_by_image([(0, told), (1, query)], 30, 40) == {0: 7 * len(query), 1: with_clicks.total_clicks}
    five = [clicks_for_region(r, 30, 40, 5) for r in regions]
    assert clicks_by_image([(0, told)], 30, 40, segment_length=5) == {0: sum(five)}  # counted with 8: again
    assert counted(query, 5).clicks.tolist() == five
    assert clicks_by_image([(0, counted(query, 5))], 30, 40, segment_length=5) == {0: sum(five)}
    with pytest.raises(ValueError, match="one count per region"):
        CountedRegions(
            height=30, width=40, indices=query.indices, offsets=query.offsets, scores=query.scores, clicks=[1]
        )
