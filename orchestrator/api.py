"""The Python API: run a trial or a sweep from a config, and load a sweep's results as DataFrames.

For notebooks and scripts; the same code path as the command line (``orchestrator.sweep``,
``orchestrator.run``), with the same checks before anything starts::

    from orchestrator import api

    cfg = api.config("configs/default.yaml", overrides={"adapt.steps": 100, "selection.rounds": 2})
    api.run_sweep(cfg)                      # Ray Tune, MLflow, the report: as `python -m orchestrator.sweep`
    results = api.load_sweep("runs/activeda")
    results.trials                          # one row per trial: final mIoU, budget, gap closed, sampled keys
    results.rounds                          # one row per (trial, round): budget spent, mIoU, iou/<class>
    results.class_iou                       # per-class IoU of every trial at its final round

    rounds = api.run_trial(api.config(smoke=True))   # one trial without Tune: its rounds as a DataFrame

Bad input raises ``ConfigError`` (or ``TrackingError``, ``DatasetError``) with the same one-line
message the command line prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from experiment_config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    with_absolute_paths,
)

__all__ = ["ConfigError", "SweepResults", "config", "load_sweep", "run_sweep", "run_trial"]


def config(
    *paths: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None, smoke: bool = False
) -> ExperimentConfig:
    """A validated config: YAML files merged in order (later ones win), then ``--smoke``'s settings,
    then ``overrides`` (``{"adapt.steps": 100}`` or ``["adapt.steps=100"]``); every path key made
    absolute against the working directory, as the command line does."""
    return with_absolute_paths(load_config(list(paths) or None, overrides, smoke=smoke))


def _checked_tracking(cfg: ExperimentConfig, tracking_uri: str | None) -> str:
    from orchestrator.cluster.storage import check_storage
    from orchestrator.tracking.mlflow_runs import (
        check_tracking_uri,
        resolve_tracking_uri,
    )
    from trainers.data import check_domains

    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri)
    check_tracking_uri(uri)
    check_storage(cfg)
    check_domains(cfg.data)
    return uri


def run_sweep(
    cfg: ExperimentConfig,
    tracking_uri: str | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    resume: bool = False,
    quiet: bool = True,
    dashboard: bool | None = False,
) -> SweepResults:
    """Run the sweep ``cfg`` describes (as ``python -m orchestrator.sweep``) and load its results.

    ``tracking_uri``: as ``--tracking-uri`` (default: ``tracking.uri``, ``$MLFLOW_TRACKING_URI``,
    ``sqlite:///mlflow.db``). Raises ``RuntimeError`` naming the sweep folder when trials failed.
    """
    from orchestrator.sweep.driver import run_sweep as sweep

    uri = _checked_tracking(cfg, tracking_uri)
    code = sweep(cfg, uri, address=address, num_cpus=num_cpus, quiet=quiet, resume=resume, dashboard=dashboard)
    sweep_dir = Path(cfg.output_dir) / cfg.sweep.name
    if code != 0:
        raise RuntimeError(f"sweep '{cfg.sweep.name}' ended with failed trials; see {sweep_dir}")
    return load_sweep(sweep_dir)


def run_trial(
    cfg: ExperimentConfig,
    tracking_uri: str | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = True,
    dashboard: bool | None = False,
) -> pd.DataFrame:
    """Run one trial without Tune (as ``python -m orchestrator.run``): one row per round (round 0:
    the source-only model) with every metric it reported (``target/miou``, ``budget/clicks``, ...)."""
    from .run import run_trial as trial

    uri = _checked_tracking(cfg, tracking_uri)
    _, rounds = trial(cfg, uri, address=address, num_cpus=num_cpus, quiet=quiet, dashboard=dashboard)
    return pd.DataFrame(rounds)


@dataclass
class SweepResults:
    """A sweep's results. ``rounds``: one row per (trial, round) with ``trial_id, rule, setting,
    budget, round, labeled_pixels, labeled_fraction, clicks, miou`` and ``iou/<class>``; ``trials``:
    one row per trial at its final round (``report.summary_table``: with ``gain`` and ``gap_closed``)
    and its sampled keys; ``class_iou``: per-class IoU of every trial at its final round."""

    config: ExperimentConfig
    rounds: pd.DataFrame
    trials: pd.DataFrame
    class_iou: pd.DataFrame
    source_only: float | None
    oracle: float | None


def load_sweep(sweep_dir: str | Path) -> SweepResults:
    """Read a sweep folder (``<output_dir>/<sweep.name>``), finished or not, from disk: no Ray, no MLflow.

    The rounds come from Tune's per-trial result files (``tune/*/result.json``), so a sweep that is
    still running or was interrupted shows the rounds it has finished.
    """
    from orchestrator.sweep.state import SWEEP_STATE
    from orchestrator.sweep.summary import trial_round_rows
    from orchestrator.tracking.report import class_iou_table, summary_table

    sweep_dir = Path(sweep_dir)
    state_file = sweep_dir / SWEEP_STATE
    if not state_file.is_file():
        raise ConfigError("", f"'{sweep_dir}' is not a sweep folder (no {SWEEP_STATE})")
    cfg = from_dict(json.loads(state_file.read_text())["config"])
    frames, sampled = [], {}
    for result_file in sorted((sweep_dir / "tune").glob("*/result.json")):
        records = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not records:
            continue
        trial_id = str(records[-1].get("trial_id", result_file.parent.name))
        sampled[trial_id] = records[-1].get("config") or {}
        frame = trial_round_rows(trial_id, sampled[trial_id], pd.DataFrame(records), cfg)
        if frame is not None:
            frames.append(frame)
    rounds = (
        pd.concat(frames, ignore_index=True)
        .drop_duplicates(["trial_id", "round"], keep="last")
        .sort_values(["trial_id", "round"], kind="stable")
        .reset_index(drop=True)
        if frames
        else pd.DataFrame()
    )
    source_only = _source_only(rounds)
    oracle = _oracle(cfg)
    if rounds.empty:
        return SweepResults(cfg, rounds, pd.DataFrame(), pd.DataFrame(), source_only, oracle)
    trials = summary_table(rounds, source_only=source_only, oracle=oracle)
    keys = pd.DataFrame([{"trial_id": trial_id, **_flat_sample(values)} for trial_id, values in sampled.items()])
    trials = trials.merge(keys, on="trial_id", how="left")
    return SweepResults(cfg, rounds, trials, class_iou_table(rounds), source_only, oracle)


def _flat_sample(sampled: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in sampled.items():
        out.update(value if key == "cases" and isinstance(value, Mapping) else {key: value})
    return out


def _source_only(rounds: pd.DataFrame) -> float | None:
    if rounds.empty or not (rounds["round"] == 0).any():
        return None
    return float(rounds.loc[rounds["round"] == 0, "miou"].iloc[0])


def _oracle(cfg: ExperimentConfig) -> float | None:
    """The cached oracle reference of the sweep's settings, when it was computed (local storage)."""
    from orchestrator.round.start_models import ORACLE_CACHE_SECTIONS

    metrics = Path(cfg.output_dir) / "oracle-references" / cfg.hash(*ORACLE_CACHE_SECTIONS) / "metrics.json"
    if not cfg.sweep.oracle_reference or not metrics.is_file():
        return None
    return float(json.loads(metrics.read_text())["target/miou"])
