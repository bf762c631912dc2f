"""The sweep driver killed with SIGKILL while the MLflow server is away, then resumed once it is back:
nothing is redone or bought again, and every metric of every round arrives in MLflow exactly once."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port, processes_left, run_cli, start_server, stop, tagged_env
from orchestrator.tracking import read_outbox

pytestmark = pytest.mark.integration

ARGS = ["--smoke", "--set", "selection.rounds=2", "--max-concurrent", "1"]
POOL_IMAGES = 8  # the smoke pool


def trial_runs(client):
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`activeda.kind` = 'trial'")


def test_a_driver_killed_during_an_mlflow_outage_resumes_and_every_metric_arrives_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the test's own polling client
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    store, artifacts, port = tmp_path / "mlflow.db", tmp_path / "mlartifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    trials = tmp_path / "runs" / "smoke" / "trials"
    env, killed_run = tagged_env({**os.environ, "PYTHONPATH": str(ROOT)})
    env.pop("MLFLOW_TRACKING_URI", None)
    server = start_server(store, artifacts, port, tmp_path / "server.log")
    driver = None
    try:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *ARGS, "--tracking-uri", uri],
                                  cwd=tmp_path, env=env, stdout=open(tmp_path / "first.log", "wb"),
                                  stderr=subprocess.STDOUT)
        client = MlflowClient(uri)
        deadline = time.time() + 400
        logged = False
        while time.time() < deadline and driver.poll() is None and not logged:
            time.sleep(0.5)
            try:
                logged = any(client.get_metric_history(r.info.run_id, "target/miou") for r in trial_runs(client))
            except Exception:  # the driver is still creating the experiment
                pass
        assert logged, "no trial logged anything:\n" + (tmp_path / "first.log").read_text()[-3000:]
        stop(server)  # the outage begins: round 1 and later wait in the driver's outbox

        # Kill on an observed event: the first trial's round-2 labels are bought (its round 2 trains).
        while time.time() < deadline and driver.poll() is None and not list(trials.glob("*/labels/round-0002.parquet")):
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before the kill:\n" + (tmp_path / "first.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)  # the driver alone, as when it is OOM-killed
        driver.wait()
        bought = {p: p.read_bytes() for p in trials.glob("*/labels/round-*.parquet")}
        assert len(bought) == 2  # rounds 1 and 2 of the first trial
        waiting = read_outbox(tmp_path / "runs" / "smoke" / "mlflow-unsent.jsonl")
        assert any(r["action"] == "metrics" and r["data"][1] == 1 for r in waiting)  # round 1's, on disk
    finally:
        stop(server)
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()

    server = start_server(store, artifacts, port, tmp_path / "server.log")  # MLflow is back
    try:
        env, tag = tagged_env()
        resumed = run_cli("orchestrator.sweep", *ARGS, "--resume", "--tracking-uri", uri, cwd=tmp_path, timeout=600,
                          env=env)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "resuming the sweep" in resumed.stdout and "source model: reusing" in resumed.stdout
        assert "round 2: labels already bought, not ranking again" in resumed.stdout
        assert "2 trial(s), 0 failed" in resumed.stdout
        assert processes_left(tag) == [] and processes_left(killed_run) == []  # the killed run's too

        # No label bought again: what was bought before the kill is untouched; each trial has each
        # round once, every pool image in it.
        assert all(path.read_bytes() == data for path, data in bought.items())
        stores = sorted(trials.glob("*/labels"))
        assert len(stores) == 2
        for labels in stores:
            assert sorted(p.name for p in labels.glob("round-*.parquet")) == ["round-0001.parquet", "round-0002.parquet"]
            for path in labels.glob("round-*.parquet"):
                assert sorted(pq.read_table(path)["image_id"].to_pylist()) == list(range(POOL_IMAGES))

        # Every metric of every round arrived once: no step missing, none logged twice.
        client = MlflowClient(uri)
        runs = trial_runs(client)
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert {"target/miou", "budget/labeled_pixels", "train/loss/source_ce"} <= set(run.data.metrics)
            for key in run.data.metrics:
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                # budget/shortfall is reported from round 1 on; everything else from round 0 (source only).
                assert steps == ([1, 2] if key == "budget/shortfall" else [0, 1, 2]), (key, steps)
        assert not (tmp_path / "runs" / "smoke" / "mlflow-unsent.jsonl").exists()
    finally:
        stop(server)
