"""Runs say where they came from (git commit, user) and what they produced (the final checkpoint), and
every tracking store MLflow accepts is accepted, with one clear line when it cannot be used."""

import json
import socket
import subprocess
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from orchestrator.tracking.mlflow_runs import (
    CHECKPOINT_TAG,
    TrackingError,
    check_tracking_uri,
    display_uri,
    provenance_tags,
)
from orchestrator.tracking.trial_logger import MlflowTrialLogger


def test_provenance_names_the_commit_and_the_user():
    tags = provenance_tags()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and len(head) == 40
    assert tags["activeda.git_dirty"] in ("true", "false")
    assert tags["mlflow.user"]


def test_a_finished_trial_run_carries_provenance_and_its_final_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("s")).info.run_id
    trial_dir = tmp_path / "trials" / "t1"
    trial_dir.mkdir(parents=True)
    (trial_dir / "progress.json").write_text(
        json.dumps(
            {
                "progress": {
                    "round": 2,
                    "model_checkpoint": "/runs/s/trials/t1/ray/round-002/checkpoint_000000",
                    "trial_id": "t1",
                },
                "metrics": {},
            }
        )
    )
    logger = MlflowTrialLogger(
        uri,
        "s",
        parent,
        lambda cfg: ({"p": 1}, {"rule": "x", **provenance_tags()}),
        trial_dir=lambda trial_id: tmp_path / "trials" / trial_id,
    )
    trial = SimpleNamespace(trial_id="t1", config={}, __str__=lambda self: "t1")
    logger.on_trial_start(0, [], trial)
    logger.on_trial_complete(0, [], trial)
    tags = client.get_run(logger._runs["t1"]).data.tags
    assert tags[CHECKPOINT_TAG] == "/runs/s/trials/t1/ray/round-002/checkpoint_000000"
    assert tags["mlflow.source.git.commit"] == provenance_tags()["mlflow.source.git.commit"]
    assert tags["mlflow.user"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_stores_are_accepted_and_checked_without_showing_the_password():
    # PostgreSQL: the URI is MLflow's; this machine lacks the driver, and the one line says which to install.
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(f"postgresql://me:s3cret@127.0.0.1:{_closed_port()}/mlflow", timeout_s=2)
    assert "needs the Python driver 'psycopg" in str(err.value) or "cannot be reached" in str(err.value)
    assert "s3cret" not in str(err.value) and "me:***@" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_mysql_store_that_does_not_answer_is_one_line():
    pytest.importorskip("pymysql")  # a dev dependency (pyproject.toml), pure Python
    port = _closed_port()
    with pytest.raises(
        TrackingError,
        match=rf"MLflow store 'mysql\+pymysql://me:\*\*\*@127.0.0.1:{port}/mlflow' "
        r"cannot be reached: .*Connection refused",
    ):
        check_tracking_uri(f"mysql+pymysql://me:s3cret@127.0.0.1:{port}/mlflow", timeout_s=2)


def test_schemes_mlflow_has_no_store_for_are_refused_naming_the_ones_it_has():
    with pytest.raises(TrackingError, match=r"no tracking store for scheme 'ftp'; it accepts: .*mysql:.*postgresql:"):
        check_tracking_uri("ftp://127.0.0.1/x")
    check_tracking_uri("databricks")  # MLflow's own; its credentials are MLflow's business
    assert display_uri("http://u:pw@127.0.0.1:5000") == "http://u:***@127.0.0.1:5000"
    assert display_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


def test_selection_overlays_go_to_mlflows_per_step_image_view(tmp_path):
    from PIL import Image

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("s")).info.run_id
    rounds = tmp_path / "trials" / "t1" / "artifacts"
    for round_index in (1, 2):
        (rounds / f"round-{round_index:03d}").mkdir(parents=True)
        Image.new("RGB", (8, 6), (0, 0, 142)).save(rounds / f"round-{round_index:03d}" / "selected-image00003.png")
    logger = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}), trial_dir=lambda t: tmp_path / "trials" / t)
    trial = SimpleNamespace(trial_id="t1", config={}, __str__=lambda self: "t1")
    logger.on_trial_start(0, [], trial)
    for round_index in (0, 1, 2, 2):  # round 2 twice (a resumed sweep): logged once
        logger.on_trial_result(0, [], trial, {"round": round_index, "target/miou": 0.1 * round_index})
    run_id = logger._runs["t1"]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    pngs = sorted(p for p in images if p.endswith(".png") and "compressed" not in p)
    assert len(pngs) == 2, images
    # MLflow's file names: key (with '/' encoded), then the step.
    assert all(p.startswith("images/selection~image00003+step+") for p in pngs), pngs
    assert {p.split("+step+")[1].split("+")[0] for p in pngs} == {"1", "2"}
