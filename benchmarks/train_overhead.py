"""Ray Train overhead: adaptation throughput under ``TorchTrainer`` vs the same loop in-process.

Both run ``trainers.engine.run_job`` on the same adaptation job with the same number of threads
(``train.cpus_per_worker``). Throughput is images per second inside the training loop; the wall time
of the whole job (Ray start-up of the worker group included) is printed too, since that is what a
round costs. Goal (issue 4): Ray Train throughput / in-process throughput >= 0.9.

    python -m benchmarks.train_overhead [--steps N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import benchmark_config, machine_line
from experiment_config import ExperimentConfig, with_overrides
from trainers.checkpoint import save_checkpoint
from trainers.data import domain_roots
from trainers.engine import run_job
from trainers.job import TrainJob
from trainers.labels import InMemoryLabels


def measure_training(cfg: ExperimentConfig, steps: int) -> dict[str, float]:
    """Images/s in the loop and job wall time, in-process and on Ray Train (1 worker), side by side."""
    with tempfile.TemporaryDirectory(prefix="activeda-overhead-") as scratch:
        return _measure_training(cfg, steps, Path(scratch))


def _measure_training(cfg: ExperimentConfig, steps: int, workdir: Path) -> dict[str, float]:
    cfg = with_overrides(cfg, {"adapt.steps": steps, "source.steps": 5})
    domain_roots(cfg.data)
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    source = run_job(TrainJob(mode="source", config=cfg))
    save_checkpoint(workdir / "source", source.state)
    job = TrainJob(
        mode="adapt",
        config=cfg,
        init_checkpoint=str(workdir / "source"),
        round=1,
        labels=InMemoryLabels({0: ([1, 2], [3, 4], [0, 1])}),
    )

    started = time.perf_counter()
    plain = run_job(job).metrics
    plain_wall = time.perf_counter() - started
    # The same job as a trial's last round runs it: LabOR's selector network S carried over untrained.
    last_round = run_job(dataclasses.replace(job, train_selector_network=False)).metrics

    from orchestrator.cluster.ray_connection import start_ray
    from trainers.train_loop import run_training

    start_ray(quiet=True, dashboard=False)  # the dashboard would take CPU from what is measured
    ray_result = run_training(job, storage_path=workdir / "ray", name="overhead")
    return {
        "plain_images_per_s": plain["train/images_per_s"],
        "plain_wall_s": plain_wall,
        "ray_images_per_s": ray_result.metrics["train/images_per_s"],
        "ray_wall_s": ray_result.seconds,
        "ratio": ray_result.metrics["train/images_per_s"] / plain["train/images_per_s"],
        "last_round_images_per_s": last_round["train/images_per_s"],
        "last_round_speedup": last_round["train/images_per_s"] / plain["train/images_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=60, help="adaptation steps per measurement (default 60)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = benchmark_config(args.overrides)
    if cfg is None:
        return 2
    if args.steps < 1:
        print("error: --steps must be >= 1", file=sys.stderr)
        return 2
    figures = measure_training(cfg, args.steps)
    threads = cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker))
    print(
        f"machine: {machine_line()}; torch threads {threads}; {args.steps} adaptation steps, batch "
        f"{cfg.adapt.batch_size}+{cfg.adapt.batch_size}, {cfg.data.height}x{cfg.data.width}"
    )
    print("| loop | images/s in the loop | wall time of the job |")
    print("|---|---|---|")
    print(f"| in-process (plain PyTorch) | {figures['plain_images_per_s']:.1f} | {figures['plain_wall_s']:.1f} s |")
    print(f"| Ray Train, 1 worker | {figures['ray_images_per_s']:.1f} | {figures['ray_wall_s']:.1f} s |")
    print(f"| in-process, last round (selector S not trained) | {figures['last_round_images_per_s']:.1f} | - |")
    ratio = figures["ratio"]
    print(f"throughput ratio Ray Train / in-process = {ratio:.2f} (goal >= 0.9: {'ok' if ratio >= 0.9 else 'MISSED'})")
    print(f"a last round (S not trained) is {figures['last_round_speedup']:.2f}x as fast as a round that trains S")
    return 0


if __name__ == "__main__":
    sys.exit(main())
