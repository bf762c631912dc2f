import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from serial_group import group_serial_tests

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (the chaos run)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        # A test that takes the in-process Ray fixture starts Ray, marked or not.
        if "ray_local" in getattr(item, "fixturenames", ()) and "ray" not in item.keywords:
            item.add_marker(pytest.mark.ray)
    group_serial_tests(items)
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


def run_wide_folder(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name``, built once by ``build(folder)`` for the whole test run: under pytest-xdist,
    the workers share it (the first to need it builds it while the others wait on a file lock)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder above every worker's own
    folder = root / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build's leftovers
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One cache of generated synthetic domains for the whole test run (its workers share it: the
    session's source model is cached under the cache's path)."""
    return run_wide_folder(tmp_path_factory, "synthetic-cache", lambda folder: None)


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


# --- one source model, and one fault-free sweep, per test session ----------------------------------
#
# Every sweep test starts from the smoke config's source model. It is trained once here (a Ray Train
# job: most of a minute on 2 CPUs) and copied into each test's output folder, where the sweep's own
# cache finds it (``ensure_source_model``: "source model: reusing ..."). The cache key covers the
# data section, data.cache_dir included, so the tests that use it also use the session's data cache.

SOURCE_SCRIPT = r"""
import sys
from orchestrator.cluster.ray_connection import start_ray
from orchestrator.command_line import parse_args, resolve_config
from orchestrator.round.start_models import ensure_source_model
from orchestrator.sweep.command import build_parser
from trainers.data import domain_roots

# The config exactly as `orchestrator.sweep --smoke --output-dir OUT --set data.cache_dir=CACHE` has it.
cfg = resolve_config(parse_args(build_parser(), ["--smoke", "--output-dir", sys.argv[1], "--set", f"data.cache_dir={sys.argv[2]}"]))
start_ray(num_cpus=2, quiet=False, dashboard=False)
domain_roots(cfg.data)
ensure_source_model(cfg, progress=lambda msg: print(f"[activeda] {msg}", flush=True))
import ray
ray.shutdown()
"""


@pytest.fixture(scope="session")
def smoke_source_models(tmp_path_factory, data_cache) -> Path:
    """The ``source-models`` folder holding the smoke config's source model (with ``data_cache``),
    trained once per test run; ``seed_source_models`` copies it into a sweep's output folder. What the
    training printed (the Train worker's progress among it) is kept beside it, in ``training.log``."""

    def train(out: Path) -> None:
        env, tag = tagged_env({**os.environ, "PYTHONPATH": str(ROOT), "ACTIVEDA_RAY_DASHBOARD": "0"})
        result = subprocess.run(
            [sys.executable, "-c", SOURCE_SCRIPT, str(out), str(data_cache)],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (out / "training.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert processes_left(tag) == [], "processes of the source-model training outlived it"

    out = run_wide_folder(tmp_path_factory, "smoke-source", train)
    (entry,) = [p for p in (out / "source-models").iterdir() if (p / "metrics.json").is_file()]
    return entry.parent


def seed_source_models(source_models: Path, output_dir: Path) -> None:
    """Copy the session's trained source model(s) into ``output_dir``'s cache (not its Ray Train
    scratch folder)."""
    for entry in source_models.iterdir():
        if (entry / "metrics.json").is_file():
            shutil.copytree(entry, Path(output_dir) / "source-models" / entry.name, dirs_exist_ok=True)


@pytest.fixture
def smoke_output(tmp_path, smoke_source_models, data_cache):
    """A sweep output folder that already holds the smoke source model, and the ``--set`` arguments
    that make a smoke sweep use it (the session's data cache); returns (output_dir, args)."""
    output = tmp_path / "runs"
    seed_source_models(smoke_source_models, output)
    return output, ["--set", f"data.cache_dir={data_cache}"]


# The fault tests (a full disk, an MLflow outage, the small chaos case) compare their results with
# one sweep run without faults: 2 trials (points_per_image 2 and 3) x 2 rounds, the chaos benchmark's
# sweep (benchmarks.chaos.sweep_args), which each of them runs (or a trial of it) with its faults.
FAULT_FREE_TRIALS, FAULT_FREE_ROUNDS = 2, 2


def fault_plan(
    workdir: Path, data_cache: Path, trials: int = FAULT_FREE_TRIALS, kills: int = 0, seed: int = 0, kinds=None
):
    """The chaos benchmark's plan of the fault tests' sweep, in ``workdir`` (its output folder is
    ``workdir/runs``), with the session's data cache; ``kills`` of ``kinds`` (default: every kind)."""
    from benchmarks.chaos import VICTIMS, Plan

    overrides = [f"data.cache_dir={data_cache}"]
    return Plan(trials, FAULT_FREE_ROUNDS, kills, seed, Path(workdir), overrides, 1200, tuple(kinds or VICTIMS))


@pytest.fixture(scope="session")
def fault_free_sweep(tmp_path_factory, smoke_source_models, data_cache):
    """The fault tests' sweep, run once without faults; returns its ``benchmarks.chaos.SweepRun``
    (sweep folder ``runs/reference``, sqlite store ``reference/mlflow.db``)."""
    from benchmarks.chaos import reference_run, run_reference

    workdir = tmp_path_factory.mktemp("fault-free")
    plan = fault_plan(workdir, data_cache)
    seed_source_models(smoke_source_models, workdir / "runs")
    run_reference(plan)
    run = reference_run(plan)
    log = (workdir / "reference" / "sweep.log").read_text()
    assert "source model: reusing" in log, log[-3000:]
    return run


def assert_same_as_fault_free(plan, reference, run, what: str = "", faults=None) -> dict:
    """``run`` (a ``benchmarks.chaos.SweepRun`` of ``plan``'s sweep, or some of its trials) lost nothing,
    bought nothing twice, and equals ``reference`` (the fault-free sweep) at every round: each trial's
    labels pixel for pixel, its MLflow metrics bit for bit; returns the comparison."""
    from benchmarks.chaos import LOSS_COUNTS, FaultLog, compare

    result = compare(plan, faults or FaultLog(), reference, run)
    for count in LOSS_COUNTS:
        assert result[count] == 0, (count, result, what)
    assert set(result["trials"]) == set(plan.grid), (result, what)
    for key, row in result["trials"].items():
        assert row["all_rounds_equal"], (f"trial points_per_image={key}", row["differences"][:10], what)
    return result
