"""Which tests run one at a time under pytest-xdist.

``make test`` runs ``pytest -n auto --dist loadgroup``. The tests that run Ray or a sweep, or share
the session's trained source model and fault-free sweep, stay together on one worker, in file order:
two sweeps at once on a small machine only slow each other down, and the session fixtures are then
built once. The other tests share the remaining workers meanwhile.

xdist's ``loadgroup`` needs pytest 8: under pytest 9 its group names no longer reach the test ids,
and every test is scheduled alone (``tests/test_serial_group.py`` fails then).
"""

from __future__ import annotations

import pytest

SERIAL_GROUP = "ray-and-sweeps"
SERIAL_MARKERS = ("ray", "integration", "cluster", "database", "browser", "slow")
SERIAL_FIXTURES = ("ray_local", "smoke_source_models", "smoke_output", "fault_free_sweep", "s3_server")


def group_serial_tests(items: list[pytest.Item]) -> None:
    """Put every test that carries a serial marker or uses a serial fixture in the serial group."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if any(m in item.keywords for m in SERIAL_MARKERS) or any(f in fixtures for f in SERIAL_FIXTURES):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
