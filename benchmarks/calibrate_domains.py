"""Calibration of the bundled synthetic domains: does selection have room to matter?

Trains with the project's own training path (Ray Train by default, or the same engine in-process
with ``--in-process``) and prints, on the target validation split:

- source-only mIoU (source training only);
- oracle mIoU (adaptation with every target pool pixel labeled);
- mIoU after adaptation with random points, and with LabOR PPL points, at the default PPL budget.

Goals (issue 3): source-only <= 60% of the oracle, and random points closing <= 75% of the gap
between source-only and the oracle, so that a good selector has room to win.

    python -m benchmarks.calibrate_domains [--in-process] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_config
from experiment_config import ExperimentConfig, with_overrides
from orchestrator.labels.oracle import Oracle
from orchestrator.round.ranking import Ranker
from trainers.checkpoint import save_checkpoint
from trainers.data import build_domains, domain_roots
from trainers.engine import run_job
from trainers.job import TrainJob
from trainers.labels import NO_LABELS, InMemoryLabels


def full_labels(pool) -> InMemoryLabels:
    """Every pixel of every pool image, as the labels the trainer reads."""
    out = {}
    for i in range(len(pool)):
        truth = pool.label(i).numpy()
        ys, xs = np.nonzero(truth != 255)
        out[i] = (ys.astype(np.int32), xs.astype(np.int32), truth[ys, xs].astype(np.uint8))
    return InMemoryLabels(out)


def selected_labels(checkpoint: str, cfg: ExperimentConfig, selector: str, pool) -> InMemoryLabels:
    """Labels revealed by the oracle for one round of ``selector`` at the configured budget."""
    cfg = with_overrides(cfg, {"selection.rule": selector})
    ranker = Ranker(checkpoint, cfg)
    oracle = Oracle(pool)
    out = {}
    for start in range(0, len(pool), 8):
        for image_id, query in ranker.rank(
            list(range(start, min(start + 8, len(pool)))), NO_LABELS, cfg.selection.points_per_image
        ):
            revealed = oracle.reveal(image_id, query.ys, query.xs)
            out[image_id] = (revealed.ys, revealed.xs, revealed.labels)
    return InMemoryLabels(out)


def trainer(in_process: bool, cfg, workdir: Path):
    """``train(job, name) -> (metrics, checkpoint dir)``: Ray Train, or the same engine in this process."""
    if in_process:
        import torch

        torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))

        def train(job, name):
            result = run_job(job)
            if result.state is None:
                return result.metrics, None
            save_checkpoint(workdir / name, result.state)
            return result.metrics, str(workdir / name)

        return train

    from orchestrator.cluster.ray_session import start_ray
    from trainers.train_loop import run_training

    start_ray(quiet=True, dashboard=False)  # the dashboard would take CPU from what is measured

    def train(job, name):
        result = run_training(job, storage_path=workdir / "ray", name=name)
        return result.metrics, result.checkpoint_dir

    return train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.calibrate_domains",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--in-process", action="store_true", help="run the engine here instead of on Ray Train")
    args = parser.parse_args(argv)
    cfg = benchmark_config(args.overrides, args.config)
    if cfg is None:
        return 2
    domain_roots(cfg.data, progress=print)
    pool = build_domains(cfg.data).target_pool

    train = trainer(args.in_process, cfg, Path(tempfile.mkdtemp(prefix="activeda-calibrate-")))

    started = time.perf_counter()
    figures = {}
    metrics, source_ckpt = train(TrainJob(mode="source", config=cfg), "source")
    figures["source-only"] = metrics["target/miou"]
    print(f"source-only: {figures['source-only']:.4f}", flush=True)
    runs = {
        "oracle (all pool pixels)": full_labels(pool),
        f"random, {cfg.selection.points_per_image} points/image": selected_labels(source_ckpt, cfg, "random", pool),
        f"labor_ppl, {cfg.selection.points_per_image} points/image": selected_labels(
            source_ckpt, cfg, "labor_ppl", pool
        ),
    }
    for name, labels in runs.items():
        job = TrainJob(mode="adapt", config=cfg, init_checkpoint=source_ckpt, labels=labels, round=1)
        metrics, _ = train(job, name.split(" ")[0].strip(","))
        figures[name] = metrics["target/miou"]
        print(f"{name}: {figures[name]:.4f}", flush=True)

    source, oracle = figures["source-only"], figures["oracle (all pool pixels)"]
    gap = oracle - source
    print(f"\n{'setting':<34} {'mIoU':>7} {'gap closed':>10}")
    for name, value in figures.items():
        closed = (value - source) / gap if gap > 0 else float("nan")
        print(f"{name:<34} {value:>7.4f} {closed:>10.2f}")
    random_name = next(n for n in figures if n.startswith("random"))
    ratio = source / oracle if oracle > 0 else float("nan")
    random_closed = (figures[random_name] - source) / gap if gap > 0 else float("nan")
    print(f"\nsource-only / oracle = {ratio:.2f} (goal <= 0.60: {'ok' if ratio <= 0.60 else 'MISSED'})")
    print(f"random closes {random_closed:.2f} of the gap (goal <= 0.75: {'ok' if random_closed <= 0.75 else 'MISSED'})")
    print(f"({time.perf_counter() - started:.0f} s, {'in-process' if args.in_process else 'Ray Train'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
