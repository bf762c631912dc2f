"""Tracking on a real database: the smoke sweep logs to a PostgreSQL and to a MariaDB server, and
MLflow reads back the runs, the per-round metrics, the params and the artifacts.

Tests marked ``database`` start Debian's servers themselves (installed by
scripts/install_database_test_deps.sh, which ``make test`` runs): each in a temporary folder of its
own, bound to 127.0.0.1 on a free port, as the server's unprivileged system user when the tests run
as root (PostgreSQL refuses to run as root), and stopped and removed whatever the test's outcome.
One smoke sweep per server, from the test session's source model (``smoke_output``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, run_cli
from experiment_config import load_config
from orchestrator.tracking.mlflow_runs import (
    ARTIFACTS_FOLDER,
    SweepTracking,
    TrackingError,
    artifact_location,
    check_tracking_uri,
)

PASSWORD = "s3cret:@/"  # characters a URI must escape: the sweep gets it percent-encoded
URI_PASSWORD = "s3cret%3A%40%2F"
INSTALL_HINT = "run: bash scripts/install_database_test_deps.sh (as root)"


# --- servers ------------------------------------------------------------------------------------


def _server_user(name: str) -> pwd.struct_passwd | None:
    """The system user a server runs as when the tests run as root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.fail(f"no system user '{name}' to run the database server as; {INSTALL_HINT}")


def _private_dir(prefix: str, owner: pwd.struct_passwd | None) -> Path:
    """A fresh folder the server's user owns (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


def _as(owner: pwd.struct_passwd | None) -> dict:
    return {} if owner is None else {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _stop(process: subprocess.Popen, sig: int) -> None:
    """``sig`` to the server's process group (its own workers included), SIGKILL after 30 s."""
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _wait_for(connect, process: subprocess.Popen, log: Path, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect()
            return
        except Exception as err:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise AssertionError(f"{what} did not come up ({err}):\n{tail}") from None
            time.sleep(0.3)


@pytest.fixture
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with an empty database 'mlflow'; yields its psycopg 3 URI."""
    import psycopg

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not binaries:
        pytest.fail(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin); {INSTALL_HINT}")
    bindir = Path(binaries[-1])
    owner = _server_user("postgres")
    folder = _private_dir("activeda-postgres-", owner)
    server = None
    try:
        password_file = folder / "password"
        password_file.write_text(PASSWORD + "\n")
        if owner is not None:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "mlflow", f"--pwfile={password_file}"]
            + ["--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            **_as(owner),
        )
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        port = free_port()
        log = folder / "postgres.log"
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "unix_socket_directories": folder,
            "fsync": "off",  # a throw-away server: durability costs time and buys nothing here
        }
        server = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(folder / "data")]
            + [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")],
            cwd=folder,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as(owner),
        )

        def create_database():
            with psycopg.connect(
                host="127.0.0.1", port=port, user="mlflow", password=PASSWORD, dbname="postgres", connect_timeout=2
            ) as connection:
                connection.autocommit = True
                connection.execute("CREATE DATABASE mlflow")

        _wait_for(create_database, server, log, "PostgreSQL")
        yield f"postgresql+psycopg://mlflow:{URI_PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        if server is not None:
            _stop(server, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mariadb_server() -> Iterator[str]:
    """A MariaDB server on 127.0.0.1 with a database 'mlflow' and a user for it; yields its URI."""
    import pymysql

    mariadbd, install_db = Path("/usr/sbin/mariadbd"), shutil.which("mariadb-install-db")
    if not mariadbd.exists() or install_db is None:
        pytest.fail(f"MariaDB is not installed (no {mariadbd} or mariadb-install-db); {INSTALL_HINT}")
    owner = _server_user("mysql")
    user_option = [] if owner is None else [f"--user={owner.pw_name}"]  # both drop root themselves
    folder = _private_dir("activeda-mariadb-", owner)
    server = None
    try:
        init = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={folder / 'data'}", "--skip-test-db", *user_option],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
        init_sql = folder / "init.sql"  # run by the server at start-up, with every privilege
        init_sql.write_text(
            "CREATE DATABASE IF NOT EXISTS mlflow CHARACTER SET utf8mb4;\n"
            f"CREATE USER IF NOT EXISTS 'mlflow'@'127.0.0.1' IDENTIFIED BY '{escaped}';\n"
            "GRANT ALL ON mlflow.* TO 'mlflow'@'127.0.0.1';\n"
        )
        if owner is not None:
            os.chown(init_sql, owner.pw_uid, owner.pw_gid)
        port = free_port()
        log = folder / "mariadb.log"
        server = subprocess.Popen(
            [
                str(mariadbd),
                "--no-defaults",  # none of the system's /etc/mysql settings
                f"--datadir={folder / 'data'}",
                *user_option,
                "--bind-address=127.0.0.1",
                f"--port={port}",
                f"--socket={folder / 'mariadb.sock'}",
                f"--pid-file={folder / 'mariadb.pid'}",
                f"--init-file={init_sql}",
                f"--log-error={log}",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",  # Debian's packaged default; the built-in one is latin1
                "--collation-server=utf8mb4_general_ci",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def connect():
            pymysql.connect(
                host="127.0.0.1", port=port, user="mlflow", password=PASSWORD, database="mlflow", connect_timeout=2
            ).close()

        _wait_for(connect, server, log, "MariaDB")
        yield f"mysql+pymysql://mlflow:{URI_PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        if server is not None:
            _stop(server, signal.SIGTERM)  # MariaDB's normal shutdown
        shutil.rmtree(folder, ignore_errors=True)


# --- the smoke sweep against each server ------------------------------------------------------


def _artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    out = {}
    for item in client.list_artifacts(run_id, path):
        out.update(_artifact_files(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return out


def _check_smoke_sweep(uri: str, cwd: Path, smoke_output) -> None:
    """Run the smoke sweep against ``uri`` from ``cwd`` (its output folder ``cwd/runs``, holding the test
    session's source model: ``smoke_output``), then read everything back through MLflow."""
    output, extra = smoke_output
    assert output == cwd / "runs"
    # One trial: what a database store must keep (a sweep run, its trial's run, metrics, artifacts) does
    # not grow with the trials, and each trial is one more Ray Train job in the suite's time.
    one_trial = ["--set", "sweep.search_space={selection.points_per_image: {grid: [2]}}"]
    result = run_cli("orchestrator.sweep", "--smoke", "--tracking-uri", uri, *extra, *one_trial, cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "source model: reusing" in result.stdout, result.stdout[-3000:]
    assert URI_PASSWORD not in result.stdout + result.stderr  # the password is shown as ***
    cfg = load_config(None, smoke=True)
    rounds = cfg.selection.rounds
    points = [2]
    sweep_dir = cwd / "runs" / "smoke"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("smoke")
    # The artifacts of a database store live in the sweep folder, not in ./mlruns where the sweep ran.
    assert experiment.artifact_location == str(sweep_dir.resolve() / ARTIFACTS_FOLDER)
    assert not (cwd / "mlruns").exists()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("activeda.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("activeda.kind") == "trial"]
    assert len(parents) == 1 and len(children) == len(points) and len(runs) == 1 + len(points)
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert "source_only/target/miou" in parent.data.metrics
    assert parent.data.params["selection.rounds"] == str(rounds) and parent.data.params["seed"] == str(cfg.seed)

    assert sorted(int(r.data.params["selection.points_per_image"]) for r in children) == points
    trial_dirs = sorted((sweep_dir / "trials").iterdir())
    assert len(trial_dirs) == len(points)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["selection.rule"] == cfg.selection.rule
        history = client.get_metric_history(run.info.run_id, "target/miou")
        assert sorted(m.step for m in history) == list(range(rounds + 1))  # step = round, round 0 = source model
        assert all(0.0 <= m.value <= 1.0 for m in history)
        pixels = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "budget/labeled_pixels")}
        per_round = int(run.data.params["selection.points_per_image"]) * 8  # 8 images in the smoke pool
        assert pixels == {r: float(per_round * r) for r in range(rounds + 1)}

        # The trial's artifacts: its config, its label store (the very files on disk), its rounds.
        assert run.info.artifact_uri.startswith(str(sweep_dir.resolve() / ARTIFACTS_FOLDER))
        files = _artifact_files(client, run.info.run_id)
        assert files["config.json"] > 0 and files["rounds/round-001/iou.csv"] > 0
        (trial_dir,) = [d for d in trial_dirs if run.data.tags["activeda.trial_id"] in d.name]
        for store_file in sorted((trial_dir / "labels").glob("round-*.parquet")):
            logged = client.download_artifacts(run.info.run_id, f"labels/{store_file.name}", str(cwd))
            assert Path(logged).read_bytes() == store_file.read_bytes()
        assert f"labels/round-{rounds:04d}.parquet" in files

    report = _artifact_files(client, parent.info.run_id)
    for name in ("report.html", "summary.csv", "summary.parquet", "budget_curve.html"):
        assert report[f"report/{name}"] > 0, name


@pytest.mark.database
def test_smoke_sweep_tracks_to_postgresql(postgres_server, tmp_path, smoke_output):
    check_tracking_uri(postgres_server)  # the preflight's check passes on the running server
    _check_smoke_sweep(postgres_server, tmp_path, smoke_output)


@pytest.mark.database
def test_smoke_sweep_tracks_to_mariadb(mariadb_server, tmp_path, smoke_output):
    check_tracking_uri(mariadb_server)
    _check_smoke_sweep(mariadb_server, tmp_path, smoke_output)


@pytest.mark.database
def test_postgresql_uri_forms_and_a_wrong_password(postgres_server):
    """``postgresql://`` takes SQLAlchemy's default driver (psycopg 3 from SQLAlchemy 2.1 on, else psycopg2):
    it connects when that driver is the installed one, and otherwise names the URI form that works."""
    from sqlalchemy.engine import make_url

    plain = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    if make_url(plain).get_dialect().driver == "psycopg":
        check_tracking_uri(plain)
    else:
        with pytest.raises(TrackingError, match=r"write the URI as postgresql\+psycopg://"):
            check_tracking_uri(plain)
    wrong = postgres_server.replace(URI_PASSWORD, "wrong")
    with pytest.raises(TrackingError, match=r"mlflow:\*\*\*@127\.0\.0\.1:\d+/mlflow' cannot be reached: .*password"):
        check_tracking_uri(wrong, timeout_s=5)


# --- where artifacts go (no server needed) -----------------------------------------------------


def test_a_database_store_keeps_artifacts_in_the_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep_dir = Path("runs") / "mine"  # relative, as output_dir usually is
    expected = str(tmp_path / "runs" / "mine" / ARTIFACTS_FOLDER)
    for uri in ("sqlite:///x.db", "postgresql+psycopg://u@h/db", "mysql+pymysql://u@h/db", "mssql+pyodbc://u@h/db"):
        assert artifact_location(uri, sweep_dir) == expected, uri
    for uri in ("http://127.0.0.1:5000", "file:///tmp/mlruns", str(tmp_path / "mlruns"), "databricks"):
        assert artifact_location(uri, sweep_dir) is None, uri  # the server or the file store decides

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = SweepTracking(store, "mine", sweep_dir)
    client = MlflowClient(tracking_uri=store)
    assert client.get_experiment(tracking.experiment_id).artifact_location == expected
    run = client.create_run(tracking.experiment_id)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert (Path(expected) / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert not (tmp_path / "mlruns").exists()

    # An experiment that exists keeps its location, wherever the next sweep of that name runs.
    elsewhere = SweepTracking(store, "mine", tmp_path / "other" / "mine")
    assert elsewhere.experiment_id == tracking.experiment_id
    assert client.get_experiment(elsewhere.experiment_id).artifact_location == expected


def test_a_uri_whose_default_driver_is_missing_names_the_installed_one():
    """``mysql://`` means SQLAlchemy's default MySQL driver (mysqlclient); the dev install brings pymysql."""
    from importlib.util import find_spec

    port = free_port()  # nothing listens there
    if find_spec("MySQLdb") is None:
        expected = (
            rf"MLflow store 'mysql://me:\*\*\*@127.0.0.1:{port}/mlflow' needs the Python driver 'MySQLdb', which "
            r"is not installed \(pip install mysqlclient\); 'pymysql' is installed: write the URI as mysql\+pymysql://"
        )
    else:
        expected = "cannot be reached"
    with pytest.raises(TrackingError, match=expected):
        check_tracking_uri(f"mysql://me:s3cret@127.0.0.1:{port}/mlflow", timeout_s=2)
