"""Parts of a sweep's Tune run that need more than Tune's own. Module level, so Tune can pickle them
into its experiment state (a resumed sweep restores them from there)."""

from __future__ import annotations

import json
import pickletools
from pathlib import Path

from ray.tune import Callback, CLIReporter
from ray.tune.schedulers import ASHAScheduler, TrialScheduler


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


# --- Tune's experiment state: kept readable ------------------------------------------------------

EXPERIMENT_STATE, SEARCHER_STATE = "experiment_state-", "basic-variant-state-"
STATE_BACKUP = "tune-state-backup"  # in the sweep folder: the last readable copy of Tune's state


def readable_state(storage, tune_dir) -> dict[str, bytes] | None:
    """The newest experiment state in ``tune_dir`` and its searcher state (file name -> bytes), when
    both are whole; None when there is none or it is damaged (say, cut off on a full disk)."""
    location = storage.location(tune_dir)
    return _readable(storage.listdir(location), lambda name: storage.read_bytes(storage.join(location, name)))


def readable_local_state(folder: str | Path) -> dict[str, bytes] | None:
    """``readable_state`` of a local folder (Tune's driver staging folder, which is never on the sweep's
    storage)."""
    folder = Path(folder)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return _readable(names, lambda name: (folder / name).read_bytes())


def _whole(name: str, data: bytes | None) -> bool:
    """The experiment state is JSON; the searcher state, despite its name, a pickle: its opcodes are
    walked to the final STOP (``pickletools``, which builds no object) to tell a whole one."""
    if not data:
        return False
    try:
        if name.startswith(EXPERIMENT_STATE):
            json.loads(data)
        else:
            ops = list(pickletools.genops(data))
            return bool(ops) and ops[-1][0].name == "STOP"
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _readable(names: list[str], read) -> dict[str, bytes] | None:
    states = sorted(n for n in names if n.startswith(EXPERIMENT_STATE) and n.endswith(".json"))
    if not states:
        return None
    newest = states[-1]
    files = [newest]
    searcher = SEARCHER_STATE + newest[len(EXPERIMENT_STATE):]
    if searcher in names:
        files.append(searcher)
    out = {}
    for name in files:
        try:
            data = read(name)
        except OSError:
            return None
        if not _whole(name, data):
            return None
        out[name] = data
    return out


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
        from .storage import open_storage

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
