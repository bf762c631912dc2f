"""How activeda starts a local Ray: workers must know which of several local Rays is theirs."""

import subprocess
import sys

from conftest import ROOT

PROBE = r"""
import os, ray
from orchestrator.raysession import start_ray

start_ray(num_cpus=1, quiet=True)
start_ray(num_cpus=1, quiet=True)  # already connected: a no-op, not "ray.init twice"

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
    runs = [subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=180,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}) for _ in range(2)]
    ports = []
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        own, seen, leftover = run.stdout.split()
        assert seen.startswith("127.0.0.1:") and own.endswith(":" + seen.split(":")[1])  # the same GCS port
        assert leftover == "unset"  # the port variable does not leak into later Ray starts of the driver
        ports.append(seen)
    assert ports[0] != ports[1]
