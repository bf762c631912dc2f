"""Tune's TensorBoard files with ``step = round``, like MLflow's metrics.

Tune writes TensorBoard event files for every trial (``runs/<sweep>/tune/<trial>/events.out.tfevents.*``)
with the step set to its report count, which is the round + 1 here (round 0, the source-only model,
is the first report). This callback, given to Tune in place of its default one, writes the same
files with the round as the step: ``tensorboard --logdir runs/<sweep>/tune``.
"""

from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION


class RoundTensorBoard(TBXLoggerCallback):
    """``TBXLoggerCallback`` whose step is the trial's ``round``."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        if "round" in result:
            # Tune takes timesteps_total when set, else training_iteration, as the step.
            result = {**result, TIMESTEPS_TOTAL: None, TRAINING_ITERATION: int(result["round"])}
        super().log_trial_result(iteration, trial, result)
