"""Selection speed: ranking throughput with 1 and 2 Ray actors, and selection vs a bare forward pass.

Issue 5's goals: 2 actors rank at least 1.8x as fast as 1 on 2 cores, and ranking (forward pass +
selector) costs at most 1.25x a bare forward pass of the same network over the same images.
Measured side by side in one run on the default config's images, with a model after a short
source training (``--source-steps``, in-process): LabOR's selectors work on the pixels where the two
heads disagree, and how many there are depends on training. ``--source-steps 0`` measures freshly
initialised heads, which disagree almost everywhere: the selectors' worst case.

Actor throughput counts from the moment every actor has started to the last query (all actors
working at once); actor start-up (process, imports, checkpoint and pool loading: seconds, whatever
the pool size) and the wall time of the whole pass are printed beside it.

    python -m benchmarks.selection_speed [--images N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Goal, add_speed_arguments, benchmark_config, check_speed_arguments, machine_line
from experiment_config import ExperimentConfig, with_overrides
from orchestrator.round.ranking import Ranker, rank_pool, shard_ids
from pixel_selectors import inconsistency_mask
from trainers.checkpoint import save_checkpoint
from trainers.data import build_domains, domain_roots
from trainers.engine import build_adaptation_models, model_identity
from trainers.labels import NO_LABELS


def fresh_checkpoint(config: ExperimentConfig, num_classes: int, folder: Path, source_steps: int = 0) -> str:
    """A checkpoint as the actors load one: freshly initialised segmenter and selector, or after
    ``source_steps`` steps of source training in this process."""
    if source_steps:
        from trainers.engine import run_job
        from trainers.job import TrainJob

        trained = run_job(TrainJob(mode="source", config=with_overrides(config, {"source.steps": source_steps})))
        save_checkpoint(folder, trained.state)
        return str(folder)
    models = build_adaptation_models(config, num_classes)
    save_checkpoint(
        folder,
        {
            "model": model_identity(config, num_classes),
            "modules": {"segmenter": models.segmenter.state_dict(), "selector": models.selector.state_dict()},
        },
    )
    return str(folder)


def inconsistent_share(ranker: Ranker, shards: list[list[int]]) -> float:
    """Share of pool pixels where the two selector heads disagree (LabOR's inconsistency mask)."""
    disagree = total = 0
    with torch.no_grad():
        for shard in shards:
            first, second = ranker.network(torch.stack([ranker.pool[i][0] for i in shard]))[:2]
            for n in range(len(shard)):
                disagree += int(inconsistency_mask(first[n], second[n]).sum())
            total += first[:, 0].numel()
    return disagree / total


def pool_config(cfg: ExperimentConfig, images: int) -> ExperimentConfig:
    """The config with a target pool of ``images`` generated images (cached on disk after the first use)."""
    config = with_overrides(cfg, {"data.synthetic.target_train_images": images})
    domain_roots(config.data)
    return config


def measure_selection(cfg: ExperimentConfig, images: int, source_steps: int = 100) -> dict[str, float]:
    """Forward vs selection in-process (1 thread), then ranking with 1 and 2 actors, side by side."""
    with tempfile.TemporaryDirectory(prefix="activeda-speed-") as scratch:
        return _measure_selection(cfg, images, source_steps, Path(scratch))


def _measure_selection(cfg: ExperimentConfig, images: int, source_steps: int, scratch: Path) -> dict[str, float]:
    config = pool_config(cfg, images)
    domains = build_domains(config.data)
    torch.set_num_threads(1)
    checkpoint = fresh_checkpoint(config, len(domains.classes), scratch / "ckpt", source_steps)
    pool_size = len(domains.target_pool)
    shards = shard_ids(list(range(pool_size)), cfg.ranking.images_per_shard)
    points = cfg.selection.points_per_image

    ranker = Ranker(checkpoint, config, threads=1)
    for shard in shards:  # warm the image cache and the kernels, for both measurements alike
        ranker.rank(shard, NO_LABELS, points)
    started = time.perf_counter()
    with torch.no_grad():
        for shard in shards:
            images_batch = torch.stack([ranker.pool[i][0] for i in shard])
            [logits.softmax(dim=1) for logits in ranker.network(images_batch)]
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    for shard in shards:
        ranker.rank(shard, NO_LABELS, points)
    select_s = time.perf_counter() - started

    from orchestrator.cluster.ray_connection import start_ray

    start_ray(quiet=True, dashboard=False)  # the dashboard would take CPU from what is measured
    figures = {
        "images": pool_size,
        "source_steps": source_steps,
        "inconsistent_share": inconsistent_share(ranker, shards),
        "forward_images_per_s": pool_size / forward_s,
        "select_images_per_s": pool_size / select_s,
        "select_over_forward": select_s / forward_s,
    }
    for actors in (1, 2):
        run_cfg = with_overrides(
            cfg,
            {"data.synthetic.target_train_images": images, "ranking.num_actors": actors, "ranking.cpus_per_actor": 1.0},
        )
        stats = rank_pool(checkpoint, run_cfg, pool_size, NO_LABELS, lambda *_: None)
        figures[f"actors{actors}_images_per_s"] = stats.steady_images_per_s
        figures[f"actors{actors}_steady_images"] = stats.steady_images
        figures[f"actors{actors}_startup_s"] = stats.startup_s
        figures[f"actors{actors}_wall_s"] = stats.startup_s + stats.ranking_s
    figures["speedup_2_vs_1"] = figures["actors2_images_per_s"] / figures["actors1_images_per_s"]
    return figures


def print_selection(cfg: ExperimentConfig, figures: dict[str, float]) -> None:
    n = int(figures["images"])
    print(
        f"| model | after {figures['source_steps']:.0f} source steps; heads disagree on "
        f"{100 * figures['inconsistent_share']:.0f}% of pool pixels |"
    )
    print(f"| bare forward pass of S + softmax (1 thread) | {figures['forward_images_per_s']:.1f} images/s |")
    print(
        f"| ranking in-process (forward + {cfg.selection.rule}, 1 thread) | "
        f"{figures['select_images_per_s']:.1f} images/s |"
    )
    for actors in (1, 2):
        print(
            f"| ranking with {actors} actor(s), all started | {figures[f'actors{actors}_images_per_s']:.1f} "
            f"images/s over the last {figures[f'actors{actors}_steady_images']:.0f} images (all {n} in "
            f"{figures[f'actors{actors}_wall_s']:.1f} s, {figures[f'actors{actors}_startup_s']:.1f} s of it start-up) |"
        )


def selection_goals(figures: dict[str, float]) -> list[Goal]:
    ratio, speedup = figures["select_over_forward"], figures["speedup_2_vs_1"]
    speedup_text = f"{speedup:.2f}x" if not math.isnan(speedup) else "not measurable (too few images per actor)"
    return [
        Goal(f"selection / bare forward = {ratio:.2f}", "<= 1.25", ratio, ratio <= 1.25),
        Goal(f"2 actors / 1 actor = {speedup_text}", ">= 1.8", speedup, speedup >= 1.8),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selection_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    cfg = benchmark_config(args.overrides)
    if cfg is None or not check_speed_arguments(args):
        return 2
    figures = measure_selection(cfg, args.images, args.source_steps)
    print(
        f"machine: {machine_line()}; {int(figures['images'])} images of {cfg.data.height}x{cfg.data.width}, "
        f"selector {cfg.selection.rule}, model {cfg.model.name}"
    )
    print("| measurement | figure |\n|---|---|")
    print_selection(cfg, figures)
    for goal in selection_goals(figures):
        print(f"{goal.text} (goal {goal.goal}: {goal.verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
