"""Tune's side of a sweep (module level, so Tune can pickle these into its experiment state, and a
resumed sweep restores them from there): the param space from the YAML search space, the scheduler (FIFO, ASHA, PBT),
the early stops ASHA made, and the columns of Tune's progress table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback, CLIReporter
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from experiment_config import (
    CASES_AXIS,
    ExperimentConfig,
)
from orchestrator.cluster.storage import open_storage
from orchestrator.sweep.state import readable_local_state, readable_state

log = logging.getLogger("activeda")


EARLY_STOPS = "early-stops.jsonl"  # in the sweep folder: the trials ASHA stopped, and at which round


def build_scheduler(cfg: ExperimentConfig, early_stops: Path | None = None):
    """FIFO, ASHA (stops weak trials after ``sweep.grace_rounds``) or PBT (clones strong trials).

    ASHA's decisions to stop a trial before its last round are appended to ``early_stops``: such a
    trial ends without error and short of its rounds, and the summary must tell it from a failure.
    """
    kind = cfg.sweep.scheduler
    if kind == "fifo":
        return None
    if kind == "asha":
        return RecordingASHA(
            time_attr="round",
            max_t=cfg.selection.rounds,
            grace_period=min(cfg.sweep.grace_rounds, cfg.selection.rounds),
            early_stops=str(early_stops) if early_stops is not None else None,
        )
    mutations = {
        key: build_param_space({key: spec})[key]
        for key, spec in cfg.sweep.search_space.items()
        if next(iter(spec)) != "grid"
    }
    # Synchronous: every round, all trials are compared at that same round, so which trial clones which
    # does not depend on which happened to report first (asynchronous PBT could not clone at all when
    # trials finished out of step: a trial is only cloned from after it was compared while in the lead).
    return tune.schedulers.PopulationBasedTraining(
        time_attr="round", perturbation_interval=1, hyperparam_mutations=mutations, synch=True
    )


def read_early_stops(sweep_dir: Path) -> dict[str, int]:
    """trial id -> the round after which ASHA stopped it."""
    path = sweep_dir / EARLY_STOPS
    if not path.is_file():
        return {}
    stops = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            stops[str(record["trial_id"])] = int(record["round"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut off by a crash: that trial shows as incomplete, which it then is
    return stops


def parameter_columns(search_space: dict[str, dict]) -> list[str]:
    """Columns of Tune's progress table: each axis, and for a ``cases`` axis each key that *every*
    case sets (Tune flattens a sampled case to ``cases/<key>``; its best-trial line looks every
    column up in the best trial's config and fails on a missing key), else the cases whole."""
    columns = [key for key in search_space if key != CASES_AXIS]
    for spec in search_space.get(CASES_AXIS, {}).values():
        common = [key for key in spec[0] if all(key in case for case in spec)]
        columns += [f"{CASES_AXIS}/{key}" for key in common] or [CASES_AXIS]
    return columns


def build_param_space(search_space: dict[str, dict]) -> dict[str, Any]:
    """YAML search space -> Tune param space (keys stay the dotted config keys)."""
    kinds = {
        "grid": lambda v: tune.grid_search(list(v)),
        "choice": lambda v: tune.choice(list(v)),
        "uniform": lambda v: tune.uniform(v[0], v[1]),
        "loguniform": lambda v: tune.loguniform(v[0], v[1]),
        "randint": lambda v: tune.randint(int(v[0]), int(v[1])),
    }
    space = {}
    for key, spec in search_space.items():
        ((kind, values),) = spec.items()
        space[key] = kinds[kind](values)
    return space


class RecordingASHA(ASHAScheduler):
    """ASHA that also writes down each trial it stops before its last round (a JSON line per stop in
    ``early_stops``): such a trial ends without error and short of its rounds, and the sweep's summary
    must tell that result from a failure."""

    def __init__(self, *args, early_stops: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.early_stops = early_stops

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and self.early_stops and result.get("round", 0) < self._max_t:
            with open(self.early_stops, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"trial_id": trial.trial_id, "round": int(result["round"])}) + "\n")
        return action


class SweepReporter(CLIReporter):
    """Tune's progress table, minus a crash: right after ``--resume``, a restored trial's last result
    can lack its config, and the table's "current best trial" line then raises KeyError looking up a
    parameter column (seen when a driver was killed and resumed). That table is skipped; the next one
    is printed once the trial has reported again."""

    def report(self, trials, done, *sys_info):
        try:
            super().report(trials, done, *sys_info)
        except KeyError:
            pass


class TuneStateKeeper(Callback):
    """Keeps the last readable copy of Tune's experiment state in ``<sweep>/tune-state-backup``.

    Tune overwrites its state in place; on a full disk it was seen cut off mid-file, and a resumed
    Tune then "restored" nothing and started the trials anew, under new ids: their labels were bought
    again. At every trial result this copies the newest state that parses -- from Tune's driver
    staging folder, which Tune writes first and copies to the sweep folder only now and then -- and a
    failed write keeps the previous copy; ``--resume`` puts it back when Tune's own is damaged."""

    def __init__(self, storage_config: dict, tune_dir: str, backup_dir: str):
        self.storage_config, self.tune_dir, self.backup_dir = storage_config, tune_dir, backup_dir

    def _keep(self, trial) -> None:
        storage = open_storage(self.storage_config)
        staging = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
        try:
            files = (readable_local_state(staging) if staging else None) or readable_state(storage, self.tune_dir)
            for name, data in (files or {}).items():
                storage.write_bytes(storage.join(storage.location(self.backup_dir), name), data)
        except OSError:
            pass  # a full disk: the previous copy stays, which is the point

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._keep(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._keep(trial)
