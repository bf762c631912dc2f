"""MLflow tracking: one experiment per sweep, a parent run per sweep, a child run per trial.

Only the sweep driver talks to MLflow: trials report to Tune, and ``MlflowTrialLogger`` (a Tune
callback, which runs in the driver) turns each report into MLflow metrics with ``step=round``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.tune import Callback

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
        import urllib.error
        import urllib.request

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
    from importlib.util import find_spec

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
    import getpass
    import subprocess
    from importlib import metadata

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


class MlflowTrialLogger(Callback):
    """Tune callback (runs in the driver): a child MLflow run per trial, metrics at ``step=round``.

    ``trial_params(trial_config) -> (params, tags)`` turns a trial's sampled config into the
    flattened parameters and the grouping tags to record.

    If the tracking server goes away, training goes on: every MLflow operation waits in an outbox,
    in order, and is retried at the next event; a warning says how much is waiting.

    With ``unsent_path`` the outbox is durable: each operation is appended to that file (JSON lines,
    each naming its experiment, parent run and trial folder) and synced *before* it counts as queued,
    and a ``{"sent": id}`` line follows once MLflow has it; the file is removed whenever everything in
    it is sent. So a driver killed during an outage loses nothing: the next logger of the same sweep
    (``--resume``) sends what the file still holds first, and ``python -m orchestrator.tracking
    replay`` sends it when the sweep is not resumed. An operation that was sent but whose ``sent``
    line the kill prevented is sent again, and sending is idempotent (a trial's existing run is
    continued, a round already logged is skipped): every metric arrives once.
    """

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        parent_run_id: str,
        trial_params,
        trial_dir=None,
        unsent_path: str | None = None,
    ):
        self.uri, self.experiment_name, self.parent_run_id = uri, experiment_name, parent_run_id
        self.trial_params = trial_params
        self.trial_dir = trial_dir  # trial_id -> folder whose files become the run's artifacts
        self.unsent_path = unsent_path
        self._tracking: SweepTracking | None = None
        self._runs: dict[str, str] = {}
        self._outbox: list[dict] = []  # records, as in the file
        self._failing = False
        self._loaded = False  # whether the file's records of an earlier driver are in the outbox yet
        self._disk_warned = False

    @property
    def tracking(self) -> SweepTracking:
        if self._tracking is None:
            self._tracking = SweepTracking(self.uri, self.experiment_name)
        return self._tracking

    def __getstate__(self):  # the MLflow client is not picklable; rebuild it after a restore
        state = dict(self.__dict__)
        state["_tracking"] = None
        if self.unsent_path:  # the file holds the outbox; a restored logger reads it from there
            state.update(_outbox=[], _loaded=False)
        return state

    def __setstate__(self, state):  # a logger pickled by an older version lacks the newer fields
        self.__dict__.update(
            {
                "_outbox": [],
                "_failing": False,
                "unsent_path": None,
                "trial_dir": None,
                "_loaded": False,
                "_disk_warned": False,
                **state,
                "_tracking": None,
            }
        )
        self._outbox = [r if isinstance(r, dict) else self._record(r) for r in self._outbox]

    # -- events -------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._load_pending()
        if trial.trial_id in self._runs or any(
            r["action"] == "create" and r.get("trial_id") == trial.trial_id for r in self._outbox
        ):
            return
        params, tags = self.trial_params(trial.config)
        self._send(("create", trial.trial_id, str(trial), params, tags))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES)}
        self._send(("metrics", trial.trial_id, str(trial), metrics, int(result.get("round", 0))))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._send(("end", trial.trial_id, str(trial), "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._send(("end", trial.trial_id, str(trial), "FAILED"))

    def on_experiment_end(self, trials, **info):
        self._flush()
        if self._outbox and self.unsent_path:
            log.warning(
                "MLflow at %s stayed unreachable: %d operations written to %s; to send them later: %s",
                display_uri(self.uri),
                len(self._outbox),
                self.unsent_path,
                replay_hint(self.unsent_path, self.uri),
            )
            self._outbox = []  # they are in the file: whoever sends them next reads them from there

    # -- the outbox ---------------------------------------------------------------------------
    def _record(self, action: tuple) -> dict:
        return {
            "id": new_record_id(),
            "action": action[0],
            "trial_id": action[1],
            "trial": action[2],
            "data": list(action[3:]),
            "experiment": self.experiment_name,
            "parent_run_id": self.parent_run_id,
            "trial_dir": str(self.trial_dir(action[1])) if self.trial_dir is not None else None,
        }

    def _load_pending(self) -> None:
        """Once: put what an earlier driver of this sweep left unsent in the file ahead of the outbox."""
        if self._loaded:
            return
        self._loaded = True
        if self.unsent_path and Path(self.unsent_path).is_file():
            earlier = [
                r
                for r in read_outbox(self.unsent_path, repair=True)
                if r["parent_run_id"] == self.parent_run_id and r["experiment"] == self.experiment_name
            ]
            if earlier:
                log.warning(
                    "sending %d MLflow operation(s) an earlier driver of this sweep left in %s",
                    len(earlier),
                    self.unsent_path,
                )
            self._outbox = earlier + self._outbox

    def _send(self, action: tuple) -> None:
        self._load_pending()
        record = self._record(action)
        self._write(lambda: append_unsent(self.unsent_path, [record]))  # on disk before it counts as queued
        self._outbox.append(record)
        self._flush()

    def _write(self, write) -> None:
        """Write to the outbox file; on a full or unwritable disk the outbox keeps working in memory
        (said once): tracking must not be what stops a sweep whose trials report the disk problem."""
        if not self.unsent_path:
            return
        try:
            write()
        except OSError as err:
            if not self._disk_warned:
                log.warning(
                    "cannot write the MLflow outbox %s (%s); keeping what waits in memory only",
                    self.unsent_path,
                    err.strerror or err,
                )
                self._disk_warned = True

    def _flush(self) -> None:
        self._load_pending()
        sent_any = False
        while self._outbox:
            record = self._outbox[0]
            try:
                self._perform_record(record)
            except Exception as err:  # a tracking outage must not stop the sweep
                if not self._failing:
                    log.warning(
                        "MLflow at %s is unreachable (%s); buffering, training goes on",
                        display_uri(self.uri),
                        type(err).__name__,
                    )
                self._failing = True
                self._tracking = None  # reconnect next time
                return
            self._outbox.pop(0)
            sent_any = True
            self._write(lambda: append_unsent(self.unsent_path, [{"sent": record["id"]}]))
            if self._failing and not self._outbox:
                log.warning("MLflow at %s is back; everything buffered has been logged", display_uri(self.uri))
                self._failing = False
        if sent_any and self.unsent_path and Path(self.unsent_path).is_file():
            # Everything of this logger is sent: keep only what is not (another sweep's leftovers).
            self._write(
                lambda: rewrite_outbox(
                    self.unsent_path,
                    [r for r in read_outbox(self.unsent_path) if r["parent_run_id"] != self.parent_run_id],
                )
            )

    def _perform_record(self, record: dict) -> None:
        if record["action"] == "sweep-end":
            report = record.get("report")
            if report and Path(report).is_dir():
                self.tracking.client.log_artifacts(record["parent_run_id"], report, artifact_path="report")
            self.tracking.end(record["parent_run_id"], record["status"])
        else:
            self._perform((record["action"], record["trial_id"], record["trial"], *record["data"]))

    def _existing_run(self, trial_id: str):
        """The trial's run under this sweep's parent, if MLflow has one already (else None)."""
        existing = self.tracking.client.search_runs(
            [self.tracking.experiment_id],
            f"tags.`activeda.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
        )
        if not existing:
            return None
        self._runs[trial_id] = existing[0].info.run_id
        return existing[0]

    def _perform(self, action: tuple) -> None:
        kind, trial_id = action[0], action[1]
        if kind == "create":
            _, _, name, params, tags = action
            client = self.tracking.client
            # A resumed sweep restarts its unfinished trials: they continue their own runs.
            existing = self._existing_run(trial_id)
            if existing is not None:
                client.update_run(existing.info.run_id, status="RUNNING")
                if not existing.data.params:  # the run was created, then MLflow went away before its params
                    log_params(client, existing.info.run_id, params)
                return
            run = client.create_run(
                self.tracking.experiment_id,
                run_name=name,
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "activeda.kind": "trial",
                    "activeda.trial_id": trial_id,
                    **tags,
                },
            )
            self._runs[trial_id] = run.info.run_id
            log_params(client, run.info.run_id, params)
        elif trial_id not in self._runs and self._existing_run(trial_id) is None:
            return  # the trial's run was never created (its start came before this logger existed)
        elif kind == "metrics":
            _, _, name, metrics, step = action
            run_id = self._runs[trial_id]
            # Idempotent: a round replayed after a resume (or a retried send) is not logged twice.
            # Any key of the batch tells, not target/miou alone: a NaN mIoU is dropped, the rest is logged.
            # The first key already logged at this step decides: the same value means this batch was
            # sent before; another value means the round was done again differently (a PBT clone
            # continuing another trial's model), and its new values are logged too.
            client = self.tracking.client
            keys = sorted(metrics, key=lambda key: key != "target/miou")  # the usual answer first
            for key in keys:
                logged = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
                if logged:
                    if isinstance(metrics[key], (int, float)) and float(metrics[key]) in logged:
                        return
                    break
            self.tracking.log_metrics(run_id, metrics, step=step, context=name)
            folder = self.trial_dir(trial_id) if self.trial_dir is not None else None
            if folder is not None:  # a replayed record may name no folder
                log_round_images(self.tracking.client, run_id, Path(folder), step)
        elif kind == "end":
            run_id = self._runs[trial_id]
            folder = self.trial_dir(trial_id) if self.trial_dir is not None else None
            if folder is not None:
                log_trial_artifacts(self.tracking.client, run_id, Path(folder))
                checkpoint = final_checkpoint(Path(folder))
                if checkpoint:
                    self.tracking.client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
            self.tracking.end(run_id, action[3])


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


def replay_unsent(path: str | Path, uri: str) -> tuple[int, int]:
    """Send what an outage left in a sweep's unsent file, in order; returns (sent, still unsent).

    Sending is idempotent (a trial's existing run is continued, a round already logged is skipped),
    so a replay that is interrupted, or run twice, logs nothing twice. What could not be sent stays in
    the file; the file is removed once everything is in MLflow. A sweep that is running on the same
    folder holds its lock, and the replay is refused then (the sweep sends its own outbox).
    """
    from orchestrator.cluster.folder_lock import SweepFolderLock

    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"unsent-metrics file '{path}' does not exist")
    records = read_outbox(path)
    check_tracking_uri(uri)
    lock = SweepFolderLock.acquire(path.parent) if path.name == UNSENT_FILE else None
    try:
        folders = {r["trial_id"]: r.get("trial_dir") for r in records if "trial_id" in r}
        loggers: dict[tuple[str, str], MlflowTrialLogger] = {}
        sent = 0
        for record in records:
            key = (record["experiment"], record["parent_run_id"])
            logger = loggers.setdefault(key, MlflowTrialLogger(uri, *key, trial_params=None, trial_dir=folders.get))
            try:
                logger._perform_record(record)
            except Exception as err:  # stop at the first failure: what follows may depend on it
                log.warning(
                    "MLflow at %s failed on record %d of '%s' (%s: %s)", uri, sent + 1, path, type(err).__name__, err
                )
                break
            sent += 1
        rewrite_outbox(path, records[sent:])
    finally:
        if lock is not None:
            lock.release()
    return sent, len(records) - sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.tracking",
        description="Send the MLflow operations a sweep could not send while the tracking server was away "
        "(runs/<sweep>/mlflow-unsent.jsonl) once it is back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="send an unsent-metrics file; removes it once everything is sent")
    replay.add_argument("file", help="the sweep's mlflow-unsent.jsonl")
    replay.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    uri = resolve_tracking_uri(args.tracking_uri, "")
    try:
        sent, left = replay_unsent(args.file, uri)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if left:
        print(f"sent {sent} MLflow operations to {uri}; {left} still unsent, kept in {args.file}", file=sys.stderr)
        return 1
    print(f"sent {sent} MLflow operations to {uri}; removed {args.file}")
    return 0
