"""A small chaos run (``python -m benchmarks.chaos --small``): a sweep of 2 trials x 2 rounds during
which a Ray Train worker, a ranking actor, the MLflow server and the sweep driver are killed at random
(seeded) times, against the same sweep without faults. Slow (about 10 minutes alone), so it runs only
with ``pytest --slow`` (``make test-slow``); the full run is ``python -m benchmarks.chaos``."""

import json

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_sweep_under_repeated_kills_loses_nothing_and_ends_where_a_fault_free_one_does(tmp_path):
    result = run_cli(
        "benchmarks.chaos",
        "--small",
        "--workdir",
        str(tmp_path / "chaos"),
        "--timeout-min",
        "30",
        cwd=tmp_path,
        timeout=3600,
    )
    outcome = json.loads((tmp_path / "chaos" / "result.json").read_text())
    assert sum(outcome["kills"].values()) == 6, outcome["kills"]
    for count in (
        "labels_lost",
        "budget_spent_twice",
        "metrics_missing",
        "metrics_duplicated",
        "trial_runs_duplicated",
        "runs_not_finished",
        "left_running",
    ):
        assert outcome[count] == 0, (count, result.stdout[-3000:])
    assert all(trial["final_equal"] for trial in outcome["trials"].values()), outcome["trials"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
