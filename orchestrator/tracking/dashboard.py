"""The MLflow UI for the project's store (``python -m orchestrator.dashboard`` is its command): serve it for the project's store and print the sweep's views.

Starts ``mlflow server`` on the same store the sweep writes to (``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory), bound to 127.0.0.1
only, waits until it answers, prints the URL of each sweep's runs table and of MLflow's compare-runs
view of its latest trials, and serves until Ctrl-C (or SIGTERM), when the server's whole process
group is stopped.

The runs-table URL opens a saved *budget view* (trial runs only, best mIoU first, columns for mIoU,
labeled fraction, clicks, labeled pixels, the swept parameters and the budget/rule tags). It is
saved the way the MLflow UI's own "share view" does it: an experiment tag
``mlflow.sharedViewState.activeda-budgets`` (plain JSON; ``--no-view`` skips it). That tag is the only
write the dashboard makes to the store.

Bad input (no store file, unknown sweep, bad or busy port) is refused with one line and exit code 2
before any server starts; a server that exits or does not answer in time gives exit code 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

from orchestrator.cluster.ray_connection import free_port

EXIT_BAD_INPUT = 2
EXIT_SERVER_FAILED = 1
HOST = "127.0.0.1"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # where the MLflow 3.17 UI keeps shared runs-table views
BUDGET_VIEW_KEY = "activeda-budgets"
BUDGET_VIEW_METRICS = ("target/miou", "budget/labeled_fraction", "budget/clicks", "budget/labeled_pixels")
BUDGET_VIEW_TAGS = ("budget", "rule", "activeda.trial_id")
MAX_VIEW_PARAMS = 20  # swept parameters shown as columns (keeps the tag far below MLflow's 20000-character cap)


class DashboardError(RuntimeError):
    """The dashboard cannot start; the message is one line that says why."""


class ServerError(DashboardError):
    """The MLflow server exited or did not answer in time."""


def _port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def store_path(uri: str) -> Path | None:
    """The local file or folder behind a sqlite:/// or file: URI (None for a server URI)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(uri[len("sqlite:///") :])
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "":
        return Path(uri)
    return None


def check_store(uri: str) -> None:
    """Refuse a store that does not exist: the dashboard never creates an empty one."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        raise DashboardError(
            f"'{uri}' is already an MLflow server: open it in a browser "
            f"(the dashboard serves sqlite:/// and file: stores)"
        )
    path = store_path(uri)
    if path is None:
        raise DashboardError(f"MLflow tracking URI '{uri}': unsupported scheme '{scheme}' (use sqlite:/// or file:)")
    if not path.exists():
        raise DashboardError(f"MLflow store '{uri}' does not exist: run a sweep first or pass --tracking-uri")


def _experiment(uri: str, sweep_name: str):
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(sweep_name)
        names = (
            [] if experiment is not None else sorted(e.name for e in client.search_experiments() if e.name != "Default")
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DashboardError(f"MLflow store '{uri}' cannot be read: {first}") from None
    if experiment is None:
        known = ", ".join(f"'{n}'" for n in names) if names else "none"
        raise DashboardError(f"sweep '{sweep_name}' is not in MLflow store '{uri}' (sweeps there: {known})")
    return client, experiment


def sweep_names(uri: str) -> list[str]:
    """Names of the store's experiments (one per sweep), without MLflow's 'Default'."""
    from mlflow.tracking import MlflowClient

    try:
        return sorted(e.name for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name != "Default")
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DashboardError(f"MLflow store '{uri}' cannot be read: {first}") from None


def _trial_runs(client, experiment_id: str, latest_only: bool):
    runs = client.search_runs([experiment_id], max_results=5000)
    parents = sorted(
        (r for r in runs if r.data.tags.get("activeda.kind") == "sweep"), key=lambda r: r.info.start_time or 0
    )
    children = [r for r in runs if r.data.tags.get("activeda.kind") == "trial"]
    if latest_only and parents:
        latest = parents[-1].info.run_id
        children = [r for r in children if r.data.tags.get("mlflow.parentRunId") == latest]
    return children


def install_budget_view(uri: str, sweep_name: str, key: str = BUDGET_VIEW_KEY) -> str:
    """Save the sweep's budget-comparison view of the runs table in the store; returns its share key.

    The view is what the MLflow UI's own "share view" saves (an experiment tag
    ``mlflow.sharedViewState.<key>``, plain JSON): trial runs only, flat (not folded under their
    sweep), best target mIoU first, with the columns that compare budgets: ``target/miou``,
    ``budget/labeled_fraction``, ``budget/clicks``, ``budget/labeled_pixels``, every parameter that
    differs between the trials (at most ``MAX_VIEW_PARAMS``), and the ``budget``, ``rule`` and
    ``activeda.trial_id`` tags. Rewritten on each call
    (idempotent); open it with ``sweep_url(..., view_key=key)``.
    """
    client, experiment = _experiment(uri, sweep_name)
    children = _trial_runs(client, experiment.experiment_id, latest_only=False)
    keys = sorted({k for r in children for k in r.data.params})
    swept = [k for k in keys if len({r.data.params.get(k) for r in children}) > 1][:MAX_VIEW_PARAMS]
    columns = (
        [f"metrics.`{m}`" for m in BUDGET_VIEW_METRICS]
        + [f"params.`{k}`" for k in swept]
        + [f"tags.`{t}`" for t in BUDGET_VIEW_TAGS]
    )
    state = {
        "searchFilter": "tags.`activeda.kind` = 'trial'",
        "orderByKey": "metrics.`target/miou`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": columns,
    }
    try:
        client.set_experiment_tag(
            experiment.experiment_id, f"{SHARED_VIEW_TAG}{key}", json.dumps(state, separators=(",", ":"))
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DashboardError(f"cannot save the budget view in MLflow store '{uri}': {first}") from None
    return key


def sweep_url(base_url: str, uri: str, sweep_name: str, view_key: str | None = None) -> str:
    """URL of the runs table of the sweep's experiment: ``<base>/#/experiments/<id>/runs``.

    With ``view_key`` (from ``install_budget_view``) the table opens in that saved view
    (``...runs?viewStateShareKey=<key>``). Raises DashboardError when the store has no experiment
    named ``sweep_name``.
    """
    _, experiment = _experiment(uri, sweep_name)
    url = f"{base_url.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs"
    return f"{url}?viewStateShareKey={quote(view_key)}" if view_key else url


def compare_runs_url(base_url: str, uri: str, sweep_name: str) -> str | None:
    """URL of MLflow's compare-runs view of the trials (child runs) of the sweep's latest parent run.

    The same form the MLflow 3.17 UI builds itself (``#/compare-runs?runs=[...]&experiments=[...]``,
    JSON lists). None when the sweep has no trial runs yet.
    """
    client, experiment = _experiment(uri, sweep_name)
    children = _trial_runs(client, experiment.experiment_id, latest_only=True)
    if not children:
        return None
    run_ids = sorted(r.info.run_id for r in children)
    query = (
        f"runs={quote(json.dumps(run_ids, separators=(',', ':')))}"
        f"&experiments={quote(json.dumps([experiment.experiment_id]))}"
    )
    return f"{base_url.rstrip('/')}/#/compare-runs?{query}"


def _answers(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def start_dashboard(
    uri: str,
    port: int | None = None,
    timeout_s: float = 120,
    workers: int = 1,
    log_path: str | os.PathLike | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on ``uri`` bound to 127.0.0.1 and wait until it answers on /health.

    Returns ``(process, base_url)`` with ``base_url`` like ``http://127.0.0.1:PORT``; the process leads
    its own process group: stop it with ``stop_dashboard(process)``. ``port=None`` picks a free port.
    Raises DashboardError when the store does not exist or the port is taken, ServerError (a
    DashboardError) when the server exits or does not answer within ``timeout_s`` (it is stopped
    then). Server output goes to ``log_path`` (default: a temporary file), kept as ``process.log_path``.
    MLflow's GenAI job runner (huey consumers) is turned off unless $MLFLOW_SERVER_ENABLE_JOB_EXECUTION
    says otherwise: the runs UI does not need it, and it is seven more processes on a small machine.
    """
    check_store(uri)
    if port is None:
        port = free_port()
    elif not 0 < port < 65536:
        raise DashboardError(f"port {port}: must be between 1 and 65535")
    elif _port_in_use(port):
        raise DashboardError(f"port {port} on {HOST} is already in use: pick another with --port")
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="activeda-mlflow-server-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    base_url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(
                    f"mlflow server exited with code {process.returncode} before answering "
                    f"(log {log_path}: {_tail(log_path)})"
                )
            if _answers(base_url):
                return process, base_url
            if time.monotonic() > deadline:
                raise ServerError(
                    f"mlflow server on {base_url} did not answer within {timeout_s:.0f} s "
                    f"(log {log_path}: {_tail(log_path)})"
                )
            time.sleep(0.5)
    except BaseException:
        stop_dashboard(process)
        raise


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_dashboard(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``timeout_s``. Idempotent.

    Only a group that ``process`` leads (``start_dashboard`` makes one) is signalled.
    """
    pgid = process.pid
    try:
        leads_group = os.getpgid(process.pid) == pgid
    except ProcessLookupError:  # leader already reaped: its group may still hold workers
        leads_group = True
    if not leads_group:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader as soon as it exits
            if process.returncode is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
