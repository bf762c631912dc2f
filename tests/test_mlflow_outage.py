"""A real MLflow server killed mid-sweep: training goes on, nothing on disk is damaged, and what the
sweep could not send is kept in order and sent later with ``python -m orchestrator.tracking replay``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port, run_cli, start_server, stop

pytestmark = pytest.mark.integration

# The server is killed as soon as the first trial has logged its round 0 (source-only) metrics, so
# every adaptation round, each trial's end and the sweep's report fall into the outage.
ROUNDS = 1
ARGS = ["--smoke", "--set", f"selection.rounds={ROUNDS}"]
POOL_IMAGES = 8  # the smoke pool


def trial_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`activeda.kind` = 'trial'")


def steps(client: MlflowClient, run_id: str, key: str = "target/miou") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_mlflow_server_killed_mid_sweep(tmp_path, monkeypatch):
    # The test's own client must not sit in MLflow's default minutes of retries while polling.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    store, artifacts, port = tmp_path / "mlflow.db", tmp_path / "mlartifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    sweep_dir = tmp_path / "runs" / "smoke"
    server_log, out, err = tmp_path / "server.log", tmp_path / "sweep.out", tmp_path / "sweep.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)

    server = start_server(store, artifacts, port, server_log)
    driver = None
    try:
        driver = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *ARGS, "--tracking-uri", uri,
             "--output-dir", str(tmp_path / "runs")],
            cwd=tmp_path, env=env, stdout=open(out, "wb"), stderr=open(err, "wb"), start_new_session=True)
        client = MlflowClient(uri)
        logged_before_kill = {}
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and not any(logged_before_kill.values()):
            time.sleep(1)
            try:
                logged_before_kill = {r.info.run_id: steps(client, r.info.run_id) for r in trial_runs(client)}
            except Exception:  # the driver is still creating the experiment
                pass
        assert any(logged_before_kill.values()), \
            f"no trial logged anything before the sweep ended:\n{err.read_text()[-3000:]}"
        stop(server)  # SIGKILL, mid-sweep: no goodbye to the clients
        assert driver.poll() is None, "the sweep ended before the server was killed: nothing was tested"
        driver.wait(timeout=400)
    finally:
        stop(server)
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()

    # Training went on: both trials finished every round, and the sweep succeeded.
    stdout, stderr = out.read_text(), err.read_text()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "2 trial(s), 0 failed" in stdout
    # The outage is said once when it starts and once at the end, with where the unsent operations are.
    unsent = sweep_dir / "mlflow-unsent.jsonl"
    assert stderr.count(f"MLflow at {uri} is unreachable") == 1, stderr[-3000:]
    assert f"operations written to {unsent}; to send them later: python -m orchestrator.tracking replay {unsent} " \
           f"--tracking-uri {uri}" in stderr
    assert "could not finish the sweep's MLflow run" in stderr

    # The label stores and checkpoints are intact and complete.
    from trainers.checkpoint import load_checkpoint

    trial_dirs = sorted((sweep_dir / "trials").iterdir())
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        labels = trial_dir / "labels"
        assert sorted(p.name for p in labels.iterdir()) == [f"round-{r:04d}.parquet" for r in range(1, ROUNDS + 1)]
        points = json.loads((trial_dir / "config.json").read_text())["selection"]["points_per_image"]
        for path in labels.iterdir():
            table = pq.read_table(path)
            assert sorted(table["image_id"].to_pylist()) == list(range(POOL_IMAGES))
            assert set(table["num_pixels"].to_pylist()) == {points}
        progress = json.loads((trial_dir / "progress.json").read_text())["progress"]
        assert progress["round"] == ROUNDS
        state = load_checkpoint(progress["model_checkpoint"])  # weights_only: a damaged file would raise
        assert state["model"]["name"] == "small_segnet"

    # What could not be sent is in the unsent file, in order, naming its sweep and trial folder.
    records = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert records and records[-1]["action"] == "sweep-end" and records[-1]["status"] == "FINISHED"
    assert {r["trial_id"] for r in records if r["action"] == "end"} == {d.name for d in trial_dirs}
    unsent_steps: dict[str, list[int]] = {}
    for record in records:
        if record["action"] == "metrics":
            unsent_steps.setdefault(record["trial_id"], []).append(record["data"][1])
            assert record["trial_dir"] == str(sweep_dir / "trials" / record["trial_id"])
    assert all(s == sorted(s) for s in unsent_steps.values())  # in order
    assert any(ROUNDS in s for s in unsent_steps.values())

    # The server comes back on the same store: everything logged before the kill is there, the rest
    # is not, until it is replayed.
    server = start_server(store, artifacts, port, server_log)
    try:
        client = MlflowClient(uri)
        runs = {r.data.tags["activeda.trial_id"]: r for r in trial_runs(client)}
        for trial_id, run in runs.items():
            logged = steps(client, run.info.run_id)
            assert not set(logged) & set(unsent_steps.get(trial_id, []))  # nothing both sent and kept
            assert sorted(logged + unsent_steps.get(trial_id, [])) == list(range(ROUNDS + 1)), trial_id
            assert run.info.status == "RUNNING"

        replayed = run_cli("orchestrator.tracking", "replay", str(unsent), "--tracking-uri", uri, cwd=tmp_path,
                           timeout=120)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert f"sent {len(records)} MLflow operations to {uri}" in replayed.stdout
        assert not unsent.exists()

        runs = trial_runs(client)
        assert sorted(r.data.tags["activeda.trial_id"] for r in runs) == [d.name for d in trial_dirs]
        for run in runs:
            assert run.info.status == "FINISHED"
            for key in ("target/miou", "budget/labeled_pixels"):
                assert steps(client, run.info.run_id, key) == list(range(ROUNDS + 1)), key
            files = [f.path for f in client.list_artifacts(run.info.run_id, "labels")]
            assert files == [f"labels/round-{r:04d}.parquet" for r in range(1, ROUNDS + 1)]
        parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
        assert parent.info.status == "FINISHED"
        assert "report/summary.csv" in [f.path for f in client.list_artifacts(parent.info.run_id, "report")]
    finally:
        stop(server)
