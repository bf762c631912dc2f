"""The dashboard end to end: a real sweep's MLflow store served by ``orchestrator.dashboard`` and
looked at through the REST API and a headless Chromium (installed with
``scripts/install_browser_test_deps.sh`` when missing).

Tests marked ``browser`` need Chromium; they look at a copy of the store of the test session's
fault-free sweep (``fault_free_sweep``: smoke-size, 2 trials x 2 rounds), so they run no sweep of
their own. Screenshots are kept under ``test-artifacts/`` in the repo root.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import FAULT_FREE_TRIALS, ROOT, run_cli
from orchestrator.tracking.dashboard import (
    BUDGET_VIEW_KEY,
    DashboardError,
    ServerError,
    compare_runs_url,
    install_budget_view,
    start_dashboard,
    stop_dashboard,
    sweep_url,
)

ARTIFACTS = ROOT / "test-artifacts"
INSTALL_SCRIPT = ROOT / "scripts" / "install_browser_test_deps.sh"
WINDOW = (1400, 900)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{INSTALL_SCRIPT} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        path = "/usr/bin/chromium"
    assert os.access(path, os.X_OK), path
    return path


# The sweep the store holds: the fault-free sweep's name, and its trials' points per image.
SWEEP = "reference"
POINTS = [str(points) for points in range(2, 2 + FAULT_FREE_TRIALS)]


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory, fault_free_sweep) -> str:
    """A store filled the way the sweep fills it: a copy of the test session's fault-free sweep's
    sqlite store (the tests write a view into it; the original stays as the sweep left it)."""
    store = tmp_path_factory.mktemp("dashboard-store") / "mlflow.db"
    shutil.copyfile(fault_free_sweep.store, store)
    assert fault_free_sweep.name == SWEEP
    return f"sqlite:///{store}"


@pytest.fixture
def dashboard(sweep_store, tmp_path):
    process, base_url = start_dashboard(sweep_store, timeout_s=180, log_path=tmp_path / "mlflow-server.log")
    try:
        yield base_url
    finally:
        stop_dashboard(process)
        assert process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # the whole server process group is gone


# ------------------------------------------------------------------------------------------ helpers


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _post(url: str, body: dict):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _run_chromium(chromium: str, profile: Path, args: list[str], timeout: float = 180) -> str:
    """Run one headless Chromium command in its own process group (killed whole on timeout)."""
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-2000:]
    return stdout


def _dump_dom(chromium: str, tmp_path: Path, url: str, expected: list[str], width: int = 2400, height: int = 0) -> str:
    """The rendered DOM of ``url``; retried once with a longer virtual-time budget if it lacks ``expected``.

    The runs table is an ag-grid that renders only the columns in view, so the DOM is taken from a wide
    window where every column of the view fits.
    """
    dom = ""
    for attempt, budget in enumerate((20000, 60000)):
        dom = _run_chromium(
            chromium,
            tmp_path / f"profile-dom-{attempt}-{time.monotonic_ns()}",
            [f"--window-size={width},{height or WINDOW[1]}", f"--virtual-time-budget={budget}", "--dump-dom", url],
        )
        if all(text in dom for text in expected):
            break
    return dom


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _screenshot(chromium: str, tmp_path: Path, url: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    _run_chromium(
        chromium,
        tmp_path / f"profile-shot-{name}",
        [f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=20000", f"--screenshot={path}", url],
    )
    assert _png_size(path) == WINDOW
    import matplotlib.image as mpimg

    pixels = mpimg.imread(path)[..., :3]
    assert pixels.std() > 0.05, "blank screenshot"
    assert len({tuple(p) for p in (pixels[::7, ::7] * 255).astype(int).reshape(-1, 3)}) > 20, "near-uniform screenshot"
    return path


def _sweep_runs(base_url: str, sweep: str):
    experiment = _get(f"{base_url}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={sweep}")["experiment"]
    runs = _post(
        f"{base_url}/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    )["runs"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        run["metrics"] = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        run["params"] = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    parents = [r for r in runs if r["tags"].get("activeda.kind") == "sweep"]
    children = [r for r in runs if r["tags"].get("activeda.kind") == "trial"]
    return experiment, parents, children


# -------------------------------------------------------------------------------------------- tests


def test_missing_store_unknown_sweep_and_bad_port_are_one_line_errors(tmp_path, capsys):
    result = run_cli(
        "orchestrator.dashboard", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "none.db" in lines[0], result.stderr
    assert not (tmp_path / "none.db").exists()

    # The rest in-process (the same main()), which saves a second interpreter start-up.
    from mlflow.tracking import MlflowClient

    from orchestrator.dashboard import main

    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").create_experiment("other")
    capsys.readouterr()  # MLflow's table-creation notices
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--sweep", "nope"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: sweep 'nope' is not in MLflow store 'sqlite:///{tmp_path}/m.db' (sweeps there: 'other')"]
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --port 70000: must be between 1 and 65535"]
    with pytest.raises(DashboardError, match="does not exist"):
        start_dashboard(f"sqlite:///{tmp_path}/none.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(DashboardError, match="already in use"):
            start_dashboard(f"sqlite:///{tmp_path}/m.db", port=busy.getsockname()[1])
    # A server that does not answer in time is reported and stopped (nothing serving that store is left).
    with pytest.raises(ServerError, match="did not answer within 0 s"):
        start_dashboard(f"sqlite:///{tmp_path}/m.db", timeout_s=0, log_path=tmp_path / "server.log")
    assert not _processes_mentioning(str(tmp_path / "m.db"))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.browser
def test_dashboard_shows_a_sweep_in_chromium(sweep_store, dashboard, chromium, tmp_path):
    started = time.perf_counter()
    base_url = dashboard
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)

    # REST: one parent run, two trial runs under it, each with a target mIoU.
    experiment, parents, children = _sweep_runs(base_url, SWEEP)
    assert len(parents) == 1 and len(children) == 2
    assert {c["tags"]["mlflow.parentRunId"] for c in children} == {parents[0]["info"]["run_id"]}
    assert all("target/miou" in c["metrics"] for c in children)
    assert sorted(c["params"]["selection.points_per_image"] for c in children) == POINTS

    # The plain runs-table URL, and the budget view the dashboard prints by default.
    plain = sweep_url(base_url, sweep_store, SWEEP)
    assert plain == f"{base_url}/#/experiments/{experiment['experiment_id']}/runs"
    key = install_budget_view(sweep_store, SWEEP)
    assert key == BUDGET_VIEW_KEY
    url = sweep_url(base_url, sweep_store, SWEEP, view_key=key)
    assert url == f"{plain}?viewStateShareKey={key}"

    shot = _screenshot(chromium, tmp_path, url, "dashboard-runs.png")

    names = [c["info"]["run_name"] for c in children]
    trial_ids = [c["tags"]["activeda.trial_id"] for c in children]
    budgets = [c["tags"]["budget"] for c in children]
    mious = [repr(c["metrics"]["target/miou"]) for c in children]  # the table shows the full value
    expected = [
        *names,
        *trial_ids,
        *budgets,
        *mious,
        "target/miou",
        "budget/labeled_fraction",
        "selection.points_per_image",
    ]
    dom = _dump_dom(chromium, tmp_path, url, expected)
    (ARTIFACTS / "dashboard-runs.html").write_text(dom, encoding="utf-8")
    missing = [text for text in expected if text not in dom]
    assert not missing, f"runs view lacks {missing} (DOM kept in {ARTIFACTS / 'dashboard-runs.html'})"
    assert parents[0]["info"]["run_name"] not in dom  # trials only: the sweep's parent run is filtered out
    assert "2 matching runs" in re.sub(r"<[^>]+>", "", dom)

    # MLflow's own compare-runs page for the trials: names, the swept parameter and the mIoU metric.
    compare = compare_runs_url(base_url, sweep_store, SWEEP)
    assert compare.startswith(f"{base_url}/#/compare-runs?runs=")
    expected = [*names, "selection.points_per_image", "budget/clicks"]
    dom = _dump_dom(chromium, tmp_path, compare, expected, width=WINDOW[0], height=4000)
    (ARTIFACTS / "dashboard-compare.html").write_text(dom, encoding="utf-8")
    assert all(text in dom for text in expected), [t for t in expected if t not in dom]
    # The run-details metrics table is a virtualized grid (a 300-px window onto its rows): only the rows
    # in view are in the DOM, so target/miou (after the 13 target/iou/<class> rows) may not be. The grid's
    # inner height says how many rows it holds: one per metric the trials logged, target/miou included.
    metrics_section = dom[dom.index(">Metrics<") :]
    grid = re.search(r"ReactVirtualized__Grid__innerScrollContainer[^>]*?height: (\d+)px", metrics_section)
    row = re.search(r'style="height: (\d+)px; left: 0px; position: absolute; top: 0px', metrics_section)
    assert grid and row, "the compare page has no metrics grid"
    logged = set().union(*(c["metrics"] for c in children))
    assert "target/miou" in logged and int(grid.group(1)) // int(row.group(1)) == len(logged), (
        grid.group(1),
        len(logged),
    )
    _screenshot(chromium, tmp_path, compare, "dashboard-compare.png")
    print(f"\nbrowser checks took {time.perf_counter() - started:.0f} s; screenshot {shot}")


@pytest.mark.browser
def test_dashboard_cli_prints_urls_and_stops_its_server_on_ctrl_c(sweep_store, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}  # server log in tmp_path
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.dashboard", "--tracking-uri", sweep_store, "--sweep", SWEEP],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines, server_pid = [], None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            found = re.search(r"server pid (\d+)", line)
            server_pid = int(found.group(1)) if found else server_pid
            if "serving until Ctrl-C" in line:
                break
        output = "\n".join(lines)
        assert "serving until Ctrl-C" in output, (
            output + process.stderr.read() if process.poll() is not None else output
        )
        runs_url = re.search(r"runs table: (http://127\.0\.0\.1:(\d+)/#/experiments/\d+/runs\S*)", output)
        assert runs_url, output
        assert "compare trials: http://127.0.0.1:" in output
        base_url = f"http://127.0.0.1:{runs_url.group(2)}"
        with urllib.request.urlopen(base_url + "/health", timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(base_url + "/health", timeout=5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if server_pid is not None:  # the server leads its own group: never leave it behind
            try:
                os.killpg(server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            else:
                pytest.fail(f"the dashboard left its server (pid {server_pid}) running")
