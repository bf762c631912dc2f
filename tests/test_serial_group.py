"""The suite's grouping under pytest-xdist works: the tests of each group share one worker, the
fault-free sweep's users are a group of their own, and the rest are spread."""

import os
import re
import subprocess
import sys

from conftest import ROOT

TESTS = """
import time
import pytest

@pytest.mark.ray
def test_marked_ray():
    time.sleep(0.5)

@pytest.mark.integration
def test_marked_integration():
    time.sleep(0.5)

def test_with_the_source_model(smoke_source_models):
    time.sleep(0.5)

def test_against_the_fault_free_sweep(fault_free_sweep):
    time.sleep(0.5)

@pytest.mark.ray
def test_marked_ray_against_the_fault_free_sweep(fault_free_sweep):
    time.sleep(0.5)

@pytest.mark.parametrize("n", range(8))
def test_plain(n):
    time.sleep(0.5)
"""

# A serial test in a file that balances the groups (serial_group.BALANCING_FILES)
BALANCING = """
import time
import pytest

@pytest.mark.ray
def test_marked_ray_in_a_balancing_file():
    time.sleep(0.5)
"""

CONFTEST = """
import pytest
from serial_group import group_serial_tests

@pytest.fixture
def smoke_source_models():
    return None

@pytest.fixture
def fault_free_sweep():
    return None

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    group_serial_tests(items)
"""


def test_ray_and_sweep_tests_run_on_one_worker_and_the_rest_are_spread(tmp_path):
    (tmp_path / "test_probe.py").write_text(TESTS)
    (tmp_path / "test_train_loop.py").write_text(BALANCING)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.findall(r"\[(gw\d+)\] \[ *\d+%\] PASSED test_\w+.py::(\w+)", result.stdout)
    worker_of = {name: worker for worker, name in passed}
    serial = {worker_of[name] for name in ("test_marked_ray", "test_marked_integration", "test_with_the_source_model")}
    assert len(serial) == 1, (worker_of, result.stdout[-3000:])
    fault_free = {
        worker_of[name]
        for name in (
            "test_against_the_fault_free_sweep",
            "test_marked_ray_against_the_fault_free_sweep",
            "test_marked_ray_in_a_balancing_file",
        )
    }
    assert len(fault_free) == 1 and fault_free != serial, (worker_of, result.stdout[-3000:])
    plain = {worker for worker, name in passed if name == "test_plain"}
    assert plain == {"gw0", "gw1"}, result.stdout[-3000:]
