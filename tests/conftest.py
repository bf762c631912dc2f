import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (the chaos run)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        # A test that takes the in-process Ray fixture starts Ray, marked or not.
        if "ray_local" in getattr(item, "fixturenames", ()) and "ray" not in item.keywords:
            item.add_marker(pytest.mark.ray)
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for in-process tests; per module, so that subprocess sweeps never see two Rays."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run ``python -m module args`` from the repo's interpreter; returns the CompletedProcess."""
    import subprocess

    # No Ray dashboard in tests: it adds seconds to every Ray start (tests/test_raysession.py checks it).
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "ACTIVEDA_RAY_DASHBOARD": "0", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One cache of generated synthetic domains for the whole test session."""
    return tmp_path_factory.mktemp("synthetic-cache")


S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # no instance-metadata lookups for credentials or region on a machine that is not EC2
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 server (moto) on 127.0.0.1 with an empty bucket 'activeda-test'; yields its endpoint URL.

    The fake credentials go into this process's environment too: Ray workers started by the tests
    inherit it, like instance-role credentials on a real cluster.
    """
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    saved = {key: os.environ.get(key) for key in S3_TEST_ENV}
    os.environ.update(S3_TEST_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir(
        "activeda-test"
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Every process a command under test starts inherits this variable (Ray's daemons, and through them
# every worker and actor), so a test can tell whether any of them outlived the command.
RUN_TAG = "ACTIVEDA_TEST_RUN"


def tagged_env(env: dict | None = None) -> tuple[dict, str]:
    """``env`` plus a fresh run tag; returns (env, tag)."""
    import uuid

    tag = uuid.uuid4().hex
    return {**(env or {}), RUN_TAG: tag}, tag


def processes_left(tag: str, grace_s: float = 20.0) -> list[str]:
    """The processes still carrying ``tag`` once ``grace_s`` has passed (or none are left): pid and name."""
    import time

    from orchestrator.cluster.processes import processes_with

    deadline = time.monotonic() + grace_s
    while True:
        left = processes_with(RUN_TAG, tag)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    names = []
    for pid in left:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode(errors="replace")
        except OSError:
            continue
        names.append(f"{pid} {command}")
    return names


# --- a real MLflow server (127.0.0.1, sqlite store) for the outage tests ---------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1 in its own process group (its uvicorn worker dies with it)."""
    import time
    import urllib.request

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # its job runner only costs CPU here
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--artifacts-destination",
            str(artifacts),
        ],
        cwd=store.parent,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise AssertionError(f"the MLflow server did not come up:\n{log.read_text()[-2000:]}")


def stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()
