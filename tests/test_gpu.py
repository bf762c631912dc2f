"""Selection and adaptation on a GPU (tests marked ``gpu``: skipped without CUDA), and the GPU check's own run.

These run on the GPU machine of ``scripts/gpu_check.sh``, which has neither Ray, MLflow nor
hypothesis: nothing here imports them.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from pixel_selectors import POINTS, RULES, SEGMENTER, RegionQuery, select_image
from pixel_selectors.regions import (
    components,
    components_by_propagation,
    greedy_spread,
    greedy_spread_rounds,
    priority_order,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def maps(seed, classes=19, height=96, width=160, levels=0):
    """Two heads' softmax maps; ``levels`` > 0 quantizes the logits (exact ties and plateaus)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(2, classes, height // 8, width // 8, generator=generator) * 4
    logits = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    if levels:
        logits = (logits * levels).round() / levels
    return [logits[0].softmax(0), (logits[0] + 0.3 * logits[1]).softmax(0)]


# Selectors whose scores are integer arithmetic or fixed point from the inputs' own bits (exact.py):
# the same bits on both devices. The others go through a float32 reduction whose order is the device's.
EXACT_SCORES = {"random", "random_regions", "region_impurity", "region_impurity_regions"}


def same_query(a, b, exact=False):
    close = np.array_equal if exact else lambda x, y: np.allclose(x, y, rtol=1e-5, atol=1e-7, equal_nan=True)
    if isinstance(a, RegionQuery):
        return (
            np.array_equal(a.indices, b.indices) and np.array_equal(a.offsets, b.offsets) and close(a.scores, b.scores)
        )
    return (
        np.array_equal(a.ys, b.ys)
        and np.array_equal(a.xs, b.xs)
        and a.shortfall == b.shortfall
        and close(a.scores, b.scores)
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("levels", [0, 2])
def test_a_selector_gives_the_same_queries_on_the_gpu_as_on_the_cpu(name, levels):
    probs = maps(7, levels=levels)
    if RULES[name].reads == SEGMENTER:
        probs = probs[:1]
    labeled = torch.zeros(96, 160, dtype=torch.bool)
    labeled[10:20, 30:90] = True
    settings = {"num_points": 40} if RULES[name].kind == POINTS else {"budget_pixels": 600}
    params = {"k": 9} if name == "region_impurity" else ({"k": 3} if "region" in name else {})
    on_cpu = select_image(name, probs, labeled=labeled, seed=5, params=params, **settings)
    on_gpu = select_image(name, [p.cuda() for p in probs], labeled=labeled.cuda(), seed=5, params=params, **settings)
    assert same_query(on_cpu, on_gpu, exact=name in EXACT_SCORES)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["random_regions", "region_impurity_regions"])
def test_a_tiling_selector_cut_at_a_share_gives_the_same_squares_on_the_gpu(name):
    """The greedy rounds stop at a pixel cover on the GPU where the sequential pass stops on the CPU."""
    probs = maps(11)[:1]
    labeled = torch.zeros(96, 160, dtype=torch.bool)
    labeled[40:60, :50] = True
    for max_share in (0.02, 0.1):
        on_cpu = select_image(
            name, probs, labeled=labeled, seed=3, params={"k": 3}, budget_pixels=10**6, max_share=max_share
        )
        on_gpu = select_image(
            name,
            [probs[0].cuda()],
            labeled=labeled.cuda(),
            seed=3,
            params={"k": 3},
            budget_pixels=10**6,
            max_share=max_share,
        )
        assert same_query(on_cpu, on_gpu, exact=True) and on_cpu.num_pixels >= max_share * int((~labeled).sum())


@pytest.mark.gpu
@needs_cuda
def test_draws_and_fixed_point_sums_have_the_same_bits_on_the_gpu():
    from pixel_selectors.exact import group_sums, seeded_uniform, segment_sums

    for seed in (0, 7, 2**40 + 3):
        assert torch.equal(seeded_uniform(seed, 100_003, "cuda").cpu(), seeded_uniform(seed, 100_003))
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(19, 50_000, generator=generator, dtype=torch.float64)
    groups = torch.randint(0, 19, (50_000,), generator=generator)
    groups[groups == 5] = 0  # one class with most of the pixels, one with none
    assert torch.equal(group_sums(values.cuda(), groups.cuda(), 19).cpu(), group_sums(values, groups, 19))
    sizes = torch.tensor([1, 30_000, 0, 19_999])
    assert torch.equal(segment_sums(values[3].cuda(), sizes.cuda()).cpu(), segment_sums(values[3], sizes))


@pytest.mark.gpu
@needs_cuda
def test_components_and_greedy_rounds_on_the_gpu_match_the_cpu():
    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(300, 500, generator=generator) < 0.4
    indices, offsets = components(mask.numpy())
    got_indices, got_offsets = components_by_propagation(mask.cuda())
    assert np.array_equal(got_indices.cpu().numpy(), indices) and np.array_equal(got_offsets.cpu().numpy(), offsets)
    score = torch.randint(0, 4, (300 * 500,), generator=generator).double()
    order = priority_order(score, torch.ones(300, 500, dtype=torch.bool))
    for reach, limit in ((2, None), (32, 40)):
        expected = greedy_spread(order.numpy(), 300, 500, reach, limit)
        assert greedy_spread_rounds(order.cuda(), 300, 500, reach, limit).cpu().tolist() == expected
    weights = torch.randint(1, 10, (300 * 500,), generator=generator)
    expected = greedy_spread(order.numpy(), 300, 500, 2, weights=weights.numpy(), cover=3000)
    got = greedy_spread_rounds(order.cuda(), 300, 500, 2, weights=weights.cuda(), cover=3000)
    assert got.cpu().tolist() == expected and int(weights[expected].sum()) >= 3000


@pytest.mark.gpu
@needs_cuda
def test_loops_replayed_as_cuda_graphs_give_what_the_uncaptured_loops_give(monkeypatch):
    from pixel_selectors import device_loops
    from pixel_selectors.pieces import class_pieces, pieces_by_scipy

    generator = torch.Generator().manual_seed(11)
    mask = torch.rand(300, 500, generator=generator) < 0.45
    classes = torch.randint(0, 3, (300, 500), generator=generator)
    score = torch.randint(0, 4, (300 * 500,), generator=generator).double()
    order = priority_order(score, torch.ones(300, 500, dtype=torch.bool)).cuda()
    weights = torch.randint(1, 10, (300 * 500,), generator=generator).cuda()

    def every_loop():
        return [
            [t.cpu() for t in components_by_propagation(mask.cuda())],
            [t.cpu() for t in class_pieces(mask.cuda(), classes.cuda())],
            greedy_spread_rounds(order, 300, 500, 2).cpu(),
            greedy_spread_rounds(order, 300, 500, 2, weights=weights, cover=3000).cpu(),
        ]

    monkeypatch.setenv(device_loops.GRAPHS_ENV, "0")
    uncaptured = every_loop()
    monkeypatch.setenv(device_loops.GRAPHS_ENV, "1")
    device_loops._graphs.clear()
    captured = every_loop()
    assert len(device_loops._graphs) == 4  # one graph per loop kind and setting
    again = every_loop()  # replays the cached graphs on new copies of the inputs
    assert len(device_loops._graphs) == 4
    for got in (captured, again):
        assert all(
            torch.equal(a, b) for a, b in zip(got[0] + got[1] + got[2:], uncaptured[0] + uncaptured[1] + uncaptured[2:])
        )
    indices, offsets = pieces_by_scipy(mask.numpy(), classes.numpy())
    assert np.array_equal(captured[1][0].numpy(), indices) and np.array_equal(captured[1][1].numpy(), offsets)
    # Another size captures its own graph; the cached ones stay.
    components_by_propagation(mask[:200].cuda())
    assert len(device_loops._graphs) == 5


@pytest.mark.gpu
@needs_cuda
def test_an_adaptation_step_runs_in_bf16_and_channels_last_on_the_gpu():
    from experiment_config import load_config
    from trainers.engine import build_adaptation_models, build_optimizers, loss_weights
    from trainers.step import adaptation_step

    cfg = load_config(
        None,
        {
            "adapt.adversarial_weight": 0.001,
            "adapt.confusion_weight": 0.1,
            "adapt.soft_label_weight": 0.1,
            "adapt.pseudo_label_weight": 1.0,
            "adapt.discrepancy_weight": 1.0,
            "adapt.selector_backbone_step": True,  # MCD's step C (off by default): every update runs
        },
    )
    weights = loss_weights(cfg, "adapt")
    models = build_adaptation_models(cfg, 9, weights)
    for name in ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels"):
        module = getattr(models, name).cuda()
        if name != "soft_labels":
            module.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(models, cfg, "adapt")
    before = [p.detach().clone() for p in models.segmenter.parameters()]
    images = torch.randn(2, 3, 64, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 9, (2, 64, 128), device="cuda")
    selector_before = [p.detach().clone() for p in models.selector.parameters()]
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        losses = adaptation_step(models, optimizers, (images, labels), (images.flip(-1), labels), weights)
    # Every update ran: G's target CE and adversarial term, Dis, theta_D, and LabOR's selector network S
    # (supervised, then MCD's two discrepancy steps: heads, then backbone).
    assert {
        "target_ce",
        "adversarial",
        "discriminator",
        "domain_classifier",
        "selector_total",
        "selector_discrepancy_heads",
        "selector_discrepancy_backbone",
    } <= set(losses), sorted(losses)
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, models.segmenter.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(selector_before, models.selector.parameters()))


@pytest.mark.gpu
@needs_cuda
def test_ranking_selects_on_the_gpu_and_skips_labeled_pixels():
    from orchestrator.round.ranking import rank_images
    from trainers.models import build_model

    network = build_model("small_segnet", 9, 8, 2).cuda().eval()
    images = torch.randn(2, 3, 64, 128, device="cuda")
    labeled = {1: (np.arange(10), np.arange(10))}
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        out = dict(rank_images(network, images, [0, 1], labeled, "labor_ppl", num_points=40, seeds=[0, 1]))
    assert len(out[0]) == len(out[1]) == 40
    assert not set(zip(out[1].ys.tolist(), out[1].xs.tolist())) & {(i, i) for i in range(10)}


def test_the_gpu_check_runs_its_parts_on_the_cpu_without_ray_mlflow_or_hypothesis(tmp_path):
    """The whole module with a tiny model and sizes: every part leaves its figures, and nothing it
    imports needs a package the GPU machine lacks (the module refuses them before it starts)."""
    probe = (
        "import benchmarks.gpu_check as c, importlib.util; c.refuse_absent_packages(); "
        "import benchmarks.profile_selectors, pixel_selectors, trainers.step, orchestrator.round.ranking; "
        "assert importlib.util.find_spec('hypothesis') is None or importlib.util.find_spec('hypothesis').origin "
        "is None\ntry:\n import ray\nexcept ModuleNotFoundError: print('refused')"
    )
    refused = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.stdout.strip() == "refused", refused.stderr[-2000:]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--model",
            "small_segnet",
            "--rank-size",
            "32x64",
            "--rank-images",
            "1",
            "--train-size",
            "32x64",
            "--label-size",
            "48x96",
            "--batch-size",
            "1",
            "--train-steps",
            "1",
            "--warmup-steps",
            "0",
            "--eval-images",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu-check.json").read_text())
    assert set(figures) == {"environment", "ranking", "train", "evaluate"}
    assert set(figures["ranking"]["selectors"]) == set(RULES) and figures["ranking"]["forward_ms"] > 0
    assert figures["train"]["losses_finite"] and figures["evaluate"]["all_pixels_counted"]
    assert figures["train"]["losses_sane"] and (figures["train"]["recipe"], figures["train"]["optimizer"]) == (
        "gta5_to_cityscapes.yaml",
        "sgd",
    )  # the papers' recipe, not the CPU defaults
    # the three step kinds a plan prices (orchestrator.sweep.plan.KINDS)
    assert min(figures["train"][k] for k in ("seconds_per_step_without_s", "seconds_per_source_step")) > 0
    assert "done: 3 part(s) passed" in (tmp_path / "gpu-check.txt").read_text()


def test_the_selector_profile_breaks_each_selector_down_per_map_kind(tmp_path):
    from benchmarks import profile_selectors

    args = profile_selectors.parse_args(
        [
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--size",
            "32x64",
            "--maps-from",
            "noise",
            "--repeats",
            "1",
            "--rows",
            "5",
        ]
    )
    figures = profile_selectors.profile_selectors(args, progress=lambda line: None)
    assert json.loads((tmp_path / "profile.json").read_text()) == figures
    for kind in profile_selectors.MAP_KINDS:
        assert set(figures["selectors"][kind]) == set(RULES)
        for name, entry in figures["selectors"][kind].items():
            assert entry["wall_ms"] > 0 and entry["select_host_ms"] > 0 and entry["query"] > 0, (kind, name)
            assert entry["greedy_rounds"] == 0  # the CPU takes the sequential pass
            assert (tmp_path / f"profile-{kind}-{name}.txt").read_text().startswith(f"{kind} {name}: ")
    with pytest.raises(SystemExit):
        profile_selectors.parse_args(["--out", str(tmp_path), "--selectors", "labor_pp"])


def test_the_window_maximum_benchmark_compares_both_poolings_on_the_cpu():
    def window_max(*args):  # a process of its own: the benchmark refuses Ray, MLflow and hypothesis imports
        command = [sys.executable, "-m", "benchmarks.window_max", "--device", "cpu", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    done = window_max("--size", "32x64", "--calls", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all("one pooling" in line and "one per axis" in line for line in lines)
    refused = window_max("--calls", "0")
    assert refused.returncode == 2 and "--calls must be >= 1" in refused.stderr
