"""Where a pixel of the selection grid lies in the original label: the one mapping that the oracle,
the label store, annotation exports and the grid-size labels all use.

Selection, training and the label store work on the *grid*: the target image resized to
``data.height x data.width``. People annotate, and the papers score, the *original* image. A grid
pixel (y, x) covers the original rows [y * s_y, (y + 1) * s_y) with s_y = H_label / H_grid (columns
likewise); it stands for the original pixel under its centre,

    y_label = min(floor((y + 0.5) * H_label / H_grid), H_label - 1)

which is PyTorch's 'nearest-exact' rule. The grid-size labels are resized with that same rule
(``transforms.ResizeInput``), so the class the oracle reveals for a grid pixel is the class the
grid-size label shows there, and the pixel a person is asked about is exactly that one.
"""

from __future__ import annotations

import numpy as np


def label_coordinates(ys, xs, grid_size: tuple[int, int], label_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixels (ys, xs) -> the original-label pixels (ys, xs) under their centres (int64 arrays)."""
    (grid_h, grid_w), (label_h, label_w) = grid_size, label_size
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    if len(ys) and (ys.min() < 0 or xs.min() < 0 or ys.max() >= grid_h or xs.max() >= grid_w):
        raise ValueError(f"grid pixels outside the {grid_h}x{grid_w} grid")
    # Integer arithmetic: floor((2y + 1) * H / (2h)) is exact where float rounding could be off by one.
    label_ys = np.minimum((2 * ys + 1) * label_h // (2 * grid_h), label_h - 1)
    label_xs = np.minimum((2 * xs + 1) * label_w // (2 * grid_w), label_w - 1)
    return label_ys, label_xs


def label_flat_indices(flat, grid_size: tuple[int, int], label_size: tuple[int, int]) -> np.ndarray:
    """Row-major grid indices -> row-major indices into the original label."""
    flat = np.asarray(flat, np.int64)
    ys, xs = label_coordinates(flat // grid_size[1], flat % grid_size[1], grid_size, label_size)
    return ys * label_size[1] + xs
