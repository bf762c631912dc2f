"""Parts of a sweep's Tune run that need more than Tune's own. Module level, so Tune can pickle them
into its experiment state (a resumed sweep restores them from there)."""

from __future__ import annotations

import json

from ray.tune import CLIReporter
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
