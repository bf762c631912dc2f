"""Which tests run one at a time under pytest-xdist, and beside which others.

``make test`` runs ``pytest -n auto --dist loadgroup``. The tests that run Ray or a sweep go into two
groups, each on one worker, in file order:

- ``fault-free-sweep``: the tests that compare with the fault-free sweep (a full disk, an MLflow
  outage, the small chaos case, Ctrl-C, the dashboard): that session fixture is then built once.
  The Ray Train tests of ``test_train_loop.py`` join them, so that the two groups take about as long;
- ``ray-and-sweeps``: every other test that starts Ray or a sweep (markers ``ray``, ``integration``,
  ``cluster``, ``database``, ``browser``, ``slow``, or the session's source model, the in-process Ray,
  the S3 server).

Two sweeps at once fill a small machine's idle moments (Ray's start-ups, process spawns, polling);
more would only slow each other down. The other tests share the workers when a group is done. The
data cache and the trained source model are shared by all workers (``run_wide_folder`` in
``conftest.py``).

xdist's ``loadgroup`` needs pytest 8: under pytest 9 its group names no longer reach the test ids,
and every test is scheduled alone (``tests/test_serial_group.py`` fails then).
"""

from __future__ import annotations

import pytest

FAULT_FREE_GROUP = "fault-free-sweep"
SERIAL_GROUP = "ray-and-sweeps"
SERIAL_MARKERS = ("ray", "integration", "cluster", "database", "browser", "slow")
SERIAL_FIXTURES = ("ray_local", "smoke_source_models", "smoke_output", "s3_server")
# Serial tests that go with the fault-free sweep's group, to balance the two workers of a 2-CPU machine
# (otherwise about 16 and 22 minutes of work, measured side by side on 2 CPUs).
BALANCING_FILES = ("test_train_loop.py",)


def group_serial_tests(items: list[pytest.Item]) -> None:
    """Put every test that uses the fault-free sweep in its group, and every other test that carries a
    serial marker or uses a serial fixture in the serial group."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        serial = any(m in item.keywords for m in SERIAL_MARKERS) or any(f in fixtures for f in SERIAL_FIXTURES)
        if "fault_free_sweep" in fixtures or (serial and item.path.name in BALANCING_FILES):
            item.add_marker(pytest.mark.xdist_group(FAULT_FREE_GROUP))
        elif serial:
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
