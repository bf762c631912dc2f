"""Tune schedulers of a sweep that need more than Tune's own (imported only when a sweep uses them)."""

from __future__ import annotations

import json

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class RecordingASHA(ASHAScheduler):
    """ASHA that also writes down each trial it stops before its last round (a JSON line per stop in
    ``early_stops``): such a trial ends without error and short of its rounds, and the sweep's summary
    must tell that result from a failure. Module level, so Tune can pickle it into its state."""

    def __init__(self, *args, early_stops: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.early_stops = early_stops

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and self.early_stops and result.get("round", 0) < self._max_t:
            with open(self.early_stops, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"trial_id": trial.trial_id, "round": int(result["round"])}) + "\n")
        return action
