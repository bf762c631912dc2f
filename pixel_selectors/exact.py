"""Arithmetic that gives the same bits on every device, for the numbers that decide which pixels a
rule picks.

A GPU and a CPU round differently wherever the order of a sum is left to the device (a parallel
reduction, ``segment_reduce``'s CUB path on a GPU, a pooling) or a transcendental function comes
from the device's own library (``log`` on a GPU is within 1 ulp, not the CPU's bits). Scores that
are mathematically equal (a softmax upsampled 8x bilinearly makes many) then differ in their last
bits, by device, and the ranking breaks their ties by that noise instead of by pixel index; a greedy
selection then diverges from the first differing pick on. So:

- sums that rank things are taken in fixed point: each term rounded once to a multiple of a power
  of two, then added as int64, which is exact and so the same in any order (``segment_sums``);
- random draws come from a counter-based hash of (seed, pixel index) in 32-bit integer operations
  (``seeded_uniform``): the same draws on every device, made where they are used, with no generator
  state and no host-to-device copy.

Plain torch, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


def _signed32(value: int) -> int:
    """An unsigned 32-bit value as the int32 that has its bits."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def splitmix64(value: int) -> int:
    """Steele, Lea and Flood's SplitMix64 finaliser of a Python int (64 bits): spreads a seed such as
    ``image_seed``'s (consecutive integers) over all 64 bits, exactly, on the host."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


# Chris Wellons' "lowbias32" integer hash (hash-prospector): xorshift-multiply, a bijection of the
# 32-bit integers with low bias. As int32 constants for torch's int32 arithmetic.
_MIX_MULTIPLIERS = (_signed32(0x7FEB352D), _signed32(0x846CA68B))


def _hash_on_device(count: int, multiplier: int, offset: int, device) -> torch.Tensor:
    """lowbias32(i * multiplier + offset) for i < ``count`` in torch's int32 on ``device`` (int32
    arithmetic wraps modulo 2**32; ``>>`` copies the sign bit, so each shift is masked to what a
    logical shift gives)."""
    x = torch.arange(count, dtype=torch.int32, device=device)
    x *= _signed32(multiplier)
    x += _signed32(offset)
    x ^= (x >> 16) & 0xFFFF
    x *= _MIX_MULTIPLIERS[0]
    x ^= (x >> 15) & 0x1FFFF
    x *= _MIX_MULTIPLIERS[1]
    x ^= (x >> 16) & 0xFFFF
    return x


def _hash_on_host(count: int, multiplier: int, offset: int) -> np.ndarray:
    """The same 32 bits as ``_hash_on_device``, in numpy's uint32 (which wraps modulo
    2**32 by definition and shifts logically): in place with one buffer, faster on a CPU than torch's
    int32 with its masked shifts. Returned as int32, the bits unchanged."""
    x = np.arange(count, dtype=np.uint32)
    x *= np.uint32(multiplier & _MASK32)
    x += np.uint32(offset & _MASK32)
    shifted = np.empty_like(x)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
        np.right_shift(x, shift, out=shifted)
        x ^= shifted
        if factor is not None:
            x *= np.uint32(factor)
    return x.view(np.int32)


def seeded_uniform(seed: int, count: int, device=None) -> torch.Tensor:
    """float64 (count,): a uniform draw in [0, 1) per index 0..count-1, a pure function of (seed, index).

    Index i becomes the 32-bit integer i * a + b, with a (odd) and b the two halves of
    ``splitmix64(seed)``, and goes through the lowbias32 hash; the result's bits, read as an int32
    and divided by 2**32, plus 1/2, are the draw. Both steps are bijections of the 32-bit integers,
    so the ``count`` draws are distinct (no ties). The same bits on every device (integer operations
    only: torch's int32 on a GPU, numpy's uint32 on a CPU), computed where they are used in a dozen
    element-wise operations: no generator, no copy from the host to a GPU.
    """
    if not 0 <= count <= 1 << 31:
        raise ValueError(f"count must be in [0, 2**31], got {count}")
    key = splitmix64(int(seed) & _MASK64)
    multiplier, offset = key | 1, key >> 32
    if torch.device(device or "cpu").type == "cpu":
        x = torch.from_numpy(_hash_on_host(count, multiplier, offset))
    else:
        x = _hash_on_device(count, multiplier, offset, device)
    return x.to(torch.float64).mul_(2.0**-32).add_(0.5)


# The finest fixed-point step used: 2**-40 (far below float32 inputs' own precision, 2**-24).
FIXED_POINT_MAX_BITS = 40


def fixed_point_bits(bound: float, terms: int) -> int:
    """Fraction bits for adding ``terms`` values of magnitude <= ``bound`` as int64 without overflow
    (every partial sum below 2**62), at most ``FIXED_POINT_MAX_BITS``."""
    exponent = math.frexp(max(float(bound), 0.0) * max(int(terms), 1))[1]  # bound * terms < 2**exponent
    return min(FIXED_POINT_MAX_BITS, 61 - exponent)


def to_fixed_point(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int64: ``values`` (float) rounded to multiples of 2**-bits, in units of 2**-bits. Scaling by a
    power of two is exact and ``round`` is IEEE's (half to even), so equal inputs give equal integers on
    any device."""
    return (values.to(torch.float64) * 2.0**bits).round_().to(torch.int64)


def _magnitude(values: torch.Tensor) -> float:
    """max |value| (NaN if any value is NaN), in one pass over the values."""
    if values.numel() == 0:
        return 0.0
    smallest, largest = torch.aminmax(values)
    return max(-float(smallest), float(largest))


def _fixed_point_rows(values: torch.Tensor, terms: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """``values`` (..., N) as fixed-point rows (R, N) int64 whose every partial sum over ``terms``
    of them fits, the bits used, and a (R, N) mask of the non-finite values (None when all are
    finite; they count as 0 in the rows)."""
    rows = values.reshape(-1, values.shape[-1]).to(torch.float64)
    bound = _magnitude(rows)  # NaN or inf if any value is
    bad = None
    if not math.isfinite(bound):
        bad = ~torch.isfinite(rows)
        rows = rows.masked_fill(bad, 0.0)
        bound = _magnitude(rows)
    bits = fixed_point_bits(bound, terms)
    return to_fixed_point(rows, bits), bits, bad


def segment_sums(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments along the last axis: values (..., N), sizes (S,) summing to N
    -> float64 (..., S), segment j being the next ``sizes[j]`` values of each row.

    Fixed point (``to_fixed_point`` with ``fixed_point_bits``: 2**-40 for probabilities over an image
    at 1024 x 2048) and one int64 running sum over the flattened tensor, read at the segment ends:
    exact, so the same bits on every device whatever the order a parallel scan adds in, and one scan
    whatever the segments' sizes (``torch.segment_reduce`` on a GPU gives each segment of a 2-D input
    to one thread: seconds for one class holding most of an image's pixels). A segment that holds a
    NaN or an infinity sums to NaN.
    """
    sizes = sizes.to(device=values.device, dtype=torch.int64)
    if values.numel() == 0:
        return torch.zeros((*values.shape[:-1], len(sizes)), dtype=torch.float64, device=values.device)
    length = values.shape[-1]
    rows, bits, bad = _fixed_point_rows(values, values.numel())
    ends = torch.cumsum(sizes, 0)
    row_start = torch.arange(rows.shape[0], device=values.device)[:, None] * length

    def sums_of(terms: torch.Tensor) -> torch.Tensor:  # (R, N) int64 -> (R, S), one running sum
        running = torch.zeros(terms.numel() + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(terms.reshape(-1), 0, out=running[1:])
        return running[row_start + ends] - running[row_start + ends - sizes]

    sums = sums_of(rows).to(torch.float64) * 2.0**-bits
    if bad is not None:
        sums = sums.masked_fill(sums_of(bad.to(torch.int64)) > 0, float("nan"))
    return sums.reshape(*values.shape[:-1], len(sizes))


def group_sums(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sums of values (..., N) by group, ``groups`` (N,) int64 in [0, num_groups) -> float64
    (..., num_groups); a group holding a NaN or an infinity sums to NaN.

    Fixed point like ``segment_sums`` and just as exact, so each device adds the way it does best:
    a CPU adds every value into its group (``index_add_``), a GPU sorts by group and takes one
    running sum (atomic adds into a few groups would queue behind each other).
    """
    if values.device.type != "cpu":
        by_group = torch.sort(groups, stable=True).indices
        return segment_sums(values[..., by_group], torch.bincount(groups, minlength=num_groups))
    shape = (*values.shape[:-1], num_groups)
    if values.numel() == 0:
        return torch.zeros(shape, dtype=torch.float64)
    rows, bits, bad = _fixed_point_rows(values, values.numel())  # the same units as segment_sums: the same bits
    sums = torch.zeros(rows.shape[0], num_groups, dtype=torch.int64).index_add_(1, groups, rows)
    sums = sums.to(torch.float64) * 2.0**-bits
    if bad is not None:
        flagged = torch.zeros(rows.shape[0], num_groups, dtype=torch.int64).index_add_(1, groups, bad.to(torch.int64))
        sums = sums.masked_fill(flagged > 0, float("nan"))
    return sums.reshape(shape)
