"""The sweep report's curves per method and setting, Pareto front in clicks, per-class IoU table, the
interactive page, and overlays in the Cityscapes palette with a legend."""

import math
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from orchestrator.tracking.report import (
    class_iou_table,
    curves_figure,
    method_curves,
    method_curves_png,
    pareto_front,
    report_page,
    selection_overlay,
)
from trainers.data.palette import CITYSCAPES_PALETTE, class_palette

POOL = 1000


def sweep_rows() -> pd.DataFrame:
    """labor_ppl at 10 and 20 points (two seeds each, one round), random at 10 points with two settings
    (one seed), every trial with its round 0; per-class IoU for two classes."""
    spec = [  # trial, rule, setting, budget, points, seed, mIoU after round 1
        ("t0", "labor_ppl", "", "10 points/image/round", 10, 0, 0.40),
        ("t1", "labor_ppl", "", "10 points/image/round", 10, 1, 0.44),
        ("t2", "labor_ppl", "", "20 points/image/round", 20, 0, 0.50),
        ("t3", "labor_ppl", "", "20 points/image/round", 20, 1, 0.52),
        ("t4", "random", "confusion_weight=0", "10 points/image/round", 10, 0, 0.30),
        ("t5", "random", "confusion_weight=0.1", "10 points/image/round", 12, 0, 0.45),
    ]
    rows = []
    for trial, rule, setting, budget, points, seed, miou in spec:
        for rnd, value in ((0, 0.2 + 0.01 * seed), (1, miou)):
            rows.append(
                {
                    "trial_id": trial,
                    "rule": rule,
                    "setting": setting,
                    "budget": budget,
                    "round": rnd,
                    "labeled_pixels": points * rnd,
                    "labeled_fraction": points * rnd / POOL,
                    "clicks": float(points * rnd),
                    "miou": value,
                    "iou/road": value + 0.3,
                    "iou/pole": value / 10,
                }
            )
    return pd.DataFrame(rows)


def test_one_curve_per_method_and_setting_through_its_budgets_averaged_over_seeds():
    curves = method_curves(sweep_rows())
    assert sorted(curves["curve"].unique()) == [
        "labor_ppl",
        "random \u00b7 confusion_weight=0",
        "random \u00b7 confusion_weight=0.1",
    ]
    ppl = curves[curves["curve"] == "labor_ppl"]
    assert list(ppl["point_label"]) == ["source-only", "10 points/image", "20 points/image"]
    assert list(ppl["trials"]) == [4, 2, 2]
    assert ppl["miou"].tolist() == pytest.approx([0.205, 0.42, 0.51])
    assert ppl["miou_std"].iloc[1] == pytest.approx(np.std([0.40, 0.44], ddof=1))
    assert ppl["clicks"].tolist() == [0.0, 10.0, 20.0]
    lone = curves[curves["curve"] == "random \u00b7 confusion_weight=0"]
    assert len(lone) == 2 and math.isnan(lone["miou_std"].iloc[1])  # one trial: no spread


def test_later_rounds_are_points_of_the_same_curve_labeled_with_the_round():
    rows = sweep_rows()
    extra = rows[rows["trial_id"] == "t0"].iloc[[1]].assign(round=2, labeled_fraction=20 / POOL, clicks=20.0, miou=0.6)
    curves = method_curves(pd.concat([rows, extra], ignore_index=True))
    labels = curves.loc[curves["curve"] == "labor_ppl", "point_label"].tolist()
    assert labels == ["source-only", "10 points/image", "20 points/image", "10 points/image x 2"]


def test_pareto_front_keeps_exactly_the_points_nothing_beats():
    points = pd.DataFrame(
        {"clicks": [0, 10, 10, 20, 30, 40, 40], "miou": [0.2, 0.4, 0.3, 0.35, 0.5, 0.5, 0.45], "name": list("abcdefg")}
    )
    front = pareto_front(points)
    # c (same clicks as b, lower), d (more clicks than b, lower), f, g (more clicks than e, not higher) fall off.
    assert front["name"].tolist() == ["a", "b", "e"]


def test_per_class_iou_of_every_trial_side_by_side():
    table = class_iou_table(sweep_rows())
    assert list(table.columns) == ["trial_id", "rule", "setting", "budget", "rounds", "miou", "road", "pole"]
    assert table["trial_id"].tolist() == ["t0", "t1", "t2", "t3", "t4", "t5"]
    row = table.set_index("trial_id").loc["t2"]
    assert (row["rounds"], row["miou"], row["road"], row["pole"]) == (1, 0.5, pytest.approx(0.8), pytest.approx(0.05))


def test_curves_figure_draws_each_curve_in_both_panels_with_the_front_and_the_references():
    curves = method_curves(sweep_rows())
    fig = curves_figure(curves, source_only=0.2, oracle=0.6)
    names = ["labor_ppl", "random \u00b7 confusion_weight=0", "random \u00b7 confusion_weight=0.1"]
    traces = {(t.name, t.xaxis): t for t in fig.data}
    assert set(traces) == {(n, x) for n in names for x in ("x", "x2")} | {("Pareto front (clicks)", "x2")}
    assert [t.name for t in fig.data if t.showlegend is not False] == [*names, "Pareto front (clicks)"]
    ppl = traces["labor_ppl", "x2"]  # clicks: source-only, then 10 and 20 points, averaged over two seeds
    assert list(ppl.x) == [0.0, 10.0, 20.0] and list(ppl.y) == pytest.approx([0.205, 0.42, 0.51])
    assert list(traces["labor_ppl", "x"].x) == pytest.approx([0.0, 1.0, 2.0])  # labeled %
    assert list(ppl.text) == ["", "10 points/image", "20 points/image"]  # each point labeled with its budget
    assert ppl.error_y.visible and list(ppl.error_y.array)[1] == pytest.approx(np.std([0.40, 0.44], ddof=1))
    assert "mIoU 0.4200 \u00b1 0.0283 over 2 trial(s)" in ppl.hovertext[1]
    assert ppl.legendgroup == traces["labor_ppl", "x"].legendgroup == "labor_ppl"  # one entry, both panels
    front = traces["Pareto front (clicks)", "x2"]
    assert list(front.x) == list(pareto_front(curves)["clicks"]) and front.line.shape == "hv"
    assert front.line.dash == "dash"
    layout = fig.layout
    assert layout.xaxis.title.text == "labeled target pixels (%)"
    assert layout.xaxis2.title.text == "clicks (points, or outline corners of regions)"
    assert layout.yaxis.title.text == "target mIoU"
    lines = {(shape.y0, shape.line.dash, shape.xref) for shape in layout.shapes}
    assert lines == {(v, dash, x) for v, dash in ((0.2, "dash"), (0.6, "dot")) for x in ("x domain", "x2 domain")}
    assert {"source-only 0.200", "oracle 0.600"} <= {note.text for note in layout.annotations}
    assert {"mIoU vs labeled fraction", "mIoU vs clicks"} <= {note.text for note in layout.annotations}
    with pytest.raises(ValueError, match="no trial reported a finite mIoU"):
        curves_figure(curves.iloc[:0])


def test_curve_png_and_interactive_page_are_written(tmp_path):
    rows = sweep_rows()
    png = method_curves_png(method_curves(rows), tmp_path / "curves.png", source_only=0.2, oracle=0.6)
    pixels = mpimg.imread(png)[..., :3]
    assert pixels.shape[:2] == (638, 1430) and (pixels.max(axis=2) - pixels.min(axis=2) > 0.3).sum() > 500

    page = report_page(rows, tmp_path / "report.html", source_only=0.2, oracle=0.6, title="sweep <x>").read_text()
    assert page.startswith("<!DOCTYPE html>") and "sweep &lt;x&gt;" in page
    # Offline: plotly's JavaScript is inline; nothing is loaded from anywhere.
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert len(page) > 1_000_000 and 'id="curves"' in page
    for text in (
        "labor_ppl",
        "random \u00b7 confusion_weight=0.1",
        "20 points/image",
        "Pareto front (clicks)",
        'id="class-iou"',
        "<th>road</th>",
        "<th>pole</th>",
        'id="pareto"',
        'id="summary"',
    ):
        assert text in page, text


def test_overlay_uses_the_cityscapes_palette_and_draws_a_legend(tmp_path):
    names = ("road", "sidewalk", "building", "pole", "traffic_sign", "vegetation", "sky", "person", "car")
    palette = class_palette(names)
    assert palette[names.index("car")] == tuple(c / 255 for c in CITYSCAPES_PALETTE["car"])
    image = np.full((16, 32, 3), 0.5)
    plain = selection_overlay(image, [3, 8], [4, 20], tmp_path / "plain.png", labels=[8, 255], class_colors=palette)
    legend = selection_overlay(
        image, [3, 8], [4, 20], tmp_path / "legend.png", labels=[8, 255], class_colors=palette, class_names=names
    )
    assert legend.shape[1] == plain.shape[1] and legend.shape[0] > plain.shape[0] + 20
    np.testing.assert_array_equal(legend[: plain.shape[0]], plain)  # the overlay itself is unchanged
    strip = legend[plain.shape[0] :]
    car = np.array(CITYSCAPES_PALETTE["car"])
    assert (np.abs(strip.astype(int) - car).sum(axis=2) < 10).sum() > 20  # the car swatch
    assert (strip < 100).all(axis=2).sum() > 50  # and dark text beside it
    written = np.round(mpimg.imread(tmp_path / "legend.png")[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(written, legend)
