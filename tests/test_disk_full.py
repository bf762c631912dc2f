"""The output folder's disk fills up in the middle of a sweep: one clear error, the finished round's
labels and checkpoint intact and readable, nothing of the sweep left running, and the sweep resumes
once there is space again, and ends with the labels and metrics of the same sweep run without faults.

The disk is a real small filesystem: a tmpfs with a size limit, mounted by the test and removed after
it (this needs root; the test is skipped where mounting is not allowed). Filling it makes every write
under the output folder fail with ENOSPC, as on a full disk, in the driver and in Ray's workers alike.
"""

import errno
import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

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

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Write a file until the disk is full."""
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    with pytest.raises(OSError):  # really full: not even a small file fits
        (disk / "probe").write_bytes(b"\0" * 65536)


def test_a_full_disk_mid_sweep_is_one_error_and_resumes_once_there_is_space(
    tmp_path, small_disk, fault_free_sweep, smoke_source_models, data_cache
):
    # One trial of the fault-free sweep (points_per_image 2, 2 rounds); only its output folder (with
    # the session's source model in it) is on the small disk.
    plan = fault_plan(small_disk, data_cache, trials=1)
    output = small_disk / "runs"
    seed_source_models(smoke_source_models, output)
    common = [*sweep_args(plan, "smoke"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    env, tag = tagged_env({**os.environ, "PYTHONPATH": str(ROOT)})
    env.pop("MLFLOW_TRACKING_URI", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *common],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    trials = output / "smoke" / "trials"
    try:
        deadline = time.time() + 400
        progress = []
        while time.time() < deadline and driver.poll() is None:
            progress = [json.loads(p.read_text())["progress"] for p in trials.glob("*/progress.json")]
            if any(p["round"] == 1 for p in progress):
                break
            time.sleep(0.2)
        assert driver.poll() is None and progress, "the sweep ended before round 1 was done"
        fill(small_disk)  # round 2 is under way, or about to be
        stdout, stderr = driver.communicate(timeout=900)  # the failing round is retried (sweep.trial_retries)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    # One clear error naming the problem and what to do; the sweep failed.
    assert driver.returncode == 1, stdout[-2000:] + stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: No space left on device under the output folder '{output}': the labels and "
        f"checkpoints of finished rounds are intact; free some space (or make it writable), then run "
        f"the same command with --resume"
    ], stderr[-3000:]
    assert processes_left(tag) == [], "processes of the failed sweep outlived it"

    # Round 1 is intact and readable: its labels and its model checkpoint.
    from trainers.checkpoint import load_checkpoint

    (trial_dir,) = trials.iterdir()
    round_one = trial_dir / "labels" / "round-0001.parquet"
    bought = round_one.read_bytes()
    assert pq.read_table(round_one).num_rows == 8
    assert "source model: reusing" in stdout, stdout[-3000:]
    record = json.loads((trial_dir / "progress.json").read_text())["progress"]
    assert record["round"] == 1 and load_checkpoint(record["model_checkpoint"])["round"] == 1

    # Space is back: the sweep resumes after round 1 and finishes, without buying round 1 again.
    (small_disk / "filler").unlink()
    env, tag = tagged_env()
    resumed = run_cli("orchestrator.sweep", *common, "--resume", cwd=tmp_path, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert round_one.read_bytes() == bought
    assert sorted(p.name for p in (trial_dir / "labels").glob("round-*.parquet")) == [
        "round-0001.parquet",
        "round-0002.parquet",
    ], (sorted(str(p) for p in trials.rglob("*.parquet")), resumed.stdout[-4000:])
    assert [d.name for d in trials.iterdir()] == [trial_dir.name]  # the same trial, not a new one
    assert processes_left(tag) == []
    # What the full disk and the resume leave is what the sweep without faults bought and measured:
    # every round's labels pixel for pixel, every round's metrics (mIoU, budget, losses) once, bit for bit.
    assert_same_as_fault_free(plan, fault_free_sweep, SweepRun(output / "smoke", tmp_path / "m.db"), resumed.stdout)
