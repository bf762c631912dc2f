"""Arithmetic that gives the same bits on every device, for the numbers that decide which pixels a
selector picks.

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
# 32-bit integers with low bias. As int32 constants: torch multiplies int32 modulo 2**32.
_MIX_MULTIPLIERS = (_signed32(0x7FEB352D), _signed32(0x846CA68B))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int32 tensor, in place. ``>>`` on int32 copies the sign bit, so each shift is
    masked to what a logical shift gives."""
    x ^= (x >> 16) & 0xFFFF
    x *= _MIX_MULTIPLIERS[0]
    x ^= (x >> 15) & 0x1FFFF
    x *= _MIX_MULTIPLIERS[1]
    x ^= (x >> 16) & 0xFFFF
    return x


def seeded_uniform(seed: int, count: int, device=None) -> torch.Tensor:
    """float64 (count,): a uniform draw in [0, 1) per index 0..count-1, a pure function of (seed, index).

    Each index goes through two rounds of a 32-bit integer hash keyed by the two halves of
    ``splitmix64(seed)``; both rounds are bijections, so the ``count`` draws are distinct (no ties)
    and multiples of 2**-32. The same bits on every device (integer operations only), computed on
    ``device`` in a dozen element-wise operations: no generator, no copy from the host.
    """
    if not 0 <= count <= 1 << 31:
        raise ValueError(f"count must be in [0, 2**31], got {count}")
    key = splitmix64(int(seed) & _MASK64)
    x = torch.arange(count, dtype=torch.int32, device=device)
    x ^= _signed32(key)
    _mix32(x)
    x ^= _signed32(key >> 32)
    _mix32(x)
    return x.to(torch.float64).remainder(2.0 ** 32) * 2.0 ** -32  # the unsigned value of the bits, / 2**32


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
    return torch.round(values.to(torch.float64) * 2.0 ** bits).to(torch.int64)


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
    rows = values.reshape(-1, length)
    finite = torch.isfinite(rows)
    clean = torch.where(finite, rows.to(torch.float64), 0.0)
    bound = float(clean.abs().max()) if clean.numel() else 0.0
    bits = fixed_point_bits(bound, clean.numel())
    running = torch.zeros(clean.numel() + 1, dtype=torch.int64, device=values.device)
    torch.cumsum(to_fixed_point(clean, bits).reshape(-1), 0, out=running[1:])
    ends = torch.cumsum(sizes, 0)
    row_start = torch.arange(rows.shape[0], device=values.device)[:, None] * length
    sums = (running[row_start + ends] - running[row_start + ends - sizes]).to(torch.float64) * 2.0 ** -bits
    if not bool(finite.all()):
        bad = torch.zeros_like(running)
        torch.cumsum((~finite).reshape(-1).to(torch.int64), 0, out=bad[1:])
        sums = sums.masked_fill(bad[row_start + ends] > bad[row_start + ends - sizes], float("nan"))
    return sums.reshape(*values.shape[:-1], len(sizes))
