"""Region-building blocks shared by the region rules (torch, numpy and scipy; no I/O).

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

from .base import head_length, to_host
from .budget import check_spread, share_scores
from .device_loops import run_passes

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_window(k: int) -> int:
    """Validate an odd window size ``k`` and return its radius (k - 1) / 2."""
    if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"window size k must be an odd integer >= 1, got {k!r}")
    return (int(k) - 1) // 2


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


# Label-propagation passes between two checks for their end (each check waits for the device; LabOR's
# masks take about 5 passes).
PROPAGATION_PASSES_PER_CHECK = 2


def hook_and_jump(labels, inside, index, smallest, named, changed) -> None:
    """The end of a label-propagation pass, in place: every mask pixel hands ``smallest`` (its
    neighbourhood's smallest label) to the pixel its label ``named``, takes it itself, and jumps twice
    to the label of the pixel its label names; ``changed`` (1,) says whether any label moved.

    A non-mask pixel hands its own ``none`` to itself, which changes nothing. So the scatter takes every
    pixel and needs no mask indexing (which would wait for the device), and no two non-mask pixels
    write to one place (millions of writes to one address would queue up)."""
    hooked = labels.clone().scatter_reduce_(0, torch.where(inside, named(labels), index), smallest, reduce="amin")
    updated = torch.minimum(hooked, smallest)
    for _ in range(2):
        updated = torch.where(inside, updated[named(updated)], updated)
    changed.copy_((updated != labels).any().reshape(1))
    labels.copy_(updated)


def _component_pass(height: int, width: int, none: float):
    """One pass of ``components_by_propagation`` over (labels, inside, index, changed), in place:
    the smallest label of each 3 x 3 neighbourhood, then ``hook_and_jump``."""

    def named(values: torch.Tensor) -> torch.Tensor:  # the pixel each label names (non-mask: any pixel)
        return values.clamp_max(none - 1).long()

    def one_pass(labels, inside, index, changed):
        smallest = -F.max_pool2d(-labels.reshape(1, 1, height, width), kernel_size=3, stride=1, padding=1)
        smallest = torch.where(inside, smallest.reshape(-1), labels)
        hook_and_jump(labels, inside, index, smallest, named, changed)

    return one_pass


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
    dtype = torch.float32 if height * width < 2**24 else torch.float64
    none = float(height * width)  # larger than every label: what non-mask pixels hold
    inside = mask.reshape(-1)
    index = torch.arange(height * width, device=mask.device, dtype=dtype)
    labels = torch.where(inside, index, torch.full_like(index, none))

    changed = torch.ones(1, dtype=torch.bool, device=mask.device)
    run_passes(
        ("components", height, width, dtype),
        (labels, inside, index.long(), changed),
        _component_pass(height, width, none),
        lambda labels, inside, index, changed: changed,
        lambda figures: not figures[0],  # a pass that changed nothing: every later one changes nothing
        passes=PROPAGATION_PASSES_PER_CHECK,
        label="propagation passes",
    )
    pixels = inside.nonzero().squeeze(1)  # ascending flat index
    component_label = labels[pixels]
    order = torch.sort(component_label, stable=True).indices  # by component, pixels ascending inside
    _, sizes = torch.unique_consecutive(component_label[order], return_counts=True)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(sizes, 0, out=offsets[1:])
    return pixels[order], offsets


def _window_max(values: torch.Tensor, reach: int) -> torch.Tensor:
    """Max of (H, W) ``values`` over each (2 reach + 1)^2 window clipped to the image: one pooling
    for a small window, one per axis for a larger one (a maximum is exact in any order). On an H200 at
    1024 x 2048 in float32 (``python -m benchmarks.window_max``), one pooling against two: 35 against 51 us
    at reach 1, 60 against 59 at reach 2, 96 against 68 at reach 3."""
    size = 2 * reach + 1
    if reach <= 2:
        return F.max_pool2d(values[None, None], kernel_size=size, stride=1, padding=reach)[0, 0]
    x = F.max_pool2d(values[None, None], kernel_size=(size, 1), stride=1, padding=(reach, 0))
    return F.max_pool2d(x, kernel_size=(1, size), stride=1, padding=(0, reach))[0, 0]


# Rounds between two checks for the end of ``greedy_spread_rounds`` (each check waits for the device).
ROUNDS_PER_CHECK = 4


def greedy_spread_rounds(
    order: torch.Tensor,
    height: int,
    width: int,
    reach: int,
    limit: int | None = None,
    weights: torch.Tensor | None = None,
    cover: int | None = None,
) -> torch.Tensor:
    """``greedy_spread`` as tensor operations, in parallel rounds: the same picks, in the same order.

    Sequential greedy selection by a fixed priority is the lexicographically first maximal
    independent set of the conflict graph (here: candidates within Chebyshev distance ``reach``),
    and that set is also what repeated rounds of "take every remaining candidate that has the best
    priority among the remaining candidates of its window, then drop every candidate within reach of
    a pick" produce: a candidate that is best in its window has no better candidate left near it,
    so the sequential pass would take it too. The global best remaining candidate is taken in every
    round, so the rounds end. Smooth score maps and plateaus of equal scores (ties go in raster
    order) make long chains, each pick waiting for a better neighbour to be decided: hence rounds,
    570 for RIPU's squares over a whole 1024 x 2048 image, each a handful of element-wise operations.

    Stopping early is what keeps the rounds few: every pick better than the best candidate still
    undecided is settled (a prefix of the final order). ``limit`` stops once the first ``limit``
    picks are settled; ``cover`` once the settled picks' ``weights`` ((H*W,) integers, e.g. the pixels
    of each candidate's square) add up to ``cover`` (then the picks are cut after the first that
    reaches it, as ``greedy_spread`` does): 20 rounds for the squares a 2.2% budget can take from a
    1024 x 2048 image. Returns the picks' flat indices in priority order (a 1-D int64 tensor on
    ``order``'s device).
    """
    device = order.device
    if cover is not None and cover <= 0:
        return torch.empty(0, dtype=torch.int64, device=device)  # as the sequential pass: nothing to cover
    count = height * width
    dtype = torch.float32 if count < 2**24 else torch.float64  # priorities exact in the pooling dtype
    # Priority: len(order) for the best candidate down to 1 for the last, 0 for non-candidates.
    priority = torch.zeros(count, dtype=dtype, device=device)
    priority[order] = torch.arange(len(order), 0, -1, dtype=dtype, device=device)
    priority = priority.reshape(height, width)
    remaining = priority > 0
    taken = torch.zeros_like(remaining)
    # Without a cover the check's third figure is a sum of zeros (a weight map of one zero, broadcast).
    weight_map = (
        torch.zeros(1, 1, dtype=torch.int64, device=device)
        if cover is None
        else weights.reshape(height, width).to(device=device, dtype=torch.int64)
    )

    def one_round(priority, remaining, taken, weight_map):
        current = priority * remaining  # 0 once decided: below every remaining candidate
        take = remaining & (current == _window_max(current, reach))
        taken |= take
        remaining &= _window_max(take.to(torch.float16), reach) == 0  # 0 and 1: exact in half the bytes

    def figures(priority, remaining, taken, weight_map):  # settled picks, undecided candidates, settled cover
        settled = taken & (priority > (priority * remaining).max())
        return torch.stack([settled.sum(), remaining.sum(), (weight_map * settled).sum()])

    def done(figures) -> bool:
        if figures[1] == 0:
            return True  # a round after the last one changes nothing
        return (limit is not None and figures[0] >= limit) or (cover is not None and figures[2] >= cover)

    run_passes(
        ("greedy rounds", reach, dtype),
        (priority, remaining, taken, weight_map),
        one_round,
        figures,
        done,
        passes=ROUNDS_PER_CHECK,
        label="greedy rounds",
    )
    picks = taken.reshape(-1).nonzero().squeeze(1)
    picks = picks[torch.sort(priority.reshape(-1)[picks], descending=True).indices]
    if limit is not None:
        picks = picks[:limit]
    if cover is not None:
        picks = picks[: head_length(weight_map.reshape(-1)[picks], cover)]
    return picks


def greedy_order_picks(
    order: torch.Tensor,
    height: int,
    width: int,
    reach: int,
    limit: int | None = None,
    weights: torch.Tensor | None = None,
    cover: int | None = None,
) -> torch.Tensor:
    """The greedy spread of candidates given in priority ``order`` (flat indices, a tensor), wherever
    they live: the sequential pass on the CPU (fastest there: about 1 s for 2 million candidates,
    against about 12 s for the rounds), the rounds on a GPU. Same picks, same order."""
    if order.device.type == "cpu":
        return torch.as_tensor(
            greedy_spread(
                order.numpy(), height, width, reach, limit, None if weights is None else weights.numpy(), cover
            ),
            dtype=torch.int64,
        )
    return greedy_spread_rounds(order, height, width, reach, limit, weights, cover)


def greedy_spread(
    order: np.ndarray,
    height: int,
    width: int,
    reach: int,
    limit: int | None = None,
    weights: np.ndarray | None = None,
    cover: int | None = None,
) -> list[int]:
    """Walk flat pixel indices in ``order``; take each one unless a pixel already taken lies within
    Chebyshev distance ``reach`` of it; stop after ``limit`` picks (all when None), or after the pick
    that brings the picks' ``weights`` ((H*W,) integers) to ``cover``.

    Sequential on purpose: the greedy order is the definition (RIPU's non-overlapping regions, and
    its spread-out points). One bool lookup per candidate plus one slice write per pick.
    """
    blocked = np.zeros((height, width), dtype=bool)
    blocked_flat = blocked.reshape(-1)
    taken: list[int] = []
    covered = 0
    for start in range(0, len(order), GREEDY_CHUNK):  # a stop after a few picks reads a few candidates
        for c in order[start : start + GREEDY_CHUNK].tolist():
            if (limit is not None and len(taken) == limit) or (cover is not None and covered >= cover):
                return taken
            if blocked_flat[c]:
                continue
            taken.append(c)
            if cover is not None:
                covered += int(weights[c])
            y, x = divmod(c, width)
            blocked[max(0, y - reach) : y + reach + 1, max(0, x - reach) : x + reach + 1] = True
    return taken


# Candidates ``greedy_spread`` turns into Python ints at a time.
GREEDY_CHUNK = 4096


def priority_order(score: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Flat indices of the ``candidates`` mask ordered by (score desc, flat index asc); a NaN score
    goes last. ``score``: (H*W,) on the mask's device."""
    flat = candidates.reshape(-1).nonzero().squeeze(1)  # ascending flat index
    key = torch.nan_to_num(-score[flat].to(torch.float64), nan=float("inf"))
    return flat[torch.sort(key, stable=True).indices]


def greedy_squares(
    center_score: torch.Tensor,
    free: torch.Tensor,
    radius: int,
    centers: torch.Tensor | None = None,
    max_pixels: int | None = None,
    spread: str = "score",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-overlapping (2r+1)^2 squares chosen greedily by the score of their centre pixel.

    center_score: float (H*W,); free: bool (H, W) of unlabeled pixels, both on one device (the work
    runs there); centers: optional bool (H, W) of the pixels allowed as centres (default: the free
    ones). Candidate centres are visited by (score desc, flat index asc); a
    centre is taken unless it lies within Chebyshev distance 2r of a centre already taken (then the
    squares would overlap), which is the rule of RIPU's region selection. Each square is clipped to
    the image and loses its labeled pixels; pixels keep raster order. Returns CSR (indices,
    offsets) and the centre scores as numpy arrays, in the order taken (so already ranked by score).

    ``max_pixels`` stops the greedy pass after the first squares that hold that many pixels together
    (the shortest ranked prefix that does: all a pixel budget of that size can use); None covers the
    whole image. Only the squares taken leave the device. ``spread="share"`` scores each square by
    its share of the image's free pixels, which the squares tile (``budget.share_scores``): known
    before the pass ends, unlike the pixels of all the squares it would take.
    """
    check_spread(spread)
    height, width = free.shape
    center_score = torch.as_tensor(center_score).reshape(-1).to(free.device)
    square_pixels = None
    if max_pixels is not None:  # each centre's square: its free pixels (sums of ones: exact in float32)
        side = 2 * radius + 1
        square_pixels = (
            F.avg_pool2d(free.to(torch.float32)[None, None], side, stride=1, padding=radius, divisor_override=1)
            .round()
            .to(torch.int64)
            .reshape(-1)
        )
    allowed = free if centers is None else centers.to(free.device)
    centers = greedy_order_picks(
        priority_order(center_score, allowed), height, width, reach=2 * radius, weights=square_pixels, cover=max_pixels
    ).to(free.device)
    cy, cx = centers // width, centers % width
    offset = torch.arange(-radius, radius + 1, device=free.device)
    dy, dx = torch.meshgrid(offset, offset, indexing="ij")
    ys, xs = cy[:, None] + dy.reshape(1, -1), cx[:, None] + dx.reshape(1, -1)  # (R, k*k), raster order
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    keep = inside & free[ys.clamp(0, height - 1), xs.clamp(0, width - 1)]
    offsets = torch.zeros(len(centers) + 1, dtype=torch.int64, device=free.device)
    torch.cumsum(keep.sum(dim=1), 0, out=offsets[1:])
    sizes = (offsets[1:] - offsets[:-1]).to(torch.float64)
    scores = share_scores(sizes, free.sum()) if spread == "share" else center_score[centers].to(torch.float64)
    return tuple(to_host((ys * width + xs)[keep], offsets, scores))
