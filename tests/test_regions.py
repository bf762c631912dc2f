"""RegionQuery, the label-store encodings (RLE, bit-packing) and the click cost model."""

import numpy as np
import pytest

from pixel_selectors import (
    RegionQuery,
    clicks_for_points,
    clicks_for_region,
    pack_bits,
    rle_decode,
    rle_encode,
    unpack_bits,
)
from pixel_selectors.cost import outline_stats
from pixel_selectors.encoding import encoded_nbytes

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None


# --- RegionQuery ----------------------------------------------------------------------------


def test_region_query_csr_accessors():
    q = RegionQuery.from_regions([[5, 6], [0], [9, 3, 4]], [0.5, 0.9, 0.5], height=2, width=5)
    assert len(q) == 3 and q.num_pixels == 6
    assert q.sizes.tolist() == [2, 1, 3]
    assert q.region(2).tolist() == [9, 3, 4]  # stored order is kept, not sorted
    assert q.region(-1).tolist() == [9, 3, 4]
    assert [r.tolist() for r in q.regions()] == [[5, 6], [0], [9, 3, 4]]
    assert q.mask().sum() == 6 and q.mask()[1, 4]
    assert q.indices.dtype == np.int64 and q.offsets.dtype == np.int64 and q.scores.dtype == np.float64
    with pytest.raises(ValueError):
        q.indices[0] = 1  # read-only


def test_region_query_ranked_and_head():
    q = RegionQuery.from_regions([[5, 6], [0], [9, 3, 4]], [0.5, 0.9, 0.5], height=2, width=5)
    # score desc; the two 0.5 regions keep their order (index 0 before index 2)
    assert [r.tolist() for r in q.ranked().regions()] == [[0], [5, 6], [9, 3, 4]]
    assert [r.tolist() for r in q.head(1).regions()] == [[0]]
    assert [r.tolist() for r in q.head(2).regions()] == [[0], [5, 6]]  # 1 pixel does not cover 2
    assert [r.tolist() for r in q.head(3).regions()] == [[0], [5, 6]]
    assert len(q.head(4)) == 3 and len(q.head(100)) == 3 and len(q.head(0)) == 0


@pytest.mark.parametrize(
    "regions, scores, match",
    [
        ([[0, 1], []], [1, 2], "at least one pixel"),
        ([[0, 10]], [1], "out of range"),
        ([[-1]], [1], "out of range"),
        ([[0, 1], [1]], [1, 2], "more than one place"),
        ([[0]], [float("nan")], "NaN"),
    ],
)
def test_region_query_refuses_bad_regions(regions, scores, match):
    with pytest.raises(ValueError, match=match):
        RegionQuery.from_regions(regions, scores, height=2, width=5)


def test_region_query_refuses_inconsistent_offsets():
    with pytest.raises(ValueError, match="offsets"):
        RegionQuery(height=2, width=2, indices=np.array([0, 1]), offsets=np.array([0, 1]), scores=np.array([1.0, 2.0]))
    assert len(RegionQuery.empty(3, 4)) == 0 and RegionQuery.empty(3, 4).num_pixels == 0


# --- RLE and bit-packing --------------------------------------------------------------------


def test_rle_known_answer():
    # runs over 10 pixels: 0-2 (3), 5 (1), 7-8 (2); input order does not matter
    runs = rle_encode([8, 0, 2, 1, 5, 7], 10)
    assert runs.dtype == np.int32 and runs.tolist() == [0, 3, 5, 1, 7, 2]
    assert rle_decode(runs).tolist() == [0, 1, 2, 5, 7, 8]
    assert rle_encode([], 10).tolist() == [] and rle_decode([]).tolist() == []
    assert rle_encode(range(10), 10).tolist() == [0, 10]


def test_rle_square_is_one_run_per_row():
    width = 100
    square = [y * width + x for y in range(10, 13) for x in range(40, 43)]
    assert rle_encode(square, 100 * width).tolist() == [1040, 3, 1140, 3, 1240, 3]
    assert encoded_nbytes(square, 100 * width) == {"rle": 24, "bits": 1250}


@pytest.mark.parametrize("bad", [[0, 0], [10], [-1]])
def test_rle_refuses_duplicates_and_out_of_range(bad):
    with pytest.raises(ValueError):
        rle_encode(bad, 10)


@pytest.mark.parametrize("runs", [[0], [0, 0], [5, 2, 3, 1], [0, 3, 2, 1]])
def test_rle_decode_refuses_malformed_runs(runs):
    with pytest.raises(ValueError):
        rle_decode(runs)


def test_rle_decode_refuses_runs_past_the_image():
    with pytest.raises(ValueError, match="leave the image"):
        rle_decode([8, 3], num_pixels=10)


def test_pack_bits_round_trip():
    packed = pack_bits([9, 0, 3], 10)
    assert packed.dtype == np.uint8 and len(packed) == 2
    assert unpack_bits(packed, 10).tolist() == [0, 3, 9]
    with pytest.raises(ValueError):
        unpack_bits(packed, 17)


if given is not None:

    @settings(max_examples=60, deadline=None)
    @given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
    def test_rle_and_bits_round_trip_property(case):
        num_pixels, chosen = case
        flat = np.array(sorted(chosen), dtype=np.int64)
        runs = rle_encode(flat[::-1], num_pixels)
        assert rle_decode(runs, num_pixels).tolist() == flat.tolist()
        lengths = runs[1::2]
        starts = runs[0::2]
        assert (lengths >= 1).all() and (starts[1:] > starts[:-1] + lengths[:-1]).all()  # maximal, sorted
        assert unpack_bits(pack_bits(flat, num_pixels), num_pixels).tolist() == flat.tolist()
else:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_rle_and_bits_round_trip_property():
        pass


# --- click cost -----------------------------------------------------------------------------

W = 20


def box(y0, x0, h, w):
    return [y * W + x for y in range(y0, y0 + h) for x in range(x0, x0 + w)]


def test_clicks_for_points():
    assert clicks_for_points(0) == 0 and clicks_for_points(40) == 40
    with pytest.raises(ValueError):
        clicks_for_points(-1)


def test_clicks_square_and_line():
    # 3x3 square: 4 corners, perimeter 12 -> min(4, max(4, ceil(12/8)=2)) = 4
    assert outline_stats(box(2, 2, 3, 3), W, W) == [(9, 4, 12)]
    assert clicks_for_region(box(2, 2, 3, 3), W, W) == 4
    assert clicks_for_region(box(0, 0, 12, 12), W, W) == 4  # size does not matter for a box
    # 1x7 line (horizontal or vertical): a thin rectangle, 4 corners
    assert clicks_for_region(box(5, 0, 1, 7), W, W) == 4
    assert clicks_for_region(box(0, 5, 7, 1), W, W) == 4
    # the image border is a boundary like any other
    assert clicks_for_region(box(17, 17, 3, 3), W, W) == 4


def test_clicks_l_shapes():
    # thin L: (0,2),(1,2),(2,2),(2,3),(2,4): 5 convex + 1 concave corner = 6, perimeter 12
    thin = [2, W + 2, 2 * W + 2, 2 * W + 3, 2 * W + 4]
    assert outline_stats(thin, W, W) == [(5, 6, 12)]
    assert clicks_for_region(thin, W, W) == 4  # min(6, max(4, ceil(12 / 8))) = 4: small, a box will do
    assert clicks_for_region(thin, W, W, segment_length=2) == 6  # min(6, max(4, 6))
    # 16x16 L with arms 4 wide: 112 pixels, 6 corners, perimeter 2 * (16 + 16) = 64 -> min(6, 8) = 6
    big = sorted(set(box(0, 0, 16, 4)) | set(box(12, 0, 4, 16)))
    assert outline_stats(big, W, W) == [(112, 6, 64)]
    assert clicks_for_region(big, W, W) == 6


def test_clicks_points_pieces_and_holes():
    assert clicks_for_region([7], W, W) == 1  # a single pixel is a point
    assert clicks_for_region([0, 5], W, W) == 2  # two separate single pixels
    assert clicks_for_region(box(0, 0, 2, 2) + box(10, 10, 3, 3), W, W) == 8  # two boxes
    # 3x3 ring: outer outline (4 corners, perimeter 12) + hole outline (4 corners, perimeter 4): 4 + 4
    ring = [i for i in box(0, 0, 3, 3) if i != W + 1]
    assert outline_stats(ring, W, W) == [(8, 4, 12), (8, 4, 4)]
    assert clicks_for_region(ring, W, W) == 8
    # two diagonal pixels are one 8-connected piece: 3 + 3 corners + the shared vertex twice = 8
    assert outline_stats([0, W + 1], W, W) == [(2, 8, 8)]
    assert clicks_for_region([0, W + 1], W, W) == 4


def test_clicks_staircase_is_approximated():
    # a 10-pixel diagonal: 22 single corners + 9 shared vertices x 2 = 40 corners, perimeter 40
    diagonal = [i * W + i for i in range(10)]
    assert outline_stats(diagonal, W, W) == [(10, 40, 40)]
    assert clicks_for_region(diagonal, W, W) == 5  # ceil(40 / 8)
    assert clicks_for_region(diagonal, W, W, segment_length=1) == 40
    assert clicks_for_region([], W, W) == 0
