"""What every benchmark shares: its config (defaults + --set, paths made absolute) and a machine line."""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from experiment_config import ConfigError, ExperimentConfig, load_config, with_absolute_paths


def benchmark_config(overrides: list[str], config_file: str | None = None) -> ExperimentConfig | None:
    """The config of a benchmark run, or None after printing the one-line problem (exit with 2)."""
    try:
        return with_absolute_paths(load_config(config_file, overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """Where the figures were measured: CPU model, cores, GPU (if any), torch version."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the speed benchmarks that rank a pool (``selection_speed`` and ``speed``)."""
    parser.add_argument("--images", type=int, default=512, help="pool images to rank (default 512)")
    parser.add_argument(
        "--source-steps",
        type=int,
        default=100,
        help="source training of the model that ranks (default 100; 0: fresh weights, the worst case)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as for orchestrator.sweep",
    )


def check_speed_arguments(args: argparse.Namespace) -> bool:
    """False after printing the one-line problem (exit with 2)."""
    if args.images < 1 or args.source_steps < 0:
        print("error: --images must be >= 1 and --source-steps >= 0", file=sys.stderr)
        return False
    return True


@dataclass(frozen=True)
class Goal:
    """One measured ratio against its goal; a NaN figure (not measurable here) is neither met nor missed."""

    text: str  # what was measured, with the figure
    goal: str  # e.g. ">= 1.8"
    figure: float
    met: bool

    @property
    def verdict(self) -> str:
        return "n/a" if math.isnan(self.figure) else ("ok" if self.met else "MISSED")
