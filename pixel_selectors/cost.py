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
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

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
