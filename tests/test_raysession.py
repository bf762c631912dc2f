"""How activeda starts a local Ray: workers must know which of several local Rays is theirs."""

import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT
from orchestrator.cluster import ray_connection
from orchestrator.cluster.ray_connection import RayStartError, start_ray

PROBE = r"""
import os, sys, urllib.request, ray
from orchestrator.cluster.ray_connection import start_ray

start_ray(num_cpus=1, quiet=True, dashboard=sys.argv[1] == "on")
start_ray(num_cpus=1, quiet=True)  # already connected: a no-op, not "ray.init twice"
url = ray.get_runtime_context().dashboard_url if hasattr(ray.get_runtime_context(), "dashboard_url") else None
url = url or ray._private.worker.global_worker.node.webui_url
if url:
    with urllib.request.urlopen(f"http://{url}/", timeout=60) as page:
        print("DASHBOARD", url, page.status, file=sys.stderr)

@ray.remote(num_cpus=0)
def worker_address():
    return os.environ.get("RAY_ADDRESS", "")

own = ray.get_runtime_context().gcs_address
seen = ray.get(worker_address.remote())
print(own, seen, os.environ.get("RAY_GCS_SERVER_PORT", "unset"))
ray.shutdown()
"""


@pytest.mark.ray
def test_workers_are_told_the_address_of_their_own_local_ray():
    """Ray Train's placement-group cleaner runs in a worker and looks its cluster up by address;
    with two local Rays on one machine (two sweeps at once) it died with "Found multiple active Ray
    instances" unless the worker knows the address."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", PROBE, dashboard],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env={"PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)), "PATH": "/usr/bin:/bin"},
        )
        for dashboard in ("on", "off")
    ]
    ports = []
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        own, seen, leftover = run.stdout.split()
        assert seen.startswith("127.0.0.1:") and own.endswith(":" + seen.split(":")[1])  # the same GCS port
        assert leftover == "unset"  # the port variable does not leak into later Ray starts of the driver
        ports.append(seen)
    assert ports[0] != ports[1]
    # The local Ray's dashboard is on when asked for, and serves on 127.0.0.1 only; off when not.
    dashboard = [line.split() for line in runs[0].stderr.splitlines() if line.startswith("DASHBOARD")]
    assert dashboard, (
        "no Ray dashboard: are Ray's dashboard packages installed (pip install 'ray[default]', a "
        "dependency in pyproject.toml)?\n" + runs[0].stderr[-2000:]
    )
    assert dashboard[0][1].startswith("127.0.0.1:") and dashboard[0][2] == "200", runs[0].stderr[-2000:]
    assert "DASHBOARD" not in runs[1].stderr


# --- start_ray's retry on Ray's start-up timeouts, with ray.init stubbed (no Ray starts) ------------

# The two exceptions Ray 2.60 raises when a local node's fixed start-up wait runs out (exact types).
RAYLET_TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet failed to "
    "startup or the GCS has become overloaded."
)
GCS_PORT_TIMEOUT = RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_abc")


class StubInit:
    """A ``ray.init`` that fails with ``errors`` in turn (then succeeds); each failing call first
    spawns a process, like a half-started Ray node leaves daemons behind."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = []
        self.spawned = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.errors:
            self.spawned.append(subprocess.Popen(["sleep", "300"]))
            raise self.errors.pop(0)
        return types.SimpleNamespace(dashboard_url=None)


@pytest.fixture
def stub_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def install(*errors):
        stub = StubInit(*errors)
        monkeypatch.setattr(ray, "init", stub)
        return stub

    yield install


def ended(process: subprocess.Popen, wait_s: float = 10) -> bool:
    try:
        process.wait(timeout=wait_s)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


@pytest.mark.parametrize("error", [RAYLET_TIMEOUT, GCS_PORT_TIMEOUT], ids=["raylet-wait", "gcs-port-wait"])
def test_start_ray_tries_once_more_after_a_start_timeout(stub_ray, error, capsys):
    stub = stub_ray(error)
    start_ray(num_cpus=1, dashboard=False)
    assert len(stub.calls) == 2
    assert ended(stub.spawned[0]), "the failed start's processes were left running"
    assert "trying once more" in capsys.readouterr().out
    # The start's temporary variables do not leak into the driver.
    assert ray_connection.START_MARK not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ


def test_start_ray_ends_in_one_line_after_a_second_timeout(stub_ray):
    stub = stub_ray(RAYLET_TIMEOUT, GCS_PORT_TIMEOUT)
    with pytest.raises(RayStartError) as caught:
        start_ray(num_cpus=1, quiet=True, dashboard=False)
    assert len(stub.calls) == 2
    assert all(ended(p) for p in stub.spawned)
    message = str(caught.value)
    assert "\n" not in message and "did not start" in message and "Timed out waiting for file" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback


@pytest.mark.parametrize(
    "error",
    [ValueError("bad num_cpus"), RuntimeError("something else"), ConnectionError("timed out during startup")],
    ids=["value-error", "other-runtime-error", "same-text-other-type"],
)
def test_start_ray_does_not_retry_other_errors(stub_ray, error):
    stub = stub_ray(error)
    with pytest.raises(type(error)):
        start_ray(num_cpus=1, quiet=True, dashboard=False)
    assert len(stub.calls) == 1
    ended(stub.spawned[0], wait_s=0)


COMMAND_WITH_STUB = r"""
import sys, ray
def init(**kwargs):
    raise Exception("The current node timed out during startup. This could happen because some of the "
                    "raylet failed to startup or the GCS has become overloaded.")
ray.init = init
from orchestrator.sweep.command import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_sweep_command_ends_in_one_line_when_ray_does_not_start(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            COMMAND_WITH_STUB,
            "--smoke",
            "--quiet",
            "--output-dir",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--set",
            f"data.cache_dir={tmp_path / 'data'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ACTIVEDA_RAY_DASHBOARD": "0"},
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the local Ray did not start"), result.stderr[-3000:]
    assert "GCS has become overloaded" in lines[0]


def test_a_failed_start_attempt_ends_a_daemon_that_shows_its_mark_only_on_a_later_scan(monkeypatch):
    """A process caught between fork and exec reads as an empty environment in /proc, so the first
    scan misses it; the attempt's clean-up scans again and ends it."""
    import ray

    daemon = subprocess.Popen(["sleep", "300"])
    scans = []

    def scan(name, value):
        scans.append(value)
        return [] if len(scans) == 1 else ([daemon.pid] if daemon.poll() is None else [])

    monkeypatch.setattr(ray_connection, "processes_with", scan)
    ray_connection._end_attempt(ray, "mark")
    assert ended(daemon, wait_s=5), "a daemon missed by the first scan was left running"
    assert len(scans) >= 2
