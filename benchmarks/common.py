"""What every benchmark shares: its config (defaults + --set, paths made absolute) and a machine line."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from orchestrator.config import ConfigError, ExperimentConfig, load_config, with_absolute_paths


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
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()}")
