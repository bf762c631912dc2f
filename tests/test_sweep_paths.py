"""Paths of the sweep that a unit test cannot show, each run end to end once: ASHA stopping a trial
(with a region budget, selection rule ``none`` and the oracle reference inside real trials), PBT cloning a
trial with its labels, and the human-annotation loop. After each, no process of the run is left.

The tests share one output folder holding the test session's source model (``smoke_source_models``),
and the session's data cache: no test here trains a source model.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.chaos import SweepRun, sweep_args
from conftest import (
    ROOT,
    assert_same_as_fault_free,
    fault_plan,
    processes_left,
    run_cli,
    seed_source_models,
    tagged_env,
)
from orchestrator.cluster.folder_lock import check_sweep_folder_free
from orchestrator.command_line import EXIT_INTERRUPTED
from orchestrator.labels.store import LabelStore

pytestmark = pytest.mark.integration

POOL_PIXELS = 8 * 32 * 64  # the smoke pool: 8 images of 32x64


@pytest.fixture(scope="module")
def shared(tmp_path_factory, smoke_source_models, data_cache):
    """The module's folder: ``runs`` holds the session's source model, ``data`` links to the session's
    data cache (the source model's cache key holds the data cache's real path: use ``data_dir``)."""
    folder = tmp_path_factory.mktemp("sweep-paths")
    seed_source_models(smoke_source_models, folder / "runs")
    (folder / "data").symlink_to(data_cache, target_is_directory=True)
    return folder


def data_dir(shared):
    return (shared / "data").resolve()


def sweep(shared, name: str, *args: str, timeout: float = 600):
    env, tag = tagged_env()
    result = run_cli(
        "orchestrator.sweep",
        "--smoke",
        "--name",
        name,
        "--output-dir",
        str(shared / "runs"),
        "--set",
        f"data.cache_dir={data_dir(shared)}",
        "--tracking-uri",
        f"sqlite:///{shared / 'm.db'}",
        *args,
        cwd=shared,
        timeout=timeout,
        env=env,
    )
    assert processes_left(tag) == [], "processes of the sweep outlived it"
    assert "source model: reusing" in result.stdout or result.returncode != 0, result.stdout[-3000:]
    return result


def trial_runs(shared, name: str):
    client = MlflowClient(f"sqlite:///{shared / 'm.db'}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], "tags.`activeda.kind` = 'trial'")


def trial_configs(shared, name: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (shared / "runs" / name / "trials").glob("*/config.json")}


def bought_once(labels_dir) -> bool:
    """No pixel of the store was bought in two rounds."""
    seen = set()
    for path in sorted(labels_dir.glob("round-*.parquet")):
        table = pq.read_table(path)
        for image_id, ys, xs, rle, height, width in zip(
            *(table[c].to_pylist() for c in ("image_id", "ys", "xs", "mask_rle", "height", "width"))
        ):
            if rle:
                from pixel_selectors.encoding import rle_decode

                flat = rle_decode(np.asarray(rle), height * width)
                ys, xs = (flat // width).tolist(), (flat % width).tolist()
            for pixel in zip(ys, xs):
                if (image_id, *pixel) in seen:
                    return False
                seen.add((image_id, *pixel))
    return True


def test_asha_stops_a_weak_trial_as_a_result(shared):
    # One trial buys 2% of the pool's pixels a round with LabOR's region rule; the other buys nothing
    # (selection rule none: unsupervised adaptation) with a learning rate that ruins its model (mIoU near
    # chance), so ASHA, comparing the two at round 1, stops it.
    space = (
        "{cases: {grid: [{selection.rule: labor_spl, selection.budget_fraction: 0.02}, "
        "{selection.rule: none, adapt.lr: 1.0}]}}"
    )
    result = sweep(
        shared,
        "asha",
        "--set",
        "sweep.scheduler=asha",
        "--set",
        "selection.rounds=2",
        "--set",
        "sweep.oracle_reference=true",
        "--max-concurrent",
        "1",
        "--set",
        f"sweep.search_space={space}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 trial(s), 0 failed" in result.stdout
    assert "oracle (every pool pixel labeled) target mIoU: " in result.stdout
    rows = [line for line in result.stdout.splitlines() if re.match(r"[0-9a-f]{5}_\d{5} ", line)]  # the table
    assert any(" none " in row and row.endswith("stopped by asha after round 1") for row in rows), rows
    assert any(" labor_spl " in row and row.endswith(" ok") for row in rows), rows

    configs = trial_configs(shared, "asha")
    trials = shared / "runs" / "asha" / "trials"
    for trial_id, config in configs.items():
        labels = trials / trial_id / "labels"
        if config["selection"]["rule"] == "none":
            assert [pq.read_table(p).num_rows for p in sorted(labels.glob("round-*.parquet"))] == [0]
        else:
            budget = round(0.02 * POOL_PIXELS)
            sizes = [sum(pq.read_table(p)["num_pixels"].to_pylist()) for p in sorted(labels.glob("round-*.parquet"))]
            assert sizes == [budget, budget] and bought_once(labels)
    client, runs = trial_runs(shared, "asha")
    steps = {
        r.data.params["selection.rule"]: sorted(m.step for m in client.get_metric_history(r.info.run_id, "target/miou"))
        for r in runs
    }
    assert steps == {"labor_spl": [0, 1, 2], "none": [0, 1]} and all(r.info.status == "FINISHED" for r in runs)


def test_pbt_clones_a_trial_with_its_labels(shared):
    # The second trial's learning rate ruins it: after round 1 it is in PBT's lower quantile and
    # continues the first trial, with its model and its round-1 labels. It bought other pixels in its
    # own round 1 (3 points per image, not 5): those are set aside, not mixed in.
    space = (
        "{cases: {grid: [{adapt.lr: 0.001, selection.points_per_image: 5}, "
        "{adapt.lr: 1.0, selection.points_per_image: 3}]}, adapt.confusion_weight: {uniform: [0.0, 1.0]}}"
    )
    result = sweep(
        shared,
        "pbt",
        "--set",
        "sweep.scheduler=pbt",
        "--set",
        "selection.rounds=2",
        "--max-concurrent",
        "2",
        "--set",
        f"sweep.search_space={space}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    clones = [line for line in result.stdout.splitlines() if "(PBT): its model and" in line]
    assert clones, "no trial was cloned:\n" + result.stdout[-3000:]
    clone_id = clones[0].split("]")[0].rsplit("_", 2)[-2:]
    trials = shared / "runs" / "pbt" / "trials"
    clone_dir = next(d for d in trials.iterdir() if d.name.endswith("_".join(clone_id)))
    donor_id, after = clones[0].split("continuing from trial ")[1].split(" after its round ")
    taken = int(after.split()[0])
    assert taken >= 1, "cloned before any labels were bought: the labels were not cloned"
    for round_index in range(1, taken + 1):
        name = f"round-{round_index:04d}.parquet"
        assert (clone_dir / "labels" / name).read_bytes() == (trials / donor_id / "labels" / name).read_bytes()
    assert bought_once(clone_dir / "labels")
    assert list((clone_dir / "labels" / "superseded").glob("set-aside-round-0001-*.parquet"))  # its own, kept
    assert sorted(p.name for p in (clone_dir / "labels").glob("round-*.parquet")) == [
        "round-0001.parquet",
        "round-0002.parquet",
    ]


def test_human_annotation_loop(shared):
    args = [
        "--set",
        "selection.oracle=human",
        "--set",
        "selection.rounds=1",
        "--set",
        "sweep.search_space={selection.points_per_image: {grid: [3]}}",
    ]
    waiting = sweep(shared, "human", *args)
    assert waiting.returncode == 3, waiting.stdout[-3000:] + waiting.stderr[-3000:]
    assert "waits for the annotations of round 1" in waiting.stdout
    (trial_dir,) = (shared / "runs" / "human" / "trials").iterdir()
    queries = trial_dir / "queries" / "round-0001.json"
    assert f"label the pixels in '{queries}'" in waiting.stdout
    assert not (trial_dir / "labels").exists() or not list((trial_dir / "labels").glob("round-*"))  # nothing yet

    document = json.loads(queries.read_text())
    assert len(document["images"]) == 8 and all(len(e["points"]) == 3 for e in document["images"])
    for entry in document["images"]:
        entry["labels"] = [(entry["image_id"] + i) % len(document["classes"]) for i in range(3)]
    answers = shared / "answers.json"
    answers.write_text(json.dumps(document))
    imported = run_cli(
        "orchestrator.annotate",
        "import",
        "--trial-dir",
        str(trial_dir),
        "--round",
        "1",
        "--answers",
        str(answers),
        cwd=shared,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr

    resumed = sweep(shared, "human", *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "round 1: labels already bought, not ranking again" in resumed.stdout
    assert "1 trial(s), 0 failed" in resumed.stdout
    table = pq.read_table(trial_dir / "labels" / "round-0001.parquet")
    assert dict(zip(table["image_id"].to_pylist(), table["labels"].to_pylist())) == {
        e["image_id"]: e["labels"] for e in document["images"]
    }  # trained on the people's answers
    client, (run,) = trial_runs(shared, "human")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "target/miou")) == [0, 1]
    assert run.info.status == "FINISHED"


INTERRUPTED_LINE = "interrupted; every process of the sweep has ended. To continue: the same command with --resume"


def test_ctrl_c_ends_the_sweep_in_one_line_leaving_nothing_behind_and_it_resumes(shared, fault_free_sweep):
    """Ctrl-C while the trials run (after round 1's labels are bought): exit 130 and one line saying
    how to continue; no process left; the label store, progress records and sweep state readable and
    the folder free; ``--resume`` then finishes the sweep without buying a round again, and it ends as
    the sweep without faults does, round by round (labels pixel for pixel, metrics bit for bit)."""
    plan = fault_plan(shared, data_dir(shared))
    args = [*sweep_args(plan, "interrupted"), "--tracking-uri", f"sqlite:///{shared / 'm.db'}"]
    env, tag = tagged_env({**os.environ, "PYTHONPATH": str(ROOT)})
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep_dir = shared / "runs" / "interrupted"
    trials = sweep_dir / "trials"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=shared,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As in a terminal's foreground: a command started in the background inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None and not list(trials.glob("*/labels/round-*")):
            time.sleep(0.5)
        if driver.poll() is not None:
            raise AssertionError(
                f"the sweep ended (exit {driver.returncode}) before it could be interrupted:\n"
                + "".join(driver.communicate())[-3000:]
            )
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()

    # What the user sees: exit 130, and the last line says how to continue; no traceback.
    assert driver.returncode == EXIT_INTERRUPTED, stdout[-3000:] + stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1] == INTERRUPTED_LINE, stderr[-3000:]
    assert stderr.count(INTERRUPTED_LINE) == 1 and "Traceback" not in stderr, stderr[-3000:]
    # What is true after: nothing left running, nothing half-written, the folder free again.
    assert processes_left(tag) == [], "processes of the interrupted sweep outlived it"
    check_sweep_folder_free(sweep_dir)
    json.loads((sweep_dir / "sweep.json").read_text())
    assert not list(sweep_dir.rglob("*.tmp*")), list(sweep_dir.rglob("*.tmp*"))
    bought = {}
    for trial_dir in trials.iterdir():
        if (trial_dir / "progress.json").exists():
            json.loads((trial_dir / "progress.json").read_text())
        store = LabelStore(trial_dir / "labels")
        for round_index in store.rounds():
            table = store.table(only_round=round_index)  # every round reads back whole
            assert sorted(table["image_id"].to_pylist()) == list(range(8)), (trial_dir.name, round_index)
        bought.update({p: p.read_bytes() for p in (trial_dir / "labels").glob("round-*.parquet")})
    assert bought

    # It resumes: no round bought again, and it ends where the sweep without faults does.
    env, tag = tagged_env()
    resumed = run_cli("orchestrator.sweep", *args, "--resume", cwd=shared, timeout=900, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout and "2 trial(s), 0 failed" in resumed.stdout
    assert processes_left(tag) == []
    assert all(path.read_bytes() == data for path, data in bought.items())
    assert_same_as_fault_free(plan, fault_free_sweep, SweepRun(sweep_dir, shared / "m.db"), resumed.stdout[-3000:])


def test_a_run_leaves_no_process_behind(shared):
    """The case that was seen: ``orchestrator.run --smoke`` with ``labor_spl`` exited 0 and one
    ``ray::TrainController`` of it lived on, re-parented to init. Now nothing of the run is left."""
    env, tag = tagged_env()
    result = run_cli(
        "orchestrator.run",
        "--smoke",
        "--name",
        "one-run",
        "--output-dir",
        str(shared / "runs"),
        "--set",
        f"data.cache_dir={data_dir(shared)}",
        "--set",
        "selection.rule=labor_spl",
        "--set",
        "selection.budget_fraction=0.022",
        "--tracking-uri",
        f"sqlite:///{shared / 'm.db'}",
        cwd=shared,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert processes_left(tag) == [], "processes of the run outlived it"
    client = MlflowClient(f"sqlite:///{shared / 'm.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("one-run").experiment_id], "tags.`activeda.kind` = 'run'"
    )
    assert run.info.status == "FINISHED" and run.data.tags["rule"] == "labor_spl"
