"""How activeda starts a local Ray: workers must know which of several local Rays is theirs."""

import os
import subprocess
import sys

from conftest import ROOT

PROBE = r"""
import os, sys, urllib.request, ray
from orchestrator.cluster.ray_session import start_ray

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
