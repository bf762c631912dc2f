"""Region-building blocks shared by the region selectors (torch, numpy and scipy; no I/O).

Each block runs where its input lives: on a CUDA device as tensor operations (connected components
by label propagation, the greedy spread by parallel rounds), on the CPU with the sequential or scipy
routine that is fastest there. Both give exactly the same result (see each function), so a query
does not depend on the device that computed it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .base import RegionQuery, take_regions

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_window(k: int) -> int:
    """Validate an odd window size ``k`` and return its radius (k - 1) / 2."""
    if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"window size k must be an odd integer >= 1, got {k!r}")
    return (int(k) - 1) // 2


def ranked_query(indices: np.ndarray, offsets: np.ndarray, scores: np.ndarray, height: int, width: int) -> RegionQuery:
    """A RegionQuery with regions ordered by (score desc, given order)."""
    order = np.argsort(-scores, kind="stable")
    indices, offsets = take_regions(indices, offsets, order)
    return RegionQuery(height, width, indices, offsets, scores[order])


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool (H, W) mask in CSR form (indices, offsets).

    Components are numbered in raster order of their first pixel (``scipy.ndimage.label``); each
    component's pixels are in ascending flat index.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    flat = labels.reshape(-1)
    pixels = np.flatnonzero(flat)
    component = flat[pixels] - 1
    order = np.argsort(component, kind="stable")
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(component, minlength=count), out=offsets[1:])
    return pixels[order].astype(np.int64), offsets


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of a bool (H, W) tensor, in CSR form on the tensor's device.

    The same numbering and order as ``components`` (which the CPU uses): components in raster order
    of their first pixel, each component's pixels in ascending flat index. On other devices the
    labels come from ``components_by_propagation``.
    """
    if mask.device.type == "cpu":
        indices, offsets = components(mask.numpy())
        return torch.from_numpy(indices), torch.from_numpy(offsets)
    return components_by_propagation(mask)


def components_by_propagation(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``connected_components`` as tensor operations, on any device (what a GPU runs).

    Every mask pixel starts labelled with its own flat index; each pass, every pixel finds the
    smallest label in its 3 x 3 neighbourhood, hands it to the pixel its own label names (a
    scatter-min: the root of its tree adopts the smaller label, so a whole tree moves at once),
    takes it itself, and jumps twice to the label of the pixel its label names (pointer jumping).
    Labels only decrease and stay inside the component, so passes end with every pixel labelled by
    its component's smallest flat index -- its first pixel in raster order. A few passes suffice
    (5 for a LabOR mask at 1024 x 2048, 12 for a snake winding through the whole image), against
    one pass per pixel of the component's length for propagation alone. A minimum is the same
    whatever order the scatter applies it in, so the result is deterministic on a GPU.
    """
    height, width = mask.shape
    # Labels are flat indices, exact in float32 below 2**24 pixels (max_pool2d wants floating point).
    dtype = torch.float32 if height * width < 2 ** 24 else torch.float64
    none = float(height * width)  # larger than every label: what non-mask pixels hold
    inside = mask.reshape(-1)
    index = torch.arange(height * width, device=mask.device, dtype=dtype)
    labels = torch.where(inside, index, torch.full_like(index, none))

    def named(values: torch.Tensor) -> torch.Tensor:  # the pixel each label names (non-mask: any pixel)
        return values.clamp_max(none - 1).long()

    while True:
        smallest = -F.max_pool2d(-labels.reshape(1, 1, height, width), kernel_size=3, stride=1, padding=1)
        smallest = torch.where(inside, smallest.reshape(-1), labels)
        hooked = labels.clone().scatter_reduce_(0, named(labels)[inside], smallest[inside], reduce="amin")
        updated = torch.minimum(hooked, smallest)
        for _ in range(2):
            updated = torch.where(inside, updated[named(updated)], updated)
        if torch.equal(updated, labels):
            break
        labels = updated
    pixels = inside.nonzero().squeeze(1)  # ascending flat index
    component_label = labels[pixels]
    order = torch.sort(component_label, stable=True).indices  # by component, pixels ascending inside
    _, sizes = torch.unique_consecutive(component_label[order], return_counts=True)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(sizes, 0, out=offsets[1:])
    return pixels[order], offsets


def _window_max(values: torch.Tensor, reach: int) -> torch.Tensor:
    """Max of (H, W) ``values`` over each (2 reach + 1)^2 window clipped to the image: one pooling
    for a small window, one per axis for a large one (its cost then grows with the side, not the area)."""
    size = 2 * reach + 1
    if reach <= 3:
        return F.max_pool2d(values[None, None], kernel_size=size, stride=1, padding=reach)[0, 0]
    x = F.max_pool2d(values[None, None], kernel_size=(size, 1), stride=1, padding=(reach, 0))
    return F.max_pool2d(x, kernel_size=(1, size), stride=1, padding=(0, reach))[0, 0]


# Rounds between two checks for the end of ``greedy_spread_rounds`` (each check waits for the device).
ROUNDS_PER_CHECK = 4


def greedy_spread_rounds(order: torch.Tensor, height: int, width: int, reach: int,
                         limit: int | None = None) -> torch.Tensor:
    """``greedy_spread`` as tensor operations, in parallel rounds: the same picks, in the same order.

    Sequential greedy selection by a fixed priority is the lexicographically first maximal
    independent set of the conflict graph (here: candidates within Chebyshev distance ``reach``),
    and that set is also what repeated rounds of "take every remaining candidate that has the best
    priority among the remaining candidates of its window, then drop every candidate within reach of
    a pick" produce: a candidate that is best in its window has no better candidate left near it,
    so the sequential pass would take it too. The global best remaining candidate is taken in every
    round, so the rounds end. Smooth score maps and plateaus of equal scores (ties go in raster
    order) make long chains, each pick waiting for a better neighbour to be decided: hence rounds,
    a few hundred for RIPU's squares at 1024 x 2048, each a handful of element-wise operations.

    ``limit`` stops once the first ``limit`` picks in priority order are settled: every pick better
    than the best candidate still undecided can no longer change. Returns the picks' flat indices in
    priority order (a 1-D int64 tensor on ``order``'s device).
    """
    device = order.device
    count = height * width
    dtype = torch.float32 if count < 2 ** 24 else torch.float64  # priorities exact in the pooling dtype
    # Priority: len(order) for the best candidate down to 1 for the last, 0 for non-candidates.
    priority = torch.zeros(count, dtype=dtype, device=device)
    priority[order] = torch.arange(len(order), 0, -1, dtype=dtype, device=device)
    priority = priority.reshape(height, width)
    remaining = priority > 0
    taken = torch.zeros_like(remaining)
    rounds = 0
    while True:
        current = priority * remaining  # 0 once decided: below every remaining candidate
        take = remaining & (current == _window_max(current, reach))
        taken |= take
        remaining &= _window_max(take.to(dtype), reach) == 0
        rounds += 1
        if rounds % ROUNDS_PER_CHECK:
            continue  # a round after the last one changes nothing; checking costs a device sync
        if limit is None:
            if not bool(remaining.any()):
                break
            continue
        best_undecided = (priority * remaining).max()
        settled, undecided = torch.stack([(taken & (priority > best_undecided)).sum(), remaining.sum()]).tolist()
        if settled >= limit or undecided == 0:
            break
    picks = taken.reshape(-1).nonzero().squeeze(1)
    picks = picks[torch.sort(priority.reshape(-1)[picks], descending=True).indices]
    return picks if limit is None else picks[:limit]


def greedy_order_picks(order: torch.Tensor, height: int, width: int, reach: int,
                       limit: int | None = None) -> torch.Tensor:
    """The greedy spread of candidates given in priority ``order`` (flat indices, a tensor), wherever
    they live: the sequential pass on the CPU (fastest there: about 1 s for 2 million candidates,
    against about 12 s for the rounds), the rounds on a GPU. Same picks, same order."""
    if order.device.type == "cpu":
        return torch.as_tensor(greedy_spread(order.numpy(), height, width, reach, limit), dtype=torch.int64)
    return greedy_spread_rounds(order, height, width, reach, limit)


def greedy_spread(order: np.ndarray, height: int, width: int, reach: int, limit: int | None = None) -> list[int]:
    """Walk flat pixel indices in ``order``; take each one unless a pixel already taken lies within
    Chebyshev distance ``reach`` of it; stop after ``limit`` picks (all when None).

    Sequential on purpose: the greedy order is the definition (RIPU's non-overlapping regions, and
    its spread-out points). One bool lookup per candidate plus one slice write per pick.
    """
    blocked = np.zeros((height, width), dtype=bool)
    blocked_flat = blocked.reshape(-1)
    taken: list[int] = []
    for c in order.tolist():
        if limit is not None and len(taken) == limit:
            break
        if blocked_flat[c]:
            continue
        taken.append(c)
        y, x = divmod(c, width)
        blocked[max(0, y - reach):y + reach + 1, max(0, x - reach):x + reach + 1] = True
    return taken


def priority_order(score: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Flat indices of the ``candidates`` mask ordered by (score desc, flat index asc); a NaN score
    goes last. ``score``: (H*W,) on the mask's device."""
    flat = candidates.reshape(-1).nonzero().squeeze(1)  # ascending flat index
    key = torch.nan_to_num(-score[flat].to(torch.float64), nan=float("inf"))
    return flat[torch.sort(key, stable=True).indices]


def greedy_squares(center_score: torch.Tensor, free: torch.Tensor, radius: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-overlapping (2r+1)^2 squares chosen greedily by the score of their centre pixel.

    center_score: float (H*W,); free: bool (H, W) of unlabeled pixels, both on one device (the work
    runs there). Candidate centres are the free pixels, visited by (score desc, flat index asc); a
    centre is taken unless it lies within Chebyshev distance 2r of a centre already taken (then the
    squares would overlap), which is the rule of RIPU's region selection. Each square is clipped to
    the image and loses its labeled pixels; pixels keep raster order. Returns CSR (indices,
    offsets) and the centre scores as numpy arrays, in the order taken (so already ranked by score).
    """
    height, width = free.shape
    center_score = torch.as_tensor(center_score).reshape(-1).to(free.device)
    centers = greedy_order_picks(priority_order(center_score, free), height, width, reach=2 * radius).to(free.device)
    cy, cx = centers // width, centers % width
    offset = torch.arange(-radius, radius + 1, device=free.device)
    dy, dx = torch.meshgrid(offset, offset, indexing="ij")
    ys, xs = cy[:, None] + dy.reshape(1, -1), cx[:, None] + dx.reshape(1, -1)  # (R, k*k), raster order
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    keep = inside & free[ys.clamp(0, height - 1), xs.clamp(0, width - 1)]
    offsets = torch.zeros(len(centers) + 1, dtype=torch.int64, device=free.device)
    torch.cumsum(keep.sum(dim=1), 0, out=offsets[1:])
    return ((ys * width + xs)[keep].cpu().numpy().astype(np.int64), offsets.cpu().numpy(),
            center_score[centers].to(torch.float64).cpu().numpy())
