"""The sweep report in a real browser: headless Chromium (installed by
scripts/install_browser_test_deps.sh when missing) opens report.html and budget_curve.html from a
file with every network request refused, and the plotly figures (curves, Pareto front, reference
levels, selector toggles) and the tables render. The screenshot is kept under test-artifacts/ in
the repo root."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from test_report import _rows as trial_rows
from test_report_methods import sweep_rows

from conftest import ROOT
from orchestrator.tracking.report import budget_curve, report_page

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Offline: no name resolves and every http(s) request goes to a closed port, so a page that
    # needed a CDN would render nothing.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
]


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        script = ROOT / "scripts" / "install_browser_test_deps.sh"
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        path = "/usr/bin/chromium"
    return path


def _run(chromium: str, profile, args: list[str]) -> str:
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-2000:]
    return stdout


@pytest.mark.browser
def test_report_page_renders_curves_pareto_front_and_class_table_offline(tmp_path):
    chromium = _chromium()
    page = report_page(sweep_rows(), tmp_path / "report.html", source_only=0.2, oracle=0.6, title="browser check")
    url = page.as_uri()
    dom = _run(
        chromium,
        tmp_path / f"profile-{time.monotonic_ns()}",
        ["--window-size=1400,1000", "--virtual-time-budget=15000", "--dump-dom", url],
    )
    # plotly drew the figure: its SVG, one trace per curve and panel plus the Pareto front, the points.
    assert 'class="main-svg"' in dom
    traces = re.findall(r'class="trace scatter', dom)
    assert len(traces) >= 3 * 2 + 1, len(traces)
    assert len(re.findall(r'class="point"', dom)) >= 14
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', dom)
    assert {
        "labor_ppl",
        "random · confusion_weight=0",
        "random · confusion_weight=0.1",
        "Pareto front (clicks)",
    } <= set(legend), legend
    assert "mIoU vs clicks" in dom and "20 points/image" in dom
    # Axis titles and the reference levels, drawn as lines with their labels.
    titles = re.findall(r'class="[xy]\d*title"[^>]*>([^<]+)<', dom)
    assert {"labeled target pixels (%)", "clicks (points, or outline corners of regions)", "target mIoU"} <= set(
        titles
    ), titles
    assert "source-only 0.200" in dom and "oracle 0.600" in dom
    assert len(re.findall(r'class="shapelayer"', dom)) >= 1
    # The per-class IoU table: a row per trial, a column per class.
    table = dom[dom.index('id="class-iou"') :]
    table = table[: table.index("</table>")]
    assert "<th>road</th>" in table and "<th>pole</th>" in table
    assert len(re.findall(r"<tr>", table)) == 1 + 6
    shot = ROOT / "test-artifacts" / "report-page.png"
    shot.parent.mkdir(exist_ok=True)
    _run(
        chromium,
        tmp_path / f"profile-{time.monotonic_ns()}",
        ["--window-size=1400,1000", "--virtual-time-budget=15000", f"--screenshot={shot}", url],
    )
    assert shot.stat().st_size > 30_000


@pytest.mark.browser
def test_budget_curve_page_renders_every_trial_and_the_selector_toggles_offline(tmp_path):
    chromium = _chromium()
    page = budget_curve(trial_rows(), tmp_path / "budget_curve.html", source_only=0.2, oracle=0.6, title="trials")
    dom = _run(
        chromium,
        tmp_path / f"profile-{time.monotonic_ns()}",
        ["--window-size=1400,1000", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
    )
    assert 'class="main-svg"' in dom
    assert len(re.findall(r'class="trace scatter', dom)) >= 3 * 2  # three trials, two panels
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', dom)
    assert {
        "labor_ppl · 2 points/image x 2 rounds",
        "labor_ppl · 5 points/image x 2 rounds",
        "random_pick · 5 points/image x 2 rounds",
    } == set(legend), legend
    buttons = re.findall(r'class="updatemenu-item-text"[^>]*>([^<]+)<', dom)
    assert {"labor_ppl: hide/show", "random_pick: hide/show"} <= set(buttons), buttons
    assert "source-only 0.200" in dom and "oracle 0.600" in dom
    summary = dom[dom.index('id="summary"') :]
    assert len(re.findall(r"<tr>", summary[: summary.index("</table>")])) == 1 + 3
