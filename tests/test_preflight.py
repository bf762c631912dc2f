"""Bad input is refused before the first byte is written; one run at a time on a sweep folder; what a
killed run left running is ended. No Ray: every refusal here comes before Ray starts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from orchestrator.cluster.folder_lock import LOCK_FILE, SweepFolderBusy, SweepFolderLock, check_sweep_folder_free
from orchestrator.cluster.processes import RUN_MARK, end_run_processes, processes_with
from trainers.data.labelmaps import CLASS_SETS

HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from orchestrator.cluster.folder_lock import SweepFolderLock; "
    "SweepFolderLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
)


def hold_lock(sweep_dir, env=None):
    """Another process holding ``sweep_dir``, as a running sweep does; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(sweep_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_config_file_that_is_not_utf8_yaml_is_one_line_and_writes_nothing(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"adapt:\n  steps: 3\n\xff\xfe\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_cli("orchestrator.sweep", "--config", str(config), cwd=run_dir, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == [
        f"error: config file '{config}' is not UTF-8 text (byte 0xff at offset 18)"
    ], result.stderr
    assert list(run_dir.iterdir()) == []


def test_a_resume_of_a_sweep_that_never_ran_writes_nothing(tmp_path):
    # It used to generate the synthetic domains first, then refuse.
    result = run_cli("orchestrator.sweep", "--smoke", "--resume", cwd=tmp_path, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "nothing to resume: no sweep was started at" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_on_a_busy_sweep_folder_is_refused_in_one_line(tmp_path):
    sweep_dir = tmp_path / "runs" / "smoke"
    holder = hold_lock(sweep_dir)
    try:
        result = run_cli(
            "orchestrator.sweep", "--smoke", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path, timeout=120
        )
    finally:
        holder.kill()
        holder.wait()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"sweep folder '{sweep_dir}' is in use by process {holder.pid} on " in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs", "smoke", LOCK_FILE]  # nothing of its own


def test_the_lock_is_exclusive_and_released(tmp_path):
    lock = SweepFolderLock.acquire(tmp_path / "s")
    with pytest.raises(SweepFolderBusy, match=f"is in use by process {os.getpid()}"):
        check_sweep_folder_free(tmp_path / "s")
    lock.release()
    check_sweep_folder_free(tmp_path / "s")
    SweepFolderLock.acquire(tmp_path / "s").release()


def test_a_lock_left_by_a_killed_run_does_not_block_and_its_leftovers_are_ended(tmp_path):
    mark = f"test-{os.getpid()}-{time.time_ns()}"
    # A process of the killed run that would go on writing into the folder (it ignores SIGTERM, as the
    # Ray Train controller was seen to).
    leftover = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('up', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, RUN_MARK: mark},
    )
    assert leftover.stdout.readline().strip() == "up"
    holder = hold_lock(tmp_path / "s", env={RUN_MARK: mark})
    holder.send_signal(signal.SIGKILL)  # the run dies holding the lock
    holder.wait()
    assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["run_id"] == mark  # the stale lock file stays
    try:
        lock = SweepFolderLock.acquire(tmp_path / "s")
        assert leftover.wait(timeout=10) == -signal.SIGKILL  # SIGTERM was ignored: it took SIGKILL
        assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        leftover.kill()
        leftover.wait()


def test_a_run_ends_every_process_that_carries_its_mark(tmp_path):
    mark = f"test-{os.getpid()}-{time.time_ns()}"
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env={**os.environ, RUN_MARK: mark})
        for _ in range(2)
    ]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not of the run
    try:
        assert sorted(processes_with(RUN_MARK, mark)) == sorted(c.pid for c in children)
        assert end_run_processes(mark) == 2
        assert all(c.wait(timeout=10) == -signal.SIGTERM for c in children)
        assert processes_with(RUN_MARK, mark) == [] and other.poll() is None
    finally:
        for process in (*children, other):
            process.kill()
            process.wait()


def test_a_resume_whose_mlflow_outbox_is_damaged_is_refused_before_anything(tmp_path, monkeypatch):
    from experiment_config import load_config, with_absolute_paths

    monkeypatch.chdir(tmp_path)  # relative paths of the config resolve as the command's will
    cfg = with_absolute_paths(load_config(None, smoke=True))
    sweep_dir = tmp_path / "runs" / "smoke"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"parent_run_id": "p", "config": cfg.to_dict()}))
    (sweep_dir / "mlflow-unsent.jsonl").write_text('{"action": "metrics"}\n')
    before = sorted(tmp_path.rglob("*"))
    result = run_cli(
        "orchestrator.sweep",
        "--smoke",
        "--resume",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: '{sweep_dir / 'mlflow-unsent.jsonl'}' line 1 is not an activeda unsent-metrics record"
    ), result.stderr
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "withheld, message",
    [
        (
            ["pole", "polo"],
            "config key 'selection.unlabeled_classes': unknown class 'polo' in class set 'synthetic_v2'",
        ),
        (
            list(CLASS_SETS["synthetic_v2"]),  # every class of the bundled domains' default version
            "config key 'selection.unlabeled_classes': withholds every class",
        ),
    ],
)
def test_withheld_classes_are_checked_against_the_class_set(withheld, message):
    from experiment_config import ConfigError, load_config
    from orchestrator.sweep.preflight import check_unlabeled_classes

    cfg = load_config(None, {"selection.unlabeled_classes": withheld})
    with pytest.raises(ConfigError) as err:
        check_unlabeled_classes(cfg)
    assert str(err.value).startswith(message)
