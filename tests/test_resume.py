"""An interrupted sweep (driver killed with SIGKILL) resumes without redoing or re-buying anything."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

ARGS = ["--smoke", "--set", "selection.rounds=2", "--max-concurrent", "1"]


def child_runs(store):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return client, []
    runs = client.search_runs([experiment.experiment_id], "tags.`activeda.kind` = 'trial'")
    return client, runs


def test_killed_sweep_resumes_without_repeating_finished_work(tmp_path):
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *ARGS, "--tracking-uri", f"sqlite:///{store}"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 600
        finished = []
        state = tmp_path / "runs" / "smoke" / "sweep.json"  # written once the store has its tables
        while time.time() < deadline and driver.poll() is None:
            if state.exists():
                try:
                    _, runs = child_runs(store)
                except Exception:  # the driver is still creating the store's tables
                    runs = []
                finished = [r for r in runs if r.info.status == "FINISHED"]
                if finished:
                    break
            time.sleep(2)
        assert finished, "the first trial never finished"
        time.sleep(8)  # the second trial is under way
        assert driver.poll() is None, f"the sweep ended by itself (exit {driver.returncode}) before the kill"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as in a crash
        driver.wait()
    first_done = finished[0]

    resumed = run_cli("orchestrator.sweep", *ARGS, "--resume", "--tracking-uri", f"sqlite:///{store}",
                      cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout
    assert "source model: reusing" in resumed.stdout  # the cached source model, not a new one

    client, runs = child_runs(store)
    assert len(runs) == 2  # no trial was started twice
    assert all(r.info.status == "FINISHED" for r in runs)
    history = client.get_metric_history(first_done.info.run_id, "target/miou")
    assert sorted(m.step for m in history) == [0, 1, 2]  # the finished trial was not run again
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "budget/labeled_pixels")]
        assert sorted(set(steps)) == [0, 1, 2]

    # Each trial bought exactly its budget: two rounds, every pool image once per round, no duplicates.
    for labels in (tmp_path / "runs" / "smoke" / "trials").glob("*/labels"):
        rounds = sorted(p.name for p in labels.glob("round-*.parquet"))
        assert rounds == ["round-0001.parquet", "round-0002.parquet"]
        for path in labels.glob("round-*.parquet"):
            table = pq.read_table(path)
            assert sorted(table["image_id"].to_pylist()) == list(range(8))

