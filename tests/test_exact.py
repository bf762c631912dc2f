"""Device-independent arithmetic of the selectors (pixel_selectors/exact.py)."""

import numpy as np
import pytest
import torch

from pixel_selectors import random_points
from pixel_selectors.exact import fixed_point_bits, seeded_uniform, segment_sums, splitmix64


def lowbias32_reference(seed: int, count: int) -> np.ndarray:
    """The draws in numpy's uint32, whose arithmetic is defined to wrap modulo 2**32."""
    key = splitmix64(seed)
    x = np.arange(count, dtype=np.uint32) * np.uint32((key | 1) & 0xFFFFFFFF) + np.uint32(key >> 32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    x = x ^ (x >> np.uint32(16))
    return x.view(np.int32).astype(np.float64) / 2**32 + 0.5


@pytest.mark.parametrize("seed", [0, 5, 2**40 + 7, -3])
def test_seeded_draws_are_the_unsigned_hash_of_seed_and_index(seed):
    """torch's int32 arithmetic gives exactly the unsigned 32-bit hash (the bits any device computes)."""
    from pixel_selectors.exact import _hash_on_device, _hash_on_host

    draws = seeded_uniform(seed, 20_001)
    assert draws.dtype == torch.float64
    assert np.array_equal(draws.numpy(), lowbias32_reference(seed & (2**64 - 1), 20_001))
    key = splitmix64(seed & (2**64 - 1))  # what a GPU runs: torch's int32, here on the CPU
    assert np.array_equal(
        _hash_on_device(20_001, key | 1, key >> 32, "cpu").numpy(), _hash_on_host(20_001, key | 1, key >> 32)
    )
    assert float(draws.min()) >= 0 and float(draws.max()) < 1
    assert len(torch.unique(draws)) == len(draws)  # a bijection of the indices: no ties
    assert torch.equal(draws, seeded_uniform(seed, 20_001))


def test_seeded_draws_are_uniform_and_independent_across_seeds():
    count = 1 << 16
    first, second = seeded_uniform(1, count), seeded_uniform(2, count)
    histogram = torch.histc(first, bins=16, min=0, max=1)
    chi_square = float(((histogram - count / 16) ** 2 / (count / 16)).sum())
    assert chi_square < 40  # 15 degrees of freedom: p < 0.001 above 37.7
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.02
    # Neighbouring pixels are not correlated either (the draws of index i and i + 1).
    assert abs(float(torch.corrcoef(torch.stack([first[:-1], first[1:]]))[0, 1])) < 0.02
    probs = (torch.full((3, 64, 128), 1 / 3),)
    picks = [set(zip(q.ys.tolist(), q.xs.tolist())) for q in (random_points(probs, 200, seed=s) for s in (1, 2))]
    assert len(picks[0] & picks[1]) < 10  # 200 of 8192 pixels twice: about 5 in common by chance


def test_segment_sums_are_exact_in_fixed_point_whatever_the_order():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(3, 1000, generator=generator, dtype=torch.float64)
    sizes = torch.tensor([1, 10, 0, 989])
    got = segment_sums(values, sizes)
    expected = torch.stack([values[:, :1].sum(1), values[:, 1:11].sum(1), torch.zeros(3), values[:, 11:].sum(1)], 1)
    assert got.shape == (3, 4) and torch.allclose(got, expected, atol=1e-9, rtol=0)
    # Any order inside a segment gives the same bits: the fixed-point terms add exactly.
    shuffled = values.clone()
    shuffled[:, 11:] = values[:, 11:][:, torch.randperm(989, generator=generator)]
    assert torch.equal(segment_sums(shuffled, sizes), got)
    assert torch.equal(segment_sums(values[1], sizes), got[1])  # one row: the same sums


def test_segment_sums_mark_non_finite_segments_and_handle_empty_input():
    values = torch.tensor([1.0, float("nan"), 2.0, 3.0, float("inf")])
    got = segment_sums(values, torch.tensor([1, 2, 1, 1]))
    assert got[0] == 1.0 and got[2] == 3.0 and torch.isnan(got[1]) and torch.isnan(got[3])
    assert segment_sums(torch.empty(0), torch.empty(0, dtype=torch.int64)).shape == (0,)
    assert segment_sums(torch.empty(2, 0), torch.zeros(3, dtype=torch.int64)).tolist() == [[0.0] * 3] * 2


def test_fixed_point_leaves_room_for_every_partial_sum():
    assert fixed_point_bits(1.0, 1) == 40
    bits = fixed_point_bits(50.0, 19 * 2**21)  # raw logits over a whole 1024 x 2048 image
    assert 2**bits * 50.0 * 19 * 2**21 < 2**62 and bits > 20


def upsampled_softmax(seed, classes=19, height=96, width=160, levels=0):
    """A softmax upsampled 8x bilinearly, as a segmentation network's: many windows whose scores are
    mathematically equal; ``levels`` > 0 quantizes the logits (plateaus)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(1, classes, height // 8, width // 8, generator=generator) * 4
    logits = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (logits * levels).round() / levels if levels else logits


@pytest.mark.parametrize("levels", [0, 2])
@pytest.mark.parametrize(
    "name, settings",
    [
        ("region_impurity_regions", {"budget_pixels": 600, "params": {"k": 3}}),
        ("region_impurity", {"num_points": 40, "params": {"k": 9}}),
    ],
)
def test_ripu_queries_do_not_move_with_a_devices_rounding(monkeypatch, name, settings, levels):
    """A GPU's logarithm differs from the CPU's in the last bits of a float64: RIPU's scores must not
    reorder for that (the greedy squares then diverged from the first differing pick on, and with them
    every share score of the image). Simulated here: every -p log p off by up to 2 ulps of its dtype."""
    from pixel_selectors import select_image

    probs = [upsampled_softmax(7, levels=levels).softmax(0)]
    labeled = torch.zeros(96, 160, dtype=torch.bool)
    labeled[10:20, 30:90] = True
    exact = select_image(name, probs, labeled=labeled, seed=5, **settings)
    real_entr, generator = torch.special.entr, torch.Generator().manual_seed(levels)

    def entr_off_by_ulps(x, out=None):
        result = real_entr(x, out=out)
        ulps = torch.randint(-2, 3, result.shape, generator=generator).to(result.dtype)
        return result.mul_(1 + ulps * torch.finfo(result.dtype).eps)

    monkeypatch.setattr(torch.special, "entr", entr_off_by_ulps)
    for _ in range(3):
        moved = select_image(name, probs, labeled=labeled, seed=5, **settings)
        if name == "region_impurity":
            assert np.array_equal(moved.ys, exact.ys) and np.array_equal(moved.xs, exact.xs)
            assert np.array_equal(moved.scores, exact.scores)
        else:
            assert np.array_equal(moved.indices, exact.indices) and np.array_equal(moved.scores, exact.scores)


def test_group_sums_give_a_gpus_sort_and_scan_bits_with_a_cpus_index_add():
    """The CPU adds each value into its group, a GPU sorts by group and scans: the same bits."""
    from pixel_selectors.exact import group_sums

    generator = torch.Generator().manual_seed(1)
    values = torch.rand(19, 5000, generator=generator, dtype=torch.float64)
    groups = torch.randint(0, 7, (5000,), generator=generator)
    groups[groups == 3] = 2  # an empty group
    got = group_sums(values, groups, 7)
    by_group = torch.sort(groups, stable=True).indices
    assert torch.equal(got, segment_sums(values[:, by_group], torch.bincount(groups, minlength=7)))
    assert torch.allclose(got[:, 2], values[:, groups == 2].sum(1), atol=1e-9) and not got[:, 3].any()
    values[4, 10] = float("nan")
    flagged = group_sums(values, groups, 7)
    assert torch.isnan(flagged[4, groups[10]]) and int(torch.isnan(flagged).sum()) == 1
