"""The smoke sweep with storage.uri on a local S3 server (moto): everything a node needs is in the bucket.

The driver is killed once the first trial has bought its labels, the whole local output dir is
deleted (as if the sweep had run on nodes that are gone), and ``--resume`` finishes the sweep from
the bucket alone.
"""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

PREFIX = "sweep-test"


def _objects(fs) -> dict[str, int]:
    """Key (below the prefix) -> size of every object under the test prefix."""
    infos = fs.get_file_info(pafs.FileSelector(f"activeda-test/{PREFIX}", recursive=True, allow_not_found=True))
    return {i.path.split(f"{PREFIX}/", 1)[1]: i.size for i in infos if i.type == pafs.FileType.File}


def _read(fs, key: str) -> bytes:
    with fs.open_input_stream(f"activeda-test/{PREFIX}/{key}") as stream:
        return stream.read()


def test_sweep_on_s3_resumes_without_its_local_output_dir(s3_server, tmp_path):
    fs = pafs.S3FileSystem(endpoint_override=s3_server, region="us-east-1")
    store = tmp_path / "mlflow.db"
    # One trial (the smoke sweep has two) keeps the test near two minutes; the path is the same.
    args = [
        "--smoke",
        "--set",
        "sweep.search_space={selection.points_per_image: {grid: [5]}}",
        "--tracking-uri",
        f"sqlite:///{store}",
        "--set",
        f"storage.uri=s3://activeda-test/{PREFIX}",
        "--set",
        f"storage.endpoint={s3_server}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "first-run.log", "w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    bought = {}
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None and not bought:
            bought = {k: _read(fs, k) for k in _objects(fs) if k.endswith("/labels/round-0001.parquet")}
            time.sleep(1)
        assert bought, "no trial bought labels"
        assert driver.poll() is None, f"the sweep ended by itself (exit {driver.returncode}) before the kill"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as in a crash
        driver.wait()
        log.close()

    first = _objects(fs)
    assert "smoke/sweep.json" in first
    source = [k for k in first if k.startswith("source-models/") and k.endswith("/metrics.json")]
    assert len(source) == 1 and source[0].replace("metrics.json", "checkpoint/state.pt") in first
    assert any(k.startswith("source-models/ray/source-") and k.endswith("/state.pt") for k in first)
    assert not (tmp_path / "runs" / "source-models").exists()  # the cache lives in the bucket only

    shutil.rmtree(tmp_path / "runs")  # every node-local copy is gone
    resumed = run_cli("orchestrator.sweep", *args, "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "source model: reusing s3://activeda-test/sweep-test/source-models/" in resumed.stdout
    assert "labels already bought, not ranking again" in resumed.stdout
    assert "1 trial(s), 0 failed" in resumed.stdout

    objects = _objects(fs)
    for key, data in bought.items():
        assert _read(fs, key) == data  # the labels bought before the kill were used, not bought again
    assert "smoke/tune/tuner.pkl" in objects
    assert any(k.startswith("smoke/tune/experiment_state-") for k in objects)
    trials = sorted({k.split("/")[2] for k in objects if k.startswith("smoke/trials/")})
    assert len(trials) == 1
    pixels = []
    for trial in trials:
        keys = [k for k in objects if k.startswith(f"smoke/trials/{trial}/")]
        assert sorted(k.split("/", 3)[3] for k in keys if "/labels/" in k) == ["labels/round-0001.parquet"]
        assert any(
            k.startswith(f"smoke/trials/{trial}/ray/round-001/checkpoint_") and k.endswith("state.pt") for k in keys
        )  # the Ray Train checkpoint of the round
        assert f"smoke/trials/{trial}/progress.json" in keys
        table = pq.read_table(io.BytesIO(_read(fs, f"smoke/trials/{trial}/labels/round-0001.parquet")))
        assert sorted(table["image_id"].to_pylist()) == list(range(8))  # each pool image once
        pixels.append(sum(table["num_pixels"].to_pylist()))
        tune_labels = [
            k
            for k in objects
            if k.startswith(f"smoke/tune/tune_trial_{trial}") and k.endswith("/labels/round-0001.parquet")
        ]
        assert tune_labels, f"trial {trial}'s Tune checkpoint has no copy of its label store"
    assert pixels == [5 * 8]  # 5 points on each of the 8 pool images

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], "tags.`activeda.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the restored trial kept its MLflow run
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "target/miou")) == [0, 1]
