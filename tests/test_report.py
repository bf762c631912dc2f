"""Reports: every trial's budget curve (an offline plotly page), per-trial summary, selection overlay,
per-class IoU."""

import math
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from orchestrator.tracking.report import (
    SUMMARY_COLUMNS,
    budget_curve,
    budget_figure,
    iou_table,
    selection_overlay,
    summary_table,
    write_iou_csv,
    write_summary,
)

POOL = 8 * 32 * 32  # labeled fraction = pixels / POOL


def _rows() -> pd.DataFrame:
    """Three trials, two rules, rows deliberately out of order; one NaN mIoU (a dropped metric)."""
    spec = {  # trial: (rule, budget, points per round, mIoU per round)
        "trialAAA_00000": ("labor_ppl", "2 points/image x 2 rounds", 16, [0.20, 0.25, 0.30]),
        "trialBBB_00001": ("labor_ppl", "5 points/image x 2 rounds", 40, [0.20, 0.27, 0.33]),
        "trialCCC_00002": ("random_pick", "5 points/image x 2 rounds", 40, [0.20, 0.22, math.nan]),
    }
    rows = []
    for trial, (rule, budget, per_round, mious) in spec.items():
        for rnd, miou in enumerate(mious):
            pixels = per_round * rnd
            rows.append(
                {
                    "trial_id": trial,
                    "rule": rule,
                    "budget": budget,
                    "round": rnd,
                    "labeled_pixels": pixels,
                    "labeled_fraction": pixels / POOL,
                    "clicks": float(pixels),
                    "miou": miou,
                }
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def _trials_of(rule: str) -> set[str]:
    rows = _rows()
    return set(rows.loc[rows["rule"] == rule, "trial_id"])


def test_budget_figure_draws_every_trial_in_both_panels_with_references_and_toggles():
    rows = _rows()
    fig = budget_figure(rows, source_only=0.2, oracle=0.6)
    trials = [t for t in fig.data if t.legendgroup]
    # One line per trial and panel; one point per finite (trial, round), sorted by x.
    assert len(trials) == 3 * 2
    assert sum(len(t.x) for t in trials) == 2 * int(rows["miou"].notna().sum())
    assert {t.xaxis for t in trials} == {"x", "x2"} and all(list(t.x) == sorted(t.x) for t in trials)
    by_trial = {(t.legendgroup, t.xaxis): t for t in trials}
    a = by_trial["trialAAA_00000", "x2"]  # clicks
    assert list(a.x) == [0.0, 16.0, 32.0] and list(a.y) == pytest.approx([0.20, 0.25, 0.30])
    assert list(by_trial["trialAAA_00000", "x"].x) == pytest.approx([0.0, 100 * 16 / POOL, 100 * 32 / POOL])
    assert list(by_trial["trialCCC_00002", "x"].y) == pytest.approx([0.20, 0.22])  # the NaN round is left out
    # Hover gives the details of each point.
    assert (
        "trial trialAAA_00000<br>rule labor_ppl<br>budget 2 points/image x 2 rounds<br>round 2<br>mIoU 0.3000"
        "<br>labeled 0.391 %<br>clicks 32" in a.hovertext
    )
    # One legend entry per trial (both panels share it), labeled rule and budget.
    shown = [t.name for t in trials if t.showlegend]
    assert shown == [
        "labor_ppl \u00b7 2 points/image x 2 rounds",
        "labor_ppl \u00b7 5 points/image x 2 rounds",
        "random_pick \u00b7 5 points/image x 2 rounds",
    ]
    # Same rule and budget: same colour; another rule: another marker.
    colour = {t.legendgroup: (t.line.color, t.marker.symbol) for t in trials}
    assert colour["trialAAA_00000"][0] != colour["trialBBB_00001"][0]
    assert colour["trialAAA_00000"][1] == colour["trialBBB_00001"][1] != colour["trialCCC_00002"][1]
    # Axes.
    layout = fig.layout
    assert layout.xaxis.title.text == "labeled target pixels (%)" and layout.xaxis2.title.text.startswith("clicks")
    assert layout.yaxis.title.text == "target mIoU" and layout.yaxis2.matches == "y"
    # Source-only (dashed) and oracle (dotted) across both panels, labeled with their value.
    lines = {(shape.y0, shape.y1, shape.line.dash, shape.xref) for shape in layout.shapes}
    assert lines == {(v, v, dash, x) for v, dash in ((0.2, "dash"), (0.6, "dot")) for x in ("x domain", "x2 domain")}
    assert {"source-only 0.200", "oracle 0.600"} <= {note.text for note in layout.annotations}
    # A toggle per rule that hides (then shows) exactly its trials' lines in both panels.
    buttons = {b.label: b for b in layout.updatemenus[0].buttons}
    assert set(buttons) == {"labor_ppl: hide/show", "random_pick: hide/show"}
    ppl = buttons["labor_ppl: hide/show"]
    assert ppl.method == "restyle" and ppl.args[0] == {"visible": "legendonly"} and ppl.args2[0] == {"visible": True}
    assert sorted(ppl.args[1]) == sorted(i for i, t in enumerate(fig.data) if t.legendgroup in _trials_of("labor_ppl"))


def test_budget_curve_writes_one_offline_page_with_the_figure_and_the_summary(tmp_path):
    page = budget_curve(_rows(), tmp_path / "curve.html", source_only=0.2, oracle=0.6, title="smoke <budgets>")
    assert page == tmp_path / "curve.html" and [p.name for p in tmp_path.iterdir()] == ["curve.html"]
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "smoke &lt;budgets&gt;" in text and "smoke <budgets>" not in text  # escaped
    # Self-contained: plotly's JavaScript inline, no script, style sheet or font loaded from anywhere.
    assert not re.search(r"<script[^>]+src=", text, re.I) and not re.search(r"<link[^>]+href=", text, re.I)
    assert "@import" not in text and len(text) > 1_000_000 and 'id="trials"' in text and "Plotly.newPlot" in text
    # The figure's data is in the page, and the per-trial summary follows it.
    for name in ("trialAAA_00000", "trialBBB_00001", "trialCCC_00002", "labor_ppl", "random_pick", "source-only"):
        assert name in text, name
    summary = text[text.index('id="summary"') :]
    assert len(re.findall(r"<tr>", summary[: summary.index("</table>")])) == 1 + 3


def test_budget_curve_without_references_and_with_bad_input(tmp_path):
    fig = budget_figure(_rows(), None, None)
    assert len(fig.layout.shapes) == 0 and not any("source-only" in (a.text or "") for a in fig.layout.annotations)
    assert "source-only" not in budget_curve(_rows(), tmp_path / "a.html", None, None, "no refs").read_text()
    with pytest.raises(ValueError, match="lack column.*clicks"):
        budget_curve(_rows().drop(columns=["clicks"]), tmp_path / "b.html", None, None, "x")
    with pytest.raises(ValueError, match="empty"):
        budget_curve(_rows().iloc[:0], tmp_path / "c.html", None, None, "x")
    assert not (tmp_path / "b.html").exists() and not (tmp_path / "c.html").exists()


def test_summary_table_numbers_by_hand(tmp_path):
    table = summary_table(_rows(), source_only=0.2, oracle=0.6)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert list(table["trial_id"]) == ["trialAAA_00000", "trialBBB_00001", "trialCCC_00002"]
    a, b, c = (table.iloc[i] for i in range(3))
    assert a["rounds"] == 2 and a["labeled_pixels"] == 32 and a["clicks"] == 32.0
    assert a["labeled_fraction"] == pytest.approx(32 / POOL)
    assert a["miou"] == pytest.approx(0.30)
    assert a["gain"] == pytest.approx(0.30 - 0.20)
    assert a["gap_closed"] == pytest.approx((0.30 - 0.2) / (0.6 - 0.2))  # 0.25
    assert b["gain"] == pytest.approx(0.13) and b["gap_closed"] == pytest.approx(0.325)
    # The final round is the last round reported, even when its mIoU was dropped (NaN).
    assert c["rounds"] == 2 and math.isnan(c["miou"]) and math.isnan(c["gain"])

    no_refs = summary_table(_rows())
    assert no_refs["gap_closed"].isna().all()
    assert no_refs["gain"].iloc[0] == pytest.approx(0.10)
    assert summary_table(_rows(), source_only=0.2, oracle=None)["gap_closed"].isna().all()

    # Without a round 0 there is no gain; without labeled_pixels the column is NaN.
    later = _rows().query("round > 0").drop(columns=["labeled_pixels"])
    partial = summary_table(later, 0.2, 0.6)
    assert partial["gain"].isna().all() and partial["labeled_pixels"].isna().all()

    csv_path, parquet_path = write_summary(table, tmp_path / "out")
    assert csv_path.name == "summary.csv" and parquet_path.name == "summary.parquet"
    back = pd.read_csv(csv_path)
    assert list(back.columns) == list(SUMMARY_COLUMNS) and len(back) == 3
    assert back["gap_closed"].iloc[0] == pytest.approx(0.25)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), table, check_dtype=False)


def test_selection_overlay_draws_points_in_their_colour(tmp_path):
    height, width = 20, 30
    image = np.full((height, width, 3), 0.5)
    ys, xs = np.array([0, 10, 19]), np.array([0, 15, 29])
    mask = np.zeros((height, width), bool)
    mask[2:6, 20:26] = True
    rgb = selection_overlay(image, ys, xs, tmp_path / "points.png", mask=mask, point_color=(1.0, 0.0, 0.0))
    scale = rgb.shape[0] // height
    assert rgb.shape == (height * scale, width * scale, 3) and max(rgb.shape[:2]) >= 384  # upscaled to be legible
    written = np.round(mpimg.imread(tmp_path / "points.png")[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(written, rgb)
    for y, x in zip(ys, xs):
        assert tuple(written[y * scale + scale // 2, x * scale + scale // 2]) == (255, 0, 0)
    # Far from every point: the mask is tinted, the rest of the image is untouched.
    assert tuple(written[4 * scale, 23 * scale]) != (128, 128, 128)
    assert tuple(written[15 * scale, 5 * scale]) == (128, 128, 128)

    # With revealed labels each point takes its class colour (0..255 or 0..1 colours both work).
    labels = np.array([1, 0, 1])
    rgb = selection_overlay(
        image, ys, xs, tmp_path / "classes.png", labels=labels, class_colors=[(0, 0, 255), (0.0, 1.0, 0.0)]
    )
    expected = {0: (0, 0, 255), 1: (0, 255, 0)}
    for y, x, k in zip(ys, xs, labels):
        assert tuple(rgb[y * scale + scale // 2, x * scale + scale // 2]) == expected[k]

    with pytest.raises(ValueError, match="outside"):
        selection_overlay(image, [20], [0], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        selection_overlay(image[..., 0], [0], [0], tmp_path / "bad.png")


def test_iou_table_and_csv(tmp_path):
    per_class = {"road": 0.91234, "pole": float("nan"), "traffic_sign": 0.1, "a|b": 0.5}
    text = iou_table(per_class)
    lines = text.strip().splitlines()
    assert lines[0] == "| class | IoU |" and lines[1] == "|---|---:|"
    assert lines[2:6] == ["| road | 0.9123 |", "| pole | n/a |", "| traffic_sign | 0.1000 |", "| a\\|b | 0.5000 |"]
    assert lines[6] == f"| **mean** (3 classes) | **{(0.91234 + 0.1 + 0.5) / 3:.4f}** |"  # NaN left out

    path = write_iou_csv(per_class, tmp_path / "iou" / "per_class.csv")
    back = pd.read_csv(path, keep_default_na=True)
    assert list(back["class"]) == ["road", "pole", "traffic_sign", "a|b"]
    assert back["iou"].iloc[0] == pytest.approx(0.91234) and math.isnan(back["iou"].iloc[1])


def test_round_artifacts_draw_only_that_rounds_pixels(tmp_path, monkeypatch):
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from orchestrator.labels.store import LabeledPixels, LabelStore
    from orchestrator.round import loop as experiment
    from trainers.data.dataset_yaml import bundled_dataset

    drawn, styles = {}, []
    monkeypatch.setattr(
        experiment,
        "selection_overlay",
        lambda image, ys, xs, path, labels=None, **style: (
            drawn.__setitem__(Path(path).name, (list(ys), list(xs), list(labels))),
            styles.append(style),
        ),
    )

    def pixels(image_id, y, x, label):
        return LabeledPixels(
            image_id,
            np.array([y], np.int32),
            np.array([x], np.int32),
            np.array([label], np.uint8),
            height=8,
            width=8,
            clicks=1.0,
            regions=False,
        )

    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_ppl", [pixels(0, 0, 0, 1)])
    store.append_round(2, "labor_ppl", [pixels(0, 1, 1, 2), pixels(2, 3, 3, 4)])
    classes = ("road", "sidewalk", "building", "pole", "traffic_sign")
    class_set = bundled_dataset("cityscapes").class_set.subset("five", classes)
    domains = SimpleNamespace(target_pool=[(torch.zeros(3, 8, 8), None)] * 3, classes=classes, class_set=class_set)
    experiment.write_round_artifacts(tmp_path / "round-002", domains, store, 2, {"target/iou/road": 0.5})
    assert drawn == {"selected-image00000.png": ([1], [1], [2]), "selected-image00002.png": ([3], [3], [4])}
    # Drawn in the Cityscapes palette, with a legend of the class names.
    assert all(
        style["class_names"] == classes and style["class_colors"][0] == (128 / 255, 64 / 255, 128 / 255)
        for style in styles
    )
    assert (tmp_path / "round-002" / "iou.csv").is_file()
