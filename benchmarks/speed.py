"""Speed figures against issue 9's limits, measured side by side in one run.

1. Ray Train adaptation throughput / the same loop in plain PyTorch (goal >= 0.9);
2. ranking with 2 actors / 1 actor over the same pool (goal >= 1.8x on 2 cores);
3. selection (forward + selector) / a bare forward pass of the same network (goal <= 1.25);
4. driver memory while ranking a pool 10x larger for the same pixel budget (goal: within 10%);
5. the sweep's scheduling overhead: trial wall time minus its select + train (+ evaluate) time,
   as a share of the wall time (goal < 10%).

Absolute images/s are printed too, with the machine, so GPU users can compare.

    python -m benchmarks.speed [--images N] [--steps N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.common import Goal, add_speed_arguments, benchmark_config, check_speed_arguments, machine_line
from benchmarks.selection_speed import (
    fresh_checkpoint,
    measure_selection,
    pool_config,
    print_selection,
    selection_goals,
)
from benchmarks.train_overhead import measure_training
from experiment_config import ExperimentConfig, with_absolute_paths, with_overrides
from pixel_selectors.budget import GlobalBudget
from trainers.data import build_domains
from trainers.labels import NO_LABELS


class BenchmarkError(RuntimeError):
    """A measurement could not be made; the message says why in one line."""


def measure_driver_memory(
    cfg: ExperimentConfig, images: int, factor: int = 10, budget_fraction: float = 0.022
) -> dict[str, float]:
    """Peak Python heap of the driver (tracemalloc) while ranking a pool and merging a global pixel
    budget, for ``images`` and ``factor`` x ``images`` pool images and the *same* budget in pixels
    (LabOR SPL regions: the largest candidates any selector sends). A warm-up pass first, so one-time
    imports and caches count in neither figure."""
    from orchestrator.cluster.ray_connection import start_ray
    from orchestrator.round.ranking import rank_pool

    start_ray(quiet=True, dashboard=False)  # the dashboard would take CPU from what is measured
    cfg = with_overrides(cfg, {"selection.rule": "labor_spl", "selection.budget_fraction": budget_fraction})
    budget_pixels = int(budget_fraction * images * cfg.data.height * cfg.data.width)
    figures: dict[str, float] = {"budget_pixels": budget_pixels}
    with tempfile.TemporaryDirectory(prefix="activeda-memory-") as scratch:
        checkpoint = None
        for label, size in (("warmup", max(8, images // 4)), ("small", images), ("large", factor * images)):
            config = pool_config(cfg, size)
            if checkpoint is None:
                classes = len(build_domains(config.data).classes)
                checkpoint = fresh_checkpoint(config, classes, Path(scratch) / "ckpt")
            merge = GlobalBudget(budget_pixels)
            tracemalloc.start()
            stats = rank_pool(checkpoint, config, size, NO_LABELS, merge.add, budget_pixels=budget_pixels)
            result = merge.result()
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            figures[f"{label}_images"] = stats.images
            figures[f"{label}_peak_bytes"] = peak
            figures[f"{label}_spent_pixels"] = result.spent_pixels
    figures["ratio"] = figures["large_peak_bytes"] / figures["small_peak_bytes"]
    return figures


def measure_sweep_overhead(cfg: ExperimentConfig, steps: int, rounds: int = 2, trials: int = 2) -> dict[str, float]:
    """Run a small sweep through ``orchestrator.sweep.driver.run_sweep`` and split each trial's wall time
    (Tune's ``time_total_s`` at its last report) into what the rounds measured themselves
    (``time/select_s`` + ``time/train_s``; training includes the evaluation) and the rest."""
    from orchestrator.sweep.driver import run_sweep

    with tempfile.TemporaryDirectory(prefix="activeda-sweep-overhead-") as scratch:
        workdir = Path(scratch)
        sweep_cfg = with_absolute_paths(
            with_overrides(
                cfg,
                {
                    "output_dir": str(workdir),
                    "sweep.name": "overhead",
                    "sweep.oracle_reference": False,
                    "source.steps": 20,
                    "adapt.steps": steps,
                    "selection.rounds": rounds,
                    "warmup.steps": 0,  # the driver trains a warm-up before the trials: not the trials' overhead
                    "sweep.search_space": {"selection.points_per_image": {"grid": list(range(5, 5 + 5 * trials, 5))}},
                },
            )
        )
        started = time.perf_counter()
        code = run_sweep(sweep_cfg, f"sqlite:///{workdir / 'mlflow.db'}", quiet=True, dashboard=False)
        sweep_wall = time.perf_counter() - started
        if code != 0:
            raise BenchmarkError(f"the overhead sweep exited with {code}")
        walls, measured = [], []
        for results in sorted((workdir / "overhead" / "tune").glob("*/result.json")):
            reports = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
            walls.append(reports[-1]["time_total_s"])
            measured.append(sum(r.get("time/select_s", 0.0) + r.get("time/train_s", 0.0) for r in reports))
    if not walls:
        raise BenchmarkError("the overhead sweep left no trial results")
    wall, inner = sum(walls), sum(measured)
    return {
        "trials": len(walls),
        "rounds": rounds,
        "trial_wall_s": wall / len(walls),
        "select_train_s": inner / len(walls),
        "overhead_share": (wall - inner) / wall,
        "sweep_wall_s": sweep_wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_speed_arguments(parser)
    parser.add_argument(
        "--memory-images",
        type=int,
        default=96,
        help="smaller pool of the memory figure; the larger is 10x (default 96)",
    )
    parser.add_argument("--steps", type=int, default=60, help="adaptation steps of the training figures (default 60)")
    args = parser.parse_args(argv)
    cfg = benchmark_config(args.overrides)
    if cfg is None or not check_speed_arguments(args):
        return 2
    if args.memory_images < 1 or args.steps < 1:
        print("error: --memory-images and --steps must be >= 1", file=sys.stderr)
        return 2
    if cfg.storage.uri:
        print(
            "error: config key 'storage.uri': the speed benchmark reads its sweep's results from a local folder; "
            "run it without storage.uri",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    try:
        print("[speed] 1/4 training: plain loop, then Ray Train", flush=True)
        training = measure_training(cfg, args.steps)
        print("[speed] 2/4 selection: forward vs selection, then 1 and 2 ranking actors", flush=True)
        selection = measure_selection(cfg, args.images, args.source_steps)
        print(f"[speed] 3/4 driver memory: {args.memory_images} then {10 * args.memory_images} pool images", flush=True)
        memory = measure_driver_memory(cfg, args.memory_images)
        print("[speed] 4/4 a 2-trial, 2-round sweep for its scheduling overhead", flush=True)
        sweep = measure_sweep_overhead(cfg, args.steps)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    print(f"\nmachine: {machine_line()}")
    print(
        f"images {cfg.data.height}x{cfg.data.width}, model {cfg.model.name} (width {cfg.model.width}), batch "
        f"{cfg.adapt.batch_size}+{cfg.adapt.batch_size}, selector {cfg.selection.rule}; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print("| measurement | figure |\n|---|---|")
    print(f"| adaptation, plain PyTorch loop (1 thread) | {training['plain_images_per_s']:.1f} images/s |")
    print(
        f"| adaptation, Ray Train (1 worker, 1 CPU) | {training['ray_images_per_s']:.1f} images/s "
        f"(job wall {training['ray_wall_s']:.1f} s vs {training['plain_wall_s']:.1f} s in-process) |"
    )
    print(
        f"| adaptation, plain loop, a trial's last round (selector S not trained) "
        f"| {training['last_round_images_per_s']:.1f} images/s ({training['last_round_speedup']:.2f}x) |"
    )
    print_selection(cfg, selection)
    print(
        f"| driver peak heap, ranking {memory['small_images']:.0f} images, budget {memory['budget_pixels']:.0f} px "
        f"| {memory['small_peak_bytes'] / 1e6:.2f} MB |"
    )
    print(
        f"| driver peak heap, ranking {memory['large_images']:.0f} images, same budget "
        f"| {memory['large_peak_bytes'] / 1e6:.2f} MB |"
    )
    print(
        f"| sweep: trial wall time, {sweep['rounds']} rounds ({sweep['trials']:.0f} trials) "
        f"| {sweep['trial_wall_s']:.1f} s, of which select + train {sweep['select_train_s']:.1f} s |"
    )
    print()
    goals = [
        Goal(
            f"Ray Train / plain loop = {training['ratio']:.2f}", ">= 0.9", training["ratio"], training["ratio"] >= 0.9
        ),
        *selection_goals(selection),
        Goal(
            f"driver memory at 10x the pool = {memory['ratio']:.2f}x",
            "within 10% of 1.00x",
            memory["ratio"],
            abs(memory["ratio"] - 1) <= 0.10,
        ),
        Goal(
            f"sweep scheduling overhead = {100 * sweep['overhead_share']:.1f}% of trial wall time",
            "< 10%",
            sweep["overhead_share"],
            sweep["overhead_share"] < 0.10,
        ),
    ]
    print("| ratio | goal | |\n|---|---|---|")
    for goal in goals:
        print(f"| {goal.text} | {goal.goal} | {goal.verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
