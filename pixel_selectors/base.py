"""What every selection rule takes and returns.

A rule is a pure function of per-image model outputs: probabilities in, queries out. It never
does I/O and never returns a pixel that is already labeled. Given the same inputs it returns the
same queries (ties are broken by flat pixel index), so ranking with one actor or eight agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PointQuery:
    """Pixels one rule asks the annotator to label in one image.

    ``ys``/``xs`` are int32 row/column coordinates in selection order; ``scores`` are the rule's
    own preference (higher is wanted more; only comparable within one rule). ``shortfall`` is how
    many of the requested points could not be given (the image had fewer unlabeled pixels).
    """

    ys: np.ndarray
    xs: np.ndarray
    scores: np.ndarray
    shortfall: int = 0

    def __post_init__(self):
        if not (len(self.ys) == len(self.xs) == len(self.scores)):
            raise ValueError("ys, xs and scores must have the same length")

    def __len__(self) -> int:
        return len(self.ys)

    @staticmethod
    def from_flat(flat_index: torch.Tensor, scores: torch.Tensor, width: int, shortfall: int = 0) -> PointQuery:
        flat, scores = to_host(flat_index.to(torch.int64), scores.detach().to(torch.float32))
        return PointQuery(
            ys=(flat // width).astype(np.int32),
            xs=(flat % width).astype(np.int32),
            scores=scores.copy(),
            shortfall=int(shortfall),
        )


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors as numpy arrays on the host. From a GPU, each is copied into a page-locked buffer
    and all copies are queued before one wait: a copy into ordinary (pageable) memory is staged by the
    driver and waited for on its own, which at 1024 x 2048 cost more than the selection itself."""
    if all(t.device.type == "cpu" for t in tensors):
        return [t.numpy() for t in tensors]
    buffers = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for buffer, tensor in zip(buffers, tensors):
        buffer.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [buffer.numpy() for buffer in buffers]


def check_head_probs(head_probs, expected_heads: int | None = None) -> tuple[int, int, int]:
    """Validate a sequence of per-head (K, H, W) probability maps; returns (K, H, W)."""
    if expected_heads is not None and len(head_probs) != expected_heads:
        raise ValueError(f"expected {expected_heads} heads of probabilities, got {len(head_probs)}")
    shape = tuple(head_probs[0].shape)
    if len(shape) != 3:
        raise ValueError(f"per-head probabilities must be (K, H, W), got shape {shape}")
    for p in head_probs[1:]:
        if tuple(p.shape) != shape:
            raise ValueError(f"all heads must have the same shape, got {shape} and {tuple(p.shape)}")
    return shape  # type: ignore[return-value]


def predicted_class(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the class axis of (K, H, W) probabilities or logits -> (H, W) int64; ties: lower class.

    ``max(dim=0).indices`` rather than ``argmax(dim=0)``: same result (first maximum wins), but on
    the CPU argmax over the leading, strided axis is about 15x slower (1.07 vs 0.07 ms on a 9 x 64 x 128
    map, measured), and it ran several times per ranked image.
    """
    return scores.max(dim=0).indices


def unlabeled_mask(labeled: torch.Tensor | None, height: int, width: int, device=None) -> torch.Tensor:
    """Boolean (H, W) mask of pixels that may still be selected."""
    if labeled is None:
        return torch.ones(height, width, dtype=torch.bool, device=device)
    if tuple(labeled.shape) != (height, width):
        raise ValueError(f"labeled mask must be ({height}, {width}), got {tuple(labeled.shape)}")
    return ~labeled.to(torch.bool)


def labeled_mask(ys, xs, height: int, width: int, device=None) -> torch.Tensor:
    """Boolean (H, W) mask, on ``device``, of the labeled pixels given as row/column coordinates."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[
        torch.as_tensor(np.asarray(ys), dtype=torch.int64, device=device),
        torch.as_tensor(np.asarray(xs), dtype=torch.int64, device=device),
    ] = True
    return mask


def allocate_evenly(capacities: list[int], total: int) -> list[int]:
    """Split ``total`` points over groups as evenly as their capacities allow (water-filling).

    Every group with candidates gets an equal share; a group with fewer candidates than its share
    gives all it has and the rest is shared again among the others. A remainder smaller than the
    number of groups goes one point each to the groups with the most candidates left (ties: lower
    index). The result never exceeds a capacity, and sums to ``min(total, sum(capacities))``.
    """
    alloc = [0] * len(capacities)
    remaining = min(total, sum(capacities))
    active = [i for i, c in enumerate(capacities) if c > 0]
    while remaining > 0 and active:
        share, extra = divmod(remaining, len(active))
        saturated = [i for i in active if capacities[i] - alloc[i] <= share]
        if saturated:
            for i in saturated:
                remaining -= capacities[i] - alloc[i]
                alloc[i] = capacities[i]
            active = [i for i in active if i not in saturated]
            continue
        for i in active:
            alloc[i] += share
        remaining -= share * len(active)
        for i in sorted(active, key=lambda i: (-(capacities[i] - alloc[i]), i))[:extra]:
            alloc[i] += 1
        remaining -= extra
    return alloc


def _as_readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def take_regions(indices, offsets, order):
    """Reorder (or subset) regions held as CSR ``indices``/``offsets``; returns the new pair.

    Region ``order[j]`` becomes region ``j``; each region keeps its own pixel order. Vectorized:
    no Python loop over regions. numpy arrays, or torch tensors (then on their device).
    """
    if isinstance(indices, torch.Tensor):
        order = torch.as_tensor(order, dtype=torch.int64, device=indices.device)
        sizes = (offsets[1:] - offsets[:-1])[order]
        new_offsets = torch.zeros(len(order) + 1, dtype=torch.int64, device=indices.device)
        torch.cumsum(sizes, 0, out=new_offsets[1:])
        shift = torch.repeat_interleave(offsets[:-1][order] - new_offsets[:-1], sizes)
        return indices[torch.arange(len(shift), device=indices.device) + shift], new_offsets
    order = np.asarray(order, dtype=np.int64)
    sizes = (offsets[1:] - offsets[:-1])[order]
    new_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(sizes, out=new_offsets[1:])
    shift = np.repeat(offsets[:-1][order] - new_offsets[:-1], sizes)
    return indices[np.arange(new_offsets[-1], dtype=np.int64) + shift], new_offsets


def head_length(sizes, max_pixels: int) -> int:
    """How many regions the fewest first ones of ``sizes`` (ranked order; a numpy array or a tensor)
    that hold at least ``max_pixels`` pixels are; all of them when they hold fewer."""
    if max_pixels <= 0:
        return 0
    if isinstance(sizes, torch.Tensor):
        wanted = torch.tensor([int(max_pixels)], dtype=sizes.dtype, device=sizes.device)
        last = int(torch.searchsorted(torch.cumsum(sizes, 0), wanted, side="left"))
    else:
        last = int(np.searchsorted(np.cumsum(sizes), int(max_pixels), side="left"))
    return min(len(sizes), last + 1)


@dataclass(frozen=True, eq=False)
class RegionQuery:
    """The candidate regions one region rule offers for one image (no per-image budget).

    Regions are held in CSR form so that an image with hundreds of thousands of small regions is
    three flat arrays, not a list of Python objects:

    - ``height``, ``width``: the image size; pixels are flat indices ``y * width + x``.
    - ``indices``: int64 (N,), every region's flat pixel indices, region after region. Inside a
      region the order is the rule's deterministic order (all rules here use ascending flat
      index, i.e. raster order); a region truncated by a budget keeps a prefix of it.
    - ``offsets``: int64 (R + 1,), region ``r`` is ``indices[offsets[r]:offsets[r + 1]]``;
      ``offsets[0] == 0`` and ``offsets[-1] == N``.
    - ``scores``: float64 (R,), higher is wanted more. Comparable across images of one rule and
      one checkpoint (that is what the global budget merge relies on), not across rules.

    Invariants (checked on construction): regions are non-empty, pixels are inside the image, no
    pixel appears twice in a query, scores are not NaN. Arrays are stored read-only.

    Selectors return regions ranked by (score desc, then their natural order); ``ranked()`` restores
    that order for a query built by hand. A region query carries no ``shortfall``: it asks for no
    budget. Whether the pool could fill a budget is reported by the merge (``BudgetResult``).
    """

    height: int
    width: int
    indices: np.ndarray
    offsets: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        height, width = int(self.height), int(self.width)
        if height < 0 or width < 0:
            raise ValueError(f"image size must be non-negative, got {height}x{width}")
        indices = np.array(self.indices, dtype=np.int64, copy=True).reshape(-1)
        offsets = np.array(self.offsets, dtype=np.int64, copy=True).reshape(-1)
        scores = np.array(self.scores, dtype=np.float64, copy=True).reshape(-1)
        if len(offsets) != len(scores) + 1 or offsets[0] != 0 or offsets[-1] != len(indices):
            raise ValueError(
                f"offsets must be 0..{len(indices)} with one entry per region plus one "
                f"(got {len(offsets)} offsets for {len(scores)} scores)"
            )
        if np.any(np.diff(offsets) <= 0):
            raise ValueError("every region must hold at least one pixel")
        if len(indices) and (indices.min() < 0 or indices.max() >= height * width):
            raise ValueError(f"pixel index out of range for a {height}x{width} image")
        if len(indices):
            seen = np.zeros(height * width, dtype=bool)  # a bool per pixel: cheaper than counting each
            seen[indices] = True
            if np.count_nonzero(seen) != len(indices):
                raise ValueError("a pixel appears in more than one place of a region query")
        if np.isnan(scores).any():
            raise ValueError("region scores must not be NaN")
        for name, value in (("height", height), ("width", width)):
            object.__setattr__(self, name, value)
        for name, value in (("indices", indices), ("offsets", offsets), ("scores", scores)):
            object.__setattr__(self, name, _as_readonly(value))

    @classmethod
    def derived(cls, query: RegionQuery, indices: np.ndarray, offsets: np.ndarray, scores: np.ndarray) -> RegionQuery:
        """A query made from a checked ``query``'s own regions (reordered, a subset, or rescored with
        finite scores), built without checking it again: at 1024 x 2048 each check reads every pixel
        of the image, and ranking builds several such queries per image."""
        derived = object.__new__(cls)
        object.__setattr__(derived, "height", query.height)
        object.__setattr__(derived, "width", query.width)
        for name, value, dtype in (
            ("indices", indices, np.int64),
            ("offsets", offsets, np.int64),
            ("scores", scores, np.float64),
        ):
            object.__setattr__(derived, name, _as_readonly(np.array(value, dtype=dtype, copy=True)))
        return derived

    @classmethod
    def from_regions(cls, regions, scores, height: int, width: int) -> RegionQuery:
        """Build from a sequence of 1-D flat-index arrays (one per region) and their scores."""
        regions = [np.asarray(r, dtype=np.int64).reshape(-1) for r in regions]
        offsets = np.zeros(len(regions) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in regions], out=offsets[1:])
        indices = np.concatenate(regions) if regions else np.empty(0, dtype=np.int64)
        return cls(height=height, width=width, indices=indices, offsets=offsets, scores=np.asarray(scores))

    @classmethod
    def empty(cls, height: int, width: int) -> RegionQuery:
        return cls(
            height=height, width=width, indices=np.empty(0, np.int64), offsets=np.zeros(1, np.int64), scores=np.empty(0)
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def sizes(self) -> np.ndarray:
        """int64 (R,): pixels per region."""
        return np.diff(self.offsets)

    @property
    def num_pixels(self) -> int:
        """Pixels over all regions."""
        return int(self.offsets[-1])

    def region(self, r: int) -> np.ndarray:
        """Flat pixel indices of region ``r`` in stored order (a read-only view)."""
        if not -len(self) <= r < len(self):
            raise IndexError(f"region {r} out of range for {len(self)} regions")
        r %= len(self)
        return self.indices[self.offsets[r] : self.offsets[r + 1]]

    def regions(self) -> list[np.ndarray]:
        return [self.region(r) for r in range(len(self))]

    def mask(self) -> np.ndarray:
        """bool (H, W): the pixels of all regions."""
        out = np.zeros(self.height * self.width, dtype=bool)
        out[self.indices] = True
        return out.reshape(self.height, self.width)

    def ranked(self) -> RegionQuery:
        """The same regions ordered by (score desc, current index asc)."""
        return self._subset(np.argsort(-self.scores, kind="stable"))

    def head(self, max_pixels: int) -> RegionQuery:
        """The fewest best-ranked regions that together hold at least ``max_pixels`` pixels.

        An image can never give more than the whole budget, so an actor may send ``head(budget)``
        instead of every candidate: the global merge's result is the same (its tie-break inside an
        image is the ranked order, which this keeps).
        """
        ranked = self.ranked()
        return ranked._subset(np.arange(head_length(ranked.sizes, max_pixels)))

    def _subset(self, order: np.ndarray) -> RegionQuery:
        indices, offsets = take_regions(self.indices, self.offsets, order)
        return RegionQuery.derived(self, indices, offsets, self.scores[np.asarray(order, np.int64)])
