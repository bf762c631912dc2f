"""Annotation cost in clicks.

A **point** costs one click (the annotator clicks the pixel and names its class).

A **region** costs the clicks of the polygons an annotator draws to outline it. The rule, per
outline (a closed boundary between one 8-connected piece of the region and one 4-connected piece
of the background: the piece's outer boundary, plus one outline per hole):

    clicks(outline) = min(corners, max(4, ceil(perimeter / segment_length)))

- ``corners``: vertices of the exact outline along pixel edges (where it turns 90 degrees). A grid
  vertex whose 2 x 2 pixel block holds 1 or 3 region pixels is one corner; a block holding two
  diagonal region pixels is two (the outline passes the vertex twice). A rectangle has 4, an L 6.
- ``perimeter``: pixel edges between the region and the rest (the image border counts).
- ``segment_length`` (default 8 pixels): a ragged or staircase boundary is not clicked corner by
  corner; the annotator approximates it with about one vertex per ``segment_length`` pixels of
  boundary, and never fewer than 4 per outline.

So rectilinear shapes cost their corner count (square 4, line 4, L 6 when its perimeter is >= 48
pixels), and ragged shapes cost about perimeter / 8. A region that is a single pixel costs 1 click
(it is a point). Several pieces cost the sum of their outlines. Holes are outlined too.

Two ways to count, with the same result (``tests/test_click_counting.py`` holds them equal):

- ``clicks_for_region`` (the reference): one region, labelled with scipy on its bounding box (8-connected
  pieces, 4-connected background), corners and edges credited to (piece, background piece).
- ``region_clicks`` / ``ClickCounter`` (what a round uses): every region of many images in one
  vectorised pass whose cost grows with the regions' pixels, not their bounding boxes. Each directed
  boundary edge (region on its right) is linked to the next edge of its outline, read off the
  2 x 2 block at its end: the diagonal pixel ahead-left in the region -> turn left onto it (8-connected
  pieces join across a diagonal, so the background there does not); else the pixel ahead in the
  region -> straight on; else turn right. The links form closed cycles, one per outline: in the
  (8, 4) pairing of region and background, the border between one piece and one background piece is
  one closed curve (Rosenfeld, "Connectivity in digital pictures", JACM 1970). A cycle's length is the
  outline's perimeter and its turns are its corners (a diagonal block is passed twice, turning each
  time: two corners, as above). A pixel with no region pixel among its 8 neighbours is a single-pixel
  piece: 1 click.

Where a round counts (``orchestrator.round.selection``): under a pool-wide budget the merge decides
what is bought (a candidate region whole, or the last one cut to a prefix of its pixels), so the
driver counts the picks after the merge, all of the round's in one ``ClickCounter`` pass; counting
every candidate on the ranking actors instead would count regions never bought (an image sends the
regions the whole budget could take from it, 30 times what the merge takes from it at 2.2% of
2,975 images) and still leave the cut region to the driver. Without a budget (LabOR SPL's whole
mask) every candidate region is bought whole, so the ranking actor counts its image's regions
(``counted``) and the driver only adds them up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from .base import RegionQuery
from .regions import EIGHT_CONNECTED

DEFAULT_SEGMENT_LENGTH = 8


def clicks_for_points(n: int) -> int:
    if n < 0:
        raise ValueError(f"number of points must be >= 0, got {n}")
    return int(n)


def outline_stats(flat_indices, height: int, width: int) -> list[tuple[int, int, int]]:
    """Per outline of a region: ``(piece_pixels, corners, perimeter)``, ordered by (piece, background piece).

    Works on the region's bounding box only, so the cost is independent of the image size.
    """
    flat = np.unique(np.asarray(flat_indices, dtype=np.int64).reshape(-1))
    if not len(flat):
        return []
    if flat[0] < 0 or flat[-1] >= height * width:
        raise ValueError(f"flat index out of range for a {height}x{width} image")
    ys, xs = flat // width, flat % width
    y0, x0 = ys.min(), xs.min()
    # One pixel of background around the bounding box: the image border is a boundary like any other.
    inside = np.zeros((ys.max() - y0 + 3, xs.max() - x0 + 3), dtype=bool)
    inside[ys - y0 + 1, xs - x0 + 1] = True
    pieces, num_pieces = ndimage.label(inside, structure=EIGHT_CONNECTED)
    background, num_background = ndimage.label(~inside)  # 4-connected: the dual of 8-connected pieces
    piece_pixels = np.bincount(pieces.reshape(-1), minlength=num_pieces + 1)
    stride = num_background + 1

    def key(piece, back):
        return piece * stride + back

    corner_keys = []
    a, b, c, d = inside[:-1, :-1], inside[:-1, 1:], inside[1:, :-1], inside[1:, 1:]
    la, lb, lc, ld = pieces[:-1, :-1], pieces[:-1, 1:], pieces[1:, :-1], pieces[1:, 1:]
    ba, bb, bc, bd = background[:-1, :-1], background[:-1, 1:], background[1:, :-1], background[1:, 1:]
    count = a.astype(np.int8) + b + c + d
    piece_of_block = np.maximum(np.maximum(la, lb), np.maximum(lc, ld))  # all region pixels of a block share a piece
    # 1 or 3 region pixels: one corner; the block's background pixels are 4-connected, one piece.
    odd = (count == 1) | (count == 3)
    back_of_block = np.maximum(np.maximum(ba, bb), np.maximum(bc, bd))
    corner_keys.append(key(piece_of_block[odd], back_of_block[odd]))
    # Two diagonal region pixels: the outline(s) pass the vertex twice, once per background pixel.
    diag_ad = a & d & ~b & ~c
    diag_bc = b & c & ~a & ~d
    corner_keys += [
        key(piece_of_block[diag_ad], bb[diag_ad]),
        key(piece_of_block[diag_ad], bc[diag_ad]),
        key(piece_of_block[diag_bc], ba[diag_bc]),
        key(piece_of_block[diag_bc], bd[diag_bc]),
    ]
    # Boundary edges between vertical and horizontal neighbours, each credited to its outline.
    edge_keys = []
    for first, second, lf, ls, bf, bs in (
        (inside[:-1], inside[1:], pieces[:-1], pieces[1:], background[:-1], background[1:]),
        (inside[:, :-1], inside[:, 1:], pieces[:, :-1], pieces[:, 1:], background[:, :-1], background[:, 1:]),
    ):
        edge_keys += [key(lf[first & ~second], bs[first & ~second]), key(ls[second & ~first], bf[second & ~first])]
    size = (num_pieces + 1) * stride
    corners = np.bincount(np.concatenate(corner_keys), minlength=size)
    perimeter = np.bincount(np.concatenate(edge_keys), minlength=size)
    outlines = np.flatnonzero(perimeter)
    return [(int(piece_pixels[k // stride]), int(corners[k]), int(perimeter[k])) for k in outlines]


def clicks_for_region(flat_indices, height: int, width: int, segment_length: int = DEFAULT_SEGMENT_LENGTH) -> int:
    """Polygon clicks to outline the pixels ``flat_indices`` of an H x W image (rule in the module doc)."""
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    total = 0
    for pixels, corners, perimeter in outline_stats(flat_indices, height, width):
        if pixels == 1:
            total += 1
        else:
            total += min(corners, max(4, math.ceil(perimeter / segment_length)))
    return total


def clicks_for_regions(regions, height: int, width: int, segment_length: int = DEFAULT_SEGMENT_LENGTH) -> int:
    """Sum of ``clicks_for_region`` over separately drawn regions (e.g. the picks of one image)."""
    return sum(clicks_for_region(r, height, width, segment_length) for r in regions)


# --- The vectorised count -------------------------------------------------------------------------

# Sides of a pixel, clockwise: N, E, S, W. A boundary edge on side s runs in direction right(s) = s + 1
# (mod 4) with its pixel on the right; ahead of it lie the pixel B = P + right(s) and, ahead-left, the
# diagonal pixel A = P + s + right(s).
_SIDES = 4


@dataclass(frozen=True)
class Outlines:
    """The outlines of regions (``outline_table``): one row per outline of two or more pixels' pieces
    (``region``, ``corners``, ``perimeter``), and ``single_pixels``: the region of each single-pixel
    piece (an outline of 4 corners and 4 edges that costs 1 click)."""

    region: np.ndarray
    corners: np.ndarray
    perimeter: np.ndarray
    single_pixels: np.ndarray

    def clicks(self, num_regions: int, segment_length: int = DEFAULT_SEGMENT_LENGTH) -> np.ndarray:
        """int64 (num_regions,): each region's clicks, the module's rule summed over its outlines."""
        segment_length = _check_segment_length(segment_length)
        per_outline = np.minimum(self.corners, np.maximum(4, -(-self.perimeter // segment_length)))
        total = np.bincount(self.region, weights=per_outline, minlength=num_regions)  # float64: exact here
        return total.astype(np.int64) + np.bincount(self.single_pixels, minlength=num_regions)


def _check_segment_length(segment_length: int) -> int:
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    return int(segment_length)


def _check_regions(indices, offsets, height: int, width: int, what: str = "regions") -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{what}: offsets must rise from 0 to {len(indices)} (the pixel count)")
    if len(indices) and (indices.min() < 0 or indices.max() >= height * width):
        raise ValueError(f"{what}: flat index out of range for a {height}x{width} image")
    return indices, offsets


def _canvas(height: int, width: int) -> np.ndarray:
    if height * width >= 2**28:  # indices into a pass, and its edges (4 a pixel), stay int32
        raise ValueError(f"images of {height}x{width} pixels are too large to count clicks on (< 2**28 pixels)")
    # One row of padding above and below, one column at the right (which is also the left of the next
    # row) and one cell before the first: a neighbour outside the image lands on padding, never on a pixel.
    return np.zeros((height + 2) * (width + 1) + 1, dtype=np.int32)


def _outlines(
    indices: np.ndarray,
    offsets: np.ndarray,
    images: Sequence[tuple[int, int]],
    canvas: np.ndarray,
    height: int,
    width: int,
) -> Outlines:
    """The outlines of regions in CSR form (``indices``, ``offsets``: regions of several images, each
    image's pixels the contiguous range ``images[g]``). A pixel may be in one region of its image only."""
    count = len(indices)
    stride = width + 1
    rows, cols = np.divmod(indices, width)
    position = (rows + 1) * stride + cols + 1  # on the padded canvas
    side = (-stride, 1, stride, -1)
    steps = np.array([side[s] for s in range(_SIDES)] + [side[s] + side[(s + 1) % _SIDES] for s in range(_SIDES)])
    # neighbour[k, i]: 1 + the index of the pixel at position[i] + steps[k], 0 where none; one image at
    # a time on the canvas, which holds 1 + each pixel's index.
    neighbour = np.empty((len(steps), count), dtype=np.int32)
    for start, stop in images:
        here = position[start:stop]
        ids = np.arange(start + 1, stop + 1, dtype=np.int32)
        canvas[here] = ids
        try:
            if not np.array_equal(canvas[here], ids):
                raise ValueError("a pixel appears in more than one region of an image (or twice in one)")
            np.take(canvas, here[None, :] + steps[:, None], out=neighbour[:, start:stop])
        finally:
            canvas[here] = 0
    sizes = np.diff(offsets)
    region = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    # A neighbour is in the same region when its index lies in the region's range [first, first + size).
    first = np.repeat((offsets[:-1] + 1).astype(np.int32), sizes)
    size = np.repeat(sizes.astype(np.uint32), sizes)
    inside = np.empty(neighbour.shape, dtype=bool)
    for k in range(len(steps)):
        np.less((neighbour[k] - first).view(np.uint32), size, out=inside[k])
    single = ~inside.any(axis=0)
    boundary = ~inside[:_SIDES] & ~single  # (side, pixel): an edge of an outline
    # Edge (pixel i, side s) has key s * count + i; its outline position is the key's rank among edges.
    rank = np.cumsum(boundary.reshape(-1), dtype=np.int32) - 1
    edges = int(rank[-1]) + 1 if count else 0
    successor = np.empty(edges, dtype=np.int32)
    turns = np.empty(edges, dtype=bool)
    edge_region = np.empty(edges, dtype=np.int32)
    done = 0
    for s in range(_SIDES):
        right, left = (s + 1) % _SIDES, (s - 1) % _SIDES
        pixel = np.flatnonzero(boundary[s])
        diagonal, ahead = inside[_SIDES + s, pixel], inside[right, pixel]
        key = right * count + pixel  # turn right onto the same pixel's next side
        key[ahead] = s * count - 1 + neighbour[right, pixel[ahead]]  # straight on to B
        key[diagonal] = left * count - 1 + neighbour[_SIDES + s, pixel[diagonal]]  # turn left onto A
        end = done + len(pixel)
        successor[done:end] = rank[key]
        turns[done:end] = diagonal | ~ahead
        edge_region[done:end] = region[pixel]
        done = end
    if edges:
        links = csr_matrix(
            (np.ones(edges, dtype=np.int8), successor, np.arange(edges + 1, dtype=np.int32)), shape=(edges, edges)
        )
        cycles, cycle = connected_components(links, directed=True, connection="strong")
    else:
        cycles, cycle = 0, np.empty(0, dtype=np.int32)
    cycle_region = np.empty(cycles, dtype=np.int64)
    cycle_region[cycle] = edge_region  # every edge of a cycle is in the same region
    return Outlines(
        region=cycle_region,
        corners=np.bincount(cycle[turns], minlength=cycles).astype(np.int64),
        perimeter=np.bincount(cycle, minlength=cycles).astype(np.int64),
        single_pixels=region[single].astype(np.int64),
    )


def outline_table(indices, offsets, height: int, width: int) -> Outlines:
    """Every outline of the regions ``indices[offsets[r]:offsets[r + 1]]`` of one H x W image, each
    region drawn on its own (a pixel may be in one region only): what ``region_clicks`` adds up.
    The outlines of a region are those ``outline_stats`` finds, in another order."""
    indices, offsets = _check_regions(indices, offsets, height, width)
    return _outlines(indices, offsets, [(0, len(indices))], _canvas(height, width), height, width)


def region_clicks(
    indices, offsets, height: int, width: int, segment_length: int = DEFAULT_SEGMENT_LENGTH
) -> np.ndarray:
    """int64 (R,): the clicks of each region ``indices[offsets[r]:offsets[r + 1]]`` (flat indices) of
    one H x W image, each drawn on its own: ``clicks_for_region`` of every region, in one vectorised
    pass. A pixel may be in one region only (a query's or a merge's regions are disjoint)."""
    segment_length = _check_segment_length(segment_length)
    return outline_table(indices, offsets, height, width).clicks(len(offsets) - 1, segment_length)


class ClickCounter:
    """The clicks of many images' regions (all H x W), in vectorised passes over whole images of
    together at least ``pass_pixels`` pixels: what a round's driver runs on the merge's picks.

    >>> counter = ClickCounter(height, width)
    >>> for image_id, pieces in result.regions_by_image().items():
    ...     counter.add_pieces(image_id, pieces)
    >>> counter.totals()    # {image_id: clicks}, the sum of clicks_for_region over each image's pieces

    Memory: one int32 canvas of the padded image (8 MiB at 1024 x 2048), and about 200 bytes per
    pixel of a pass. Each image is added once; its regions must not share a pixel. A pass that
    finds a pixel twice fails with the ids of its images, and those images are not counted.
    """

    def __init__(
        self, height: int, width: int, segment_length: int = DEFAULT_SEGMENT_LENGTH, pass_pixels: int = 1 << 16
    ):
        self.height, self.width = int(height), int(width)
        self.segment_length = _check_segment_length(segment_length)
        self.pass_pixels = int(pass_pixels)
        self._canvas = _canvas(self.height, self.width)
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._pending_ids: set[int] = set()
        self._pending_pixels = 0
        self._totals: dict[int, int] = {}

    def add(self, image_id: int, indices, offsets) -> None:
        """Queue one image's regions in CSR form (flat ``indices``, ``offsets``); counted in passes."""
        image_id = int(image_id)
        if image_id in self._totals or image_id in self._pending_ids:
            raise ValueError(f"image {image_id} was already added to the click count")
        indices, offsets = _check_regions(indices, offsets, self.height, self.width, f"image {image_id}")
        self._pending.append((image_id, indices, offsets))
        self._pending_ids.add(image_id)
        self._pending_pixels += len(indices)
        if self._pending_pixels >= self.pass_pixels:
            self._count_pending()

    def add_pieces(self, image_id: int, pieces: Sequence[np.ndarray]) -> None:
        """Queue one image's regions given as a list of flat-index arrays (e.g. a merge's picks)."""
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        indices = np.concatenate(pieces) if len(pieces) else np.empty(0, dtype=np.int64)
        self.add(image_id, indices, offsets)

    def totals(self) -> dict[int, int]:
        """image_id -> the clicks of all its regions, for every image added so far."""
        self._count_pending()
        return dict(self._totals)

    def _count_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._pending_ids, self._pending_pixels = self._pending, [], set(), 0
        images, pixel_starts, region_counts = [], [0], []
        for _, indices, offsets in pending:
            images.append((pixel_starts[-1], pixel_starts[-1] + len(indices)))
            pixel_starts.append(images[-1][1])
            region_counts.append(len(offsets) - 1)
        indices = np.concatenate([p[1] for p in pending])
        offsets = np.concatenate([[0]] + [p[2][1:] + start for p, start in zip(pending, pixel_starts)])
        try:
            outlines = _outlines(indices, offsets, images, self._canvas, self.height, self.width)
        except ValueError as err:
            raise ValueError(f"{err}: one of images {', '.join(str(p[0]) for p in pending)}") from None
        per_region = outlines.clicks(len(offsets) - 1, self.segment_length)
        image_of_region = np.repeat(np.arange(len(pending)), region_counts)
        per_image = np.bincount(image_of_region, weights=per_region, minlength=len(pending))
        for (image_id, _, _), clicks in zip(pending, per_image.tolist()):
            self._totals[image_id] = int(clicks)


@dataclass(frozen=True, eq=False)
class CountedRegions(RegionQuery):
    """A region query whose every region's clicks were counted where it was made (``counted``):
    ``clicks`` int64 (R,), region r's as ``clicks_for_region`` gives it with ``segment_length``. Used
    where every region is bought whole (no budget: LabOR SPL's whole mask), so the driver only adds
    them up."""

    clicks: np.ndarray
    segment_length: int = DEFAULT_SEGMENT_LENGTH

    def __post_init__(self):
        super().__post_init__()
        _set_clicks(self, self.clicks)

    @property
    def total_clicks(self) -> int:
        return int(self.clicks.sum())


def counted(query: RegionQuery, segment_length: int = DEFAULT_SEGMENT_LENGTH) -> CountedRegions:
    """``query`` with the clicks of each of its regions (``region_clicks``), as a ``CountedRegions``."""
    clicks = region_clicks(query.indices, query.offsets, query.height, query.width, segment_length)
    out = CountedRegions.derived(query, query.indices, query.offsets, query.scores)
    _set_clicks(out, clicks)
    object.__setattr__(out, "segment_length", int(segment_length))
    return out


def _set_clicks(query: CountedRegions, clicks) -> None:
    clicks = np.array(clicks, dtype=np.int64, copy=True).reshape(-1)
    if len(clicks) != len(query):
        raise ValueError(f"clicks must hold one count per region ({len(query)}), got {len(clicks)}")
    clicks.setflags(write=False)
    object.__setattr__(query, "clicks", clicks)


def clicks_by_image(images, height: int, width: int, segment_length: int = DEFAULT_SEGMENT_LENGTH) -> dict[int, int]:
    """image_id -> the clicks of the regions bought in it, for ``images``: (image_id, bought) pairs,
    ``bought`` a list of flat-index arrays (a merge's picks of the image) or a ``RegionQuery`` all of
    whose regions are bought. A ``CountedRegions`` counted with the same ``segment_length`` is added
    up (counted where it was made); the rest are counted here, in ``ClickCounter`` passes. Equal to summing ``clicks_for_region`` over each
    image's regions."""
    counter = ClickCounter(height, width, segment_length)
    totals = {}
    for image_id, bought in images:
        if isinstance(bought, CountedRegions) and bought.segment_length == segment_length:
            totals[int(image_id)] = bought.total_clicks
        elif isinstance(bought, RegionQuery):
            counter.add(image_id, bought.indices, bought.offsets)
        else:
            counter.add_pieces(image_id, bought)
    return totals | counter.totals()
