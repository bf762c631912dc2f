"""MLflow tracking: one experiment per sweep, a parent run per sweep, a child run per trial.

Only the sweep driver talks to MLflow: trials report to Tune, and ``MlflowTrialLogger`` (a Tune
callback, which runs in the driver) turns each report into MLflow metrics with ``step=round``.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainers.files import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"

# Result keys that become MLflow metrics (everything else Tune adds is bookkeeping).
METRIC_PREFIXES = ("target/", "budget/", "time/", "train/loss/")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the reason."""


def resolve_tracking_uri(cli_uri: str | None, config_uri: str) -> str:
    """--tracking-uri, else tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db (made absolute)."""
    uri = cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative sqlite paths are resolved now, so every process uses the same file.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached or written."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :])
        if not path.parent.is_dir():
            raise TrackingError(f"MLflow store '{uri}': folder '{path.parent}' does not exist")
        if not os.access(path.parent, os.W_OK):
            raise TrackingError(f"MLflow store '{uri}': folder '{path.parent}' is not writable")
        return
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow server '{uri}' answered HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"MLflow server '{uri}' cannot be reached: {reason}") from None
        return
    if scheme in ("", "file"):
        return
    store_scheme = mlflow_store_scheme(uri)
    if store_scheme in DATABASE_SCHEMES:
        check_database_store(uri, timeout_s)
        return
    accepted = mlflow_tracking_schemes()
    if store_scheme not in accepted:
        raise TrackingError(
            f"MLflow tracking URI '{display_uri(uri)}': MLflow has no tracking store for scheme "
            f"'{scheme}'; it accepts: {', '.join(s + ':' for s in sorted(accepted) if s)} "
            f"(and plain paths)"
        )


# SQLAlchemy stores MLflow runs on besides sqlite (mlflow.store.db.db_types.DATABASE_ENGINES), with the
# package that brings each one's default driver.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# The pip package of each driver module SQLAlchemy may ask for.
DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
# Per database, the SQLAlchemy driver names of the pure-Python or binary-wheel drivers (the module
# each imports): a URI without a driver gets SQLAlchemy's default driver, which may not be installed.
OTHER_DRIVERS = {
    "postgresql": {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000"},
    "mysql": {"pymysql": "pymysql", "mysqldb": "MySQLdb", "mysqlconnector": "mysql.connector"},
    "mssql": {"pyodbc": "pyodbc", "pymssql": "pymssql"},
}
# Schemes MLflow registers for the model registry only; as a tracking URI MLflow refuses them.
_REGISTRY_ONLY_SCHEMES = {"databricks-uc", "uc"}


def mlflow_store_scheme(uri: str) -> str:
    """The store scheme MLflow reads from ``uri`` (``mysql+pymysql://`` -> ``mysql``)."""
    from mlflow.utils.uri import get_uri_scheme

    try:
        return get_uri_scheme(uri)
    except Exception as err:  # MLflow refuses a malformed database URI, e.g. two '+' in its scheme
        raise TrackingError(f"MLflow tracking URI '{display_uri(uri)}': {str(err).splitlines()[0]}") from None


def mlflow_tracking_schemes() -> set[str]:
    """Every scheme the installed MLflow has a tracking store for (plugins included)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return set(_tracking_store_registry._registry) - _REGISTRY_ONLY_SCHEMES


def display_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***``: safe for messages, logs and tags."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def installed_driver_hint(url, missing: str) -> str:
    """'; ... installed: write postgresql+psycopg://' when another driver of the database is installed."""
    backend = url.get_backend_name()
    for driver, module in OTHER_DRIVERS.get(backend, {}).items():
        if module == missing:
            continue
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return f"; '{module}' is installed: write the URI as {backend}+{driver}://..."
    return ""


def check_database_store(uri: str, timeout_s: float = 10.0) -> None:
    """A PostgreSQL, MySQL or SQL Server store: its Python driver is installed and a connection opens."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    shown = display_uri(uri)
    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise TrackingError(f"MLflow store '{shown}' is not a database URL SQLAlchemy knows: {err}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = err.name or url.drivername
        raise TrackingError(
            f"MLflow store '{shown}' needs the Python driver '{module}', which is not installed "
            f"(pip install {DRIVER_PACKAGES.get(module, module)}){installed_driver_hint(url, module)}"
        ) from None
    # Both psycopg2 and the MySQL drivers take connect_timeout (seconds); others use their defaults.
    connect_args = (
        {"connect_timeout": max(1, int(timeout_s))} if url.get_backend_name() in ("postgresql", "mysql") else {}
    )
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise TrackingError(
            f"MLflow store '{shown}' cannot be reached: {reason[0] if reason else type(err).__name__}"
        ) from None
    finally:
        engine.dispose()


def provenance_tags() -> dict[str, str]:
    """Where a run comes from: the code's git commit (MLflow's own tag name; ``activeda.git_dirty`` when
    the working tree had uncommitted changes), the user who started it, and the activeda version.

    Computed in the driver when a sweep starts; a checkout without git (an installed package) gets
    the version only.
    """
    tags = {}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        tags["mlflow.user"] = str(os.getuid())
    try:
        tags["activeda.version"] = metadata.version("activeda")
    except metadata.PackageNotFoundError:
        pass
    code_root = Path(__file__).resolve().parents[1]
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(code_root), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        tags["mlflow.source.git.commit"] = git("rev-parse", "HEAD")
        tags["activeda.git_dirty"] = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        pass
    return tags


CHECKPOINT_TAG = "activeda.checkpoint"


def final_checkpoint(trial_dir: Path) -> str | None:
    """The model checkpoint of a trial's last finished round, from its progress record (None if none)."""
    record = Path(trial_dir) / "progress.json"
    try:
        return json.loads(record.read_text())["progress"]["model_checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finite_metrics(metrics: Mapping[str, Any], context: str) -> dict[str, float]:
    """Numeric metrics only; NaN and infinities are dropped with one warning naming them."""
    out, dropped = {}, []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
        else:
            dropped.append(key)
    if dropped:
        log.warning("%s: not logging non-finite metrics %s", context, ", ".join(sorted(dropped)))
    return out


ARTIFACTS_FOLDER = "mlflow-artifacts"  # in the sweep folder: the artifacts of a database store's runs


def artifact_location(uri: str, sweep_dir: str | Path) -> str | None:
    """Where a new experiment of a database store (sqlite, PostgreSQL, MySQL, SQL Server) keeps its
    runs' artifacts: ``<sweep folder>/mlflow-artifacts``, an absolute path. None for other stores,
    which decide themselves (an ``mlflow server`` its ``--artifacts-destination``, a file store its
    own folder).

    MLflow's own default for a database store is ``./mlruns`` relative to whichever directory the
    experiment happened to be created from; the sweep folder is where the sweep's other results are.
    """
    try:
        scheme = mlflow_store_scheme(uri)
    except TrackingError:
        return None
    if scheme not in ("sqlite", *DATABASE_SCHEMES):
        return None
    return str(Path(sweep_dir).resolve() / ARTIFACTS_FOLDER)


class SweepTracking:
    """The MLflow side of one sweep: its experiment and parent run.

    ``sweep_dir`` (the sweep's folder) gives a database store's new experiment its artifact location
    (``artifact_location``); an experiment that exists keeps the location it was created with.
    """

    def __init__(self, uri: str, experiment_name: str, sweep_dir: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment_name = uri, experiment_name
        self.client = MlflowClient(tracking_uri=uri)
        self.parent_run_id: str | None = None
        self.artifact_location = artifact_location(uri, sweep_dir) if sweep_dir is not None else None

    @functools.cached_property
    def experiment_id(self) -> str:
        """Looked up (or created) on first use, so that a driver that only ends runs never needs it."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"activeda.kind": "sweep", **tags})
        self.parent_run_id = run.info.run_id
        log_params(self.client, self.parent_run_id, params)
        return self.parent_run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int, context: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in finite_metrics(metrics, context).items()]
        for start in range(0, len(batch), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=batch[start : start + 900])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def finish_sweep(self, parent_run_id: str, status: str, report_dir: Path | None, unsent_path: str) -> None:
        """Log the sweep's report and close its run; if MLflow is away, keep both for ``replay``."""
        try:
            if report_dir is not None:
                self.client.log_artifacts(parent_run_id, str(report_dir), artifact_path="report")
            self.end(parent_run_id, status)
        except Exception as err:  # the results are on disk; say where instead of failing the sweep
            append_unsent(
                unsent_path,
                [
                    {
                        "id": new_record_id(),
                        "action": "sweep-end",
                        "experiment": self.experiment_name,
                        "parent_run_id": parent_run_id,
                        "status": status,
                        "report": str(report_dir) if report_dir is not None else None,
                    }
                ],
            )
            log.warning(
                "could not finish the sweep's MLflow run (%s); the report is in %s; to log it later: %s",
                type(err).__name__,
                report_dir,
                replay_hint(unsent_path, self.uri),
            )


def replay_hint(unsent_path: str, uri: str) -> str:
    return f"python -m orchestrator.tracking replay {unsent_path} --tracking-uri {display_uri(uri)}"


def append_unsent(path: str, records: list[dict]) -> None:
    """Append records (one JSON object a line) to a sweep's unsent file; appended whole, then synced."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r, default=str) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())


def new_record_id() -> str:
    return uuid.uuid4().hex[:16]


def read_outbox(path: str | Path, repair: bool = False) -> list[dict]:
    """The operations of an outbox file still to send, in order: records whose ``{"sent": id}`` line
    follows are left out; any line that is not a record is a ``TrackingError``.

    A last line without its newline that is not a whole record is a write the driver died in (the
    operation never counted as queued): it is ignored, and with ``repair`` cut off the file, so that
    the next record is not appended to it.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines[-1].strip():
        try:
            complete = isinstance(json.loads(lines[-1].decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if not complete:
            log.warning("'%s': ignoring its last line, cut off by a crash while it was written", path)
            if repair:
                os.truncate(path, len(data) - len(lines[-1]))
            lines[-1] = b""
    records, sent = [], set()
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TrackingError(
                f"'{path}' line {number} is not an activeda unsent-metrics record (not UTF-8 text)"
            ) from None
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = {}
        if record is None:
            continue
        if isinstance(record, dict) and set(record) == {"sent"}:
            sent.add(record["sent"])
            continue
        # Records written before they named their sweep cannot be sent to the right runs.
        if not (
            isinstance(record, dict)
            and record.get("action") in UNSENT_ACTIONS
            and record.get("experiment")
            and record.get("parent_run_id")
        ):
            raise TrackingError(f"'{path}' line {number} is not an activeda unsent-metrics record")
        # Folders whose files get uploaded: only the sweep's own (the file lives in the sweep folder).
        for key in ("trial_dir", "report"):
            if record.get(key) and not Path(record[key]).resolve().is_relative_to(path.parent.resolve()):
                raise TrackingError(
                    f"'{path}' line {number}: '{key}' {record[key]!r} is outside the sweep folder '{path.parent}'"
                )
        records.append(record)
    return [r for r in records if r.get("id") is None or r["id"] not in sent]


def rewrite_outbox(path: str | Path, records: list[dict]) -> None:
    """Replace an outbox file by ``records`` (atomically), or remove it when there are none."""
    path = Path(path)
    if not records:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in records), fsync=True)


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())]
    for start in range(0, len(items), 90):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[start : start + 90])


def log_trial_artifacts(client, run_id: str, trial_dir: Path) -> None:
    """The resolved config, the label store, per-round overlays and IoU tables of one trial."""
    try:
        if (trial_dir / "config.json").is_file():
            client.log_artifact(run_id, str(trial_dir / "config.json"))
        for name, path in (("labels", trial_dir / "labels"), ("rounds", trial_dir / "artifacts")):
            if path.is_dir() and any(path.iterdir()):
                client.log_artifacts(run_id, str(path), artifact_path=name)
    except Exception as err:  # artifacts must never fail a finished trial; say so instead
        log.warning("could not log the artifacts of %s to MLflow: %s", trial_dir.name, err)


def log_round_images(client, run_id: str, trial_dir: Path, round_index: int) -> int:
    """The round's selection overlays as MLflow images at ``step=round`` (MLflow's per-step image view,
    key ``selection/image<id>``); returns how many. Never fails a trial: a problem is one warning."""
    folder = trial_dir / "artifacts" / f"round-{round_index:03d}"
    logged = 0
    try:
        from PIL import Image

        for path in sorted(folder.glob("selected-image*.png")):
            with Image.open(path) as image:
                client.log_image(
                    run_id, image.convert("RGB"), key=f"selection/{path.stem[len('selected-') :]}", step=round_index
                )
            logged += 1
    except Exception as err:  # the overlays stay on disk and among the run's artifacts
        log.warning("could not log the selection images of %s round %d to MLflow: %s", trial_dir.name, round_index, err)
    return logged


UNSENT_ACTIONS = ("create", "metrics", "end", "sweep-end")
UNSENT_FILE = "mlflow-unsent.jsonl"  # in the sweep folder: the durable outbox of the sweep's driver
