"""A real MLflow server killed mid-sweep, twice, and the driver killed in between.

1. The server is killed (SIGKILL) once the first trial has logged; while it is away, the driver is
   killed (SIGKILL) when the trial's round-2 labels are written (an observed event, not a sleep).
2. The server comes back; ``--resume`` sends what the killed driver's outbox holds on disk, continues
   the interrupted trial on the labels it had bought, and runs the second trial. The server is
   killed again once that trial has logged, and stays away until the sweep ends: training goes on,
   the sweep exits 0, and what it could not send is kept in order.
3. The server comes back; ``python -m orchestrator.tracking replay`` sends the rest.

In the end every metric of every round is in MLflow exactly once, no label was bought again, label
stores and checkpoints are intact, no process of either driver is left, and every trial's labels and
metrics equal those of the same sweep run without faults, round by round.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.chaos import SweepRun, sweep_args
from conftest import (
    FAULT_FREE_ROUNDS,
    ROOT,
    assert_same_as_fault_free,
    fault_plan,
    free_port,
    processes_left,
    run_cli,
    seed_source_models,
    start_server,
    stop,
    tagged_env,
)
from orchestrator.tracking.mlflow_runs import read_outbox

pytestmark = pytest.mark.integration

ROUNDS = FAULT_FREE_ROUNDS
POOL_IMAGES = 8  # the smoke pool


def trial_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("smoke")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`activeda.kind` = 'trial'")


def steps(client: MlflowClient, run_id: str, key: str = "target/miou") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def logged_runs(client: MlflowClient) -> dict[str, list[int]]:
    """trial id -> the rounds of target/miou in MLflow (empty while the driver creates the experiment)."""
    try:
        return {r.data.tags["activeda.trial_id"]: steps(client, r.info.run_id) for r in trial_runs(client)}
    except Exception:
        return {}


def start_driver(tmp_path, args, uri, env, log, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *args, "--tracking-uri", uri, *extra],
        cwd=tmp_path,
        env=env,
        stdout=open(log.with_suffix(".out"), "wb"),
        stderr=open(log.with_suffix(".err"), "wb"),
        start_new_session=True,
    )


def wait_for(condition, driver, what: str, timeout: float = 400):
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen while the sweep ran (exit {driver.poll()})")


def test_driver_killed_in_an_outage_resumes_and_what_an_outage_at_the_end_keeps_is_replayed(
    tmp_path, monkeypatch, fault_free_sweep, smoke_source_models, data_cache
):
    # The fault-free sweep (its 2 trials x 2 rounds, from the session's source model), one trial at a time.
    plan = fault_plan(tmp_path, data_cache)
    seed_source_models(smoke_source_models, tmp_path / "runs")
    args = [*sweep_args(plan, "smoke"), "--max-concurrent", "1"]
    # The test's own client must not sit in MLflow's default minutes of retries while polling.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    store, artifacts, port = tmp_path / "mlflow.db", tmp_path / "mlartifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    sweep_dir = tmp_path / "runs" / "smoke"
    trials, unsent = sweep_dir / "trials", sweep_dir / "mlflow-unsent.jsonl"
    server_log = tmp_path / "server.log"
    base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base_env.pop("MLFLOW_TRACKING_URI", None)
    client = MlflowClient(uri)

    # 1. Outage, and the driver killed during it.
    env, first_run = tagged_env(base_env)
    server = start_server(store, artifacts, port, server_log)
    driver = start_driver(tmp_path, args, uri, env, tmp_path / "first")
    try:
        wait_for(lambda: any(logged_runs(client).values()), driver, "a trial logging its round 0")
        stop(server)
        wait_for(lambda: list(trials.glob("*/labels/round-0002.parquet")), driver, "round 2's labels being bought")
        driver.send_signal(signal.SIGKILL)  # the driver alone, as when it is OOM-killed
        driver.wait()
    finally:
        stop(server)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    bought = {p: p.read_bytes() for p in trials.glob("*/labels/round-*.parquet")}
    assert sorted(p.name for p in bought) == ["round-0001.parquet", "round-0002.parquet"]  # the first trial's
    first_trial = next(iter(bought)).parent.parent.name
    waiting = read_outbox(unsent)  # on disk, not only in the killed driver's memory
    assert any(r["action"] == "metrics" and r["trial_id"] == first_trial and r["data"][1] == 1 for r in waiting)

    # 2. Back; resume; a second outage that lasts until the sweep has ended.
    env, second_run = tagged_env(base_env)
    server = start_server(store, artifacts, port, server_log)
    driver = start_driver(tmp_path, args, uri, env, tmp_path / "second", "--resume")
    try:
        wait_for(
            lambda: len([s for s in logged_runs(client).values() if s]) == 2,
            driver,
            "the second trial logging its round 0",
        )
        assert logged_runs(client)[first_trial][:2] == [0, 1]  # the killed driver's outbox was sent first
        stop(server)
        driver.wait(timeout=400)
    finally:
        stop(server)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    stdout, stderr = (tmp_path / "second.out").read_text(), (tmp_path / "second.err").read_text()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "resuming the sweep" in stdout and "source model: reusing" in stdout
    assert "round 2: labels already bought, not ranking again" in stdout
    assert "2 trial(s), 0 failed" in stdout
    assert processes_left(first_run) == [] and processes_left(second_run) == []
    # The outage is said once when it starts and once at the end, with where the unsent operations are.
    assert stderr.count(f"MLflow at {uri} is unreachable") == 1, stderr[-3000:]
    assert (
        f"operations written to {unsent}; to send them later: python -m orchestrator.tracking replay {unsent} "
        f"--tracking-uri {uri}" in stderr
    )
    assert "could not finish the sweep's MLflow run" in stderr

    # No label bought again, label stores and checkpoints intact and complete.
    from trainers.checkpoint import load_checkpoint

    assert all(path.read_bytes() == data for path, data in bought.items())
    trial_dirs = sorted(trials.iterdir())
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
        assert load_checkpoint(progress["model_checkpoint"])["model"]["name"] == "small_segnet"

    # What could not be sent is in the unsent file, in order, naming its sweep and trial folder.
    records = read_outbox(unsent)
    assert records and records[-1]["action"] == "sweep-end" and records[-1]["status"] == "FINISHED"
    second_trial = next(d.name for d in trial_dirs if d.name != first_trial)
    assert {r["trial_id"] for r in records if r["action"] == "end"} == {second_trial}  # the first ended before
    unsent_steps: dict[str, list[int]] = {}
    for record in records:
        if record["action"] == "metrics":
            unsent_steps.setdefault(record["trial_id"], []).append(record["data"][1])
            assert record["trial_dir"] == str(trials / record["trial_id"])
    assert all(s == sorted(s) for s in unsent_steps.values())  # in order

    # 3. Back on the same store: what was sent is there, the rest is not, until it is replayed.
    server = start_server(store, artifacts, port, server_log)
    try:
        for trial_id, run in {r.data.tags["activeda.trial_id"]: r for r in trial_runs(client)}.items():
            logged = steps(client, run.info.run_id)
            assert not set(logged) & set(unsent_steps.get(trial_id, []))  # nothing both sent and kept
            assert sorted(logged + unsent_steps.get(trial_id, [])) == list(range(ROUNDS + 1)), trial_id
        replayed = run_cli(
            "orchestrator.tracking", "replay", str(unsent), "--tracking-uri", uri, cwd=tmp_path, timeout=120
        )
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert f"sent {len(records)} MLflow operations to {uri}" in replayed.stdout
        assert not unsent.exists()

        runs = trial_runs(client)
        assert sorted(r.data.tags["activeda.trial_id"] for r in runs) == [d.name for d in trial_dirs]
        for run in runs:
            assert run.info.status == "FINISHED"
            # Every metric of every round exactly once: none logged twice, and those of every round
            # (others come with some rounds only: the selector network's losses not in the last) none missing.
            for key in run.data.metrics:
                logged = steps(client, run.info.run_id, key)
                assert len(logged) == len(set(logged)) and set(logged) <= set(range(ROUNDS + 1)), (key, logged)
            for key in (
                "target/miou",
                "target/iou/road",
                "budget/labeled_pixels",
                "budget/clicks",
                "train/loss/source_ce",
                "time/train_s",
            ):
                assert steps(client, run.info.run_id, key) == list(range(ROUNDS + 1)), key
            files = [f.path for f in client.list_artifacts(run.info.run_id, "labels")]
            assert files == [f"labels/round-{r:04d}.parquet" for r in range(1, ROUNDS + 1)]
        parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
        assert parent.info.status == "FINISHED"
        assert "report/summary.csv" in [f.path for f in client.list_artifacts(parent.info.run_id, "report")]
    finally:
        stop(server)
    # Both trials bought and measured what the sweep without faults did: every round's labels pixel
    # for pixel, every round's metrics (mIoU, per-class IoU, budget, losses) once, bit for bit.
    assert_same_as_fault_free(plan, fault_free_sweep, SweepRun(sweep_dir, store), stdout[-3000:])
