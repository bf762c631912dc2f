"""Reports of a sweep: curves per method and setting, every trial's budget curve, the Pareto front
in clicks, per-trial summary, per-class IoU tables and selection overlays.

Plain functions on plain data (pandas, numpy), no Ray, no MLflow, no network. Two stacks, one job
each: the interactive pages (``report_page``, ``budget_curve``) are plotly figures written with
plotly's JavaScript inline, so one HTML file works offline and from a file:// URL; matplotlib (Agg
backend) draws the pictures MLflow shows as images (``method_curves_png``) and the overlays.

The curve and summary inputs are one row per (trial, round) with the columns of ``ROW_COLUMNS``
(``labeled_pixels`` is optional): what each trial reports per round, round 0 being the source-only
model before any label is bought.
"""

from __future__ import annotations

import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: before pyplot is imported anywhere here

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from trainers.data.palette import fallback_colours
from trainers.files import atomic_write_text, staged

ROW_COLUMNS = ("trial_id", "rule", "budget", "round", "labeled_fraction", "clicks", "miou")
SUMMARY_COLUMNS = (
    "trial_id",
    "rule",
    "budget",
    "rounds",
    "labeled_pixels",
    "labeled_fraction",
    "clicks",
    "miou",
    "gain",
    "gap_closed",
)

# One colour family per rule (a matplotlib sequential colormap), darker for larger budgets; the
# marker tells the rule too (matplotlib's code, and plotly's name for the same shape).
_FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "BuGn", "RdPu", "PuBu")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_PLOTLY_SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down", "P": "cross"}
# Reference levels: line style in matplotlib's words and in plotly's.
_SOURCE_STYLE = {"color": "#555555", "linestyle": "--", "dash": "dash"}
_ORACLE_STYLE = {"color": "#000000", "linestyle": ":", "dash": "dot"}


# ----------------------------------------------------------------------------------------- helpers


def _check_columns(rows: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise ValueError(
            f"{what}: rows lack column(s) {', '.join(missing)} (have: {', '.join(map(str, rows.columns))})"
        )


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if not _finite(value) else f"{value:.{digits}f}"


def _num(value: float) -> str:
    return "n/a" if not _finite(value) else f"{value:g}"


def _pct(fraction: float) -> str:
    """A labeled fraction as a percentage with enough digits for tiny budgets (0.0977 %)."""
    if not _finite(fraction):
        return "n/a"
    pct = 100.0 * fraction
    return f"{pct:.3g} %" if pct < 1 else f"{pct:.2f} %"


class _Series:
    """One line of the budget curve: one trial (its points, sorted per panel)."""

    def __init__(
        self,
        index: int,
        trial_id: str,
        rule: str,
        budget: str,
        label: str,
        colour: str,
        marker: str,
        frame: pd.DataFrame,
    ):
        self.index, self.trial_id, self.rule, self.budget = index, trial_id, rule, budget
        self.label, self.colour, self.marker, self.frame = label, colour, marker, frame

    def points(self, x_column: str) -> pd.DataFrame:
        frame = self.frame[
            np.isfinite(self.frame[x_column].astype(float)) & np.isfinite(self.frame["miou"].astype(float))
        ]
        return frame.sort_values([x_column, "round"], kind="stable")


def _series(rows: pd.DataFrame) -> list[_Series]:
    """One series per trial; colour per (rule, budget), marker per rule; labels made unique."""
    data = rows.copy()
    for column in ("trial_id", "rule", "budget"):
        data[column] = data[column].astype(str)
    for column in ("round", "labeled_fraction", "clicks", "miou"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    data["labeled_pct"] = 100.0 * data["labeled_fraction"]
    # Budgets in the order of their size, so the legend reads from small to large.
    final = data.sort_values("round").groupby("trial_id", sort=False).tail(1)
    order = final.sort_values(["rule", "labeled_fraction", "clicks", "budget", "trial_id"], kind="stable")
    rules = list(dict.fromkeys(order["rule"]))
    groups = list(dict.fromkeys(zip(order["rule"], order["budget"])))
    group_sizes = order.groupby(["rule", "budget"]).size().to_dict()
    colours = {}
    for k, rule in enumerate(rules):
        budgets = [g for g in groups if g[0] == rule]
        cmap = plt.get_cmap(_FAMILIES[k % len(_FAMILIES)])
        for j, group in enumerate(budgets):
            shade = 0.75 if len(budgets) == 1 else 0.45 + 0.5 * j / (len(budgets) - 1)
            colours[group] = to_hex(cmap(shade))
    series = []
    for i, (trial_id, rule, budget) in enumerate(zip(order["trial_id"], order["rule"], order["budget"])):
        label = f"{rule} \u00b7 {budget}"
        if group_sizes[(rule, budget)] > 1:
            label += f" ({trial_id})"
        series.append(
            _Series(
                i,
                trial_id,
                rule,
                budget,
                label,
                colours[(rule, budget)],
                _MARKERS[rules.index(rule) % len(_MARKERS)],
                data[data["trial_id"] == trial_id],
            )
        )
    return series


# -------------------------------------------------------------------------------------- budget curve

_PANELS = (
    ("labeled_pct", "labeled target pixels (%)"),
    ("clicks", "clicks (annotated points)"),
)


def budget_figure(rows: pd.DataFrame, source_only: float | None = None, oracle: float | None = None):
    """Every trial on its own, round by round: target mIoU against labeled fraction (%) and, in a
    second panel, against clicks (a plotly ``Figure``).

    ``rows``: one row per (trial, round) with ``trial_id, rule, budget, round, labeled_fraction,
    clicks, miou``. One line per trial and panel, points sorted by x; the colour tells the (rule,
    budget), the marker the rule (trials sharing both get their id in the legend). A legend entry
    hides or shows its trial in both panels; one toggle button per rule hides or shows all of its
    trials. Hover a point for trial, rule, budget, round, mIoU, labeled % and clicks. The
    ``source_only`` and ``oracle`` levels are dashed and dotted lines across both panels when given.
    """
    import plotly.graph_objects as go

    _check_columns(rows, ROW_COLUMNS, "budget_curve")
    if rows.empty:
        raise ValueError("budget_curve: rows is empty (no trial reported a round)")
    e = html.escape
    fig = _two_panels(("mIoU vs labeled fraction", "mIoU vs clicks"), [label for _, label in _PANELS])
    of_selector: dict[str, list[int]] = {}
    for s in _series(rows):
        for col, (x_column, _) in enumerate(_PANELS, start=1):
            pts = s.points(x_column)
            if pts.empty:
                continue
            hover = [
                f"trial {e(s.trial_id)}<br>rule {e(s.rule)}<br>budget {e(s.budget)}<br>round {int(p['round'])}"
                f"<br>mIoU {_fmt(p['miou'])}<br>labeled {_pct(p['labeled_fraction'])}<br>clicks {_num(p['clicks'])}"
                for _, p in pts.iterrows()
            ]
            of_selector.setdefault(s.rule, []).append(len(fig.data))
            fig.add_trace(
                go.Scatter(
                    x=pts[x_column],
                    y=pts["miou"],
                    mode="lines+markers",
                    name=e(s.label),
                    legendgroup=s.trial_id,  # one entry hides the trial in both panels
                    showlegend=col == 1,
                    line={"color": s.colour, "width": 2},
                    marker={"symbol": _PLOTLY_SYMBOLS[s.marker], "size": 8, "color": s.colour},
                    hovertext=hover,
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
    _reference_lines(fig, source_only, oracle)
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "showactive": False,
                "x": 0,
                "xanchor": "left",
                "y": 1.16,
                "yanchor": "bottom",
                "pad": {"r": 4, "t": 0},
                # A toggle: the first click hides the rule's trials (kept in the legend), the next shows them.
                "buttons": [
                    {
                        "label": f"{e(rule)}: hide/show",
                        "method": "restyle",
                        "args": [{"visible": "legendonly"}, traces],
                        "args2": [{"visible": True}, traces],
                    }
                    for rule, traces in of_selector.items()
                ],
            }
        ],
        margin={"l": 60, "r": 20, "t": 90, "b": 40},
    )
    return fig


def budget_curve(
    rows: pd.DataFrame,
    html_path: str | os.PathLike,
    source_only: float | None = None,
    oracle: float | None = None,
    title: str = "Target mIoU against the annotation budget",
) -> Path:
    """Write ``budget_figure`` as one self-contained HTML page (plotly, its JavaScript inline: no
    network, works from a file), followed by the per-trial summary table; returns its path."""
    fig = budget_figure(rows, source_only, oracle)
    summary = summary_table(rows, source_only=source_only, oracle=oracle)
    note = (
        f"{summary.shape[0]} trial(s), each on its own, round by round. Hover a point for its details; click a "
        f"legend entry to hide or show a trial (double-click: that trial alone), a rule's button to hide "
        f"or show all of its trials."
    )
    sections = [("Final round of each trial", _html_table(summary, "summary", _NUMBER_FORMATS))]
    return _write_page(html_path, title, note, fig, "trials", sections)


# -------------------------------------------------------------------------------------- summary table


def summary_table(rows: pd.DataFrame, source_only: float | None = None, oracle: float | None = None) -> pd.DataFrame:
    """One row per trial, at its final (largest) round, with the columns of ``SUMMARY_COLUMNS``.

    ``rounds`` is the final round number, ``gain`` = final mIoU - the trial's round-0 mIoU (NaN without
    a round 0), ``gap_closed`` = (mIoU - source_only) / (oracle - source_only) when both references are
    given and differ (else NaN). ``labeled_pixels`` is NaN when ``rows`` lacks that column. Sorted by
    rule, then labeled fraction, then trial id.
    """
    _check_columns(rows, ROW_COLUMNS, "summary_table")
    data = rows.copy()
    data["trial_id"] = data["trial_id"].astype(str)
    if "labeled_pixels" not in data.columns:
        data["labeled_pixels"] = np.nan
    for column in ("round", "labeled_pixels", "labeled_fraction", "clicks", "miou"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    if data.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=float if c not in ("trial_id", "rule", "budget") else object) for c in SUMMARY_COLUMNS}
        )
    data = data.sort_values(["trial_id", "round"], kind="stable")
    final = data.groupby("trial_id", sort=False).tail(1).set_index("trial_id")
    start = data[data["round"] == 0].groupby("trial_id").head(1).set_index("trial_id")["miou"]
    out = pd.DataFrame(
        {
            "trial_id": final.index,
            "rule": final["rule"].astype(str).to_numpy(),
            "budget": final["budget"].astype(str).to_numpy(),
            "rounds": final["round"].astype(int).to_numpy(),
            "labeled_pixels": final["labeled_pixels"].to_numpy(dtype=float),
            "labeled_fraction": final["labeled_fraction"].to_numpy(dtype=float),
            "clicks": final["clicks"].to_numpy(dtype=float),
            "miou": final["miou"].to_numpy(dtype=float),
        }
    )
    out["gain"] = out["miou"] - out["trial_id"].map(start).astype(float)
    if _finite(source_only) and _finite(oracle) and oracle != source_only:
        out["gap_closed"] = (out["miou"] - source_only) / (oracle - source_only)
    else:
        out["gap_closed"] = np.nan
    pixels = out["labeled_pixels"]
    if pixels.notna().all() and np.all(np.mod(pixels, 1) == 0):
        out["labeled_pixels"] = pixels.astype(np.int64)
    out = out.sort_values(["rule", "labeled_fraction", "trial_id"], kind="stable").reset_index(drop=True)
    return out[list(SUMMARY_COLUMNS)]


def write_summary(df: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.parquet`` into ``out_dir`` (created); returns both paths."""
    return write_table(df, out_dir, "summary")


# -------------------------------------------------------------------------------- selection overlay


def _default_class_colours(n: int) -> np.ndarray:
    return np.array(fallback_colours(n), dtype=float)


def _colour(value) -> np.ndarray:
    colour = np.asarray(value, dtype=float).reshape(-1)[:3]
    return colour / 255.0 if colour.max(initial=0) > 1.0 else colour


def _disc_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    inside = dy**2 + dx**2 <= radius**2 + radius * 0.5
    return dy[inside], dx[inside]


def selection_overlay(
    image: np.ndarray,
    ys,
    xs,
    png_path: str | os.PathLike,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    class_colors=None,
    *,
    point_color=(1.0, 0.0, 1.0),
    mask_color=(0.0, 0.9, 1.0),
    min_size: int = 384,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Draw the selected pixels (and/or a selected-region mask) on the target image; write a PNG.

    ``image``: (H, W, 3) float in [0, 1] (uint8 is accepted). ``ys, xs``: the selected pixels' rows and
    columns. ``mask``: optional (H, W) bool region, tinted with ``mask_color``. ``labels``: optional
    revealed class per point; each point is then coloured ``class_colors[label]`` (a sequence indexed
    by class id or a mapping id -> colour, RGB in [0, 1] or 0..255; default: matplotlib's tab20), an id
    without a colour (e.g. 255, ignore) is white; without labels every point has ``point_color``.

    The image is upscaled by an integer factor ``s`` (nearest neighbour) so that its longer side is at
    least ``min_size`` pixels; point (y, x) is a filled disc centred on output pixel
    (y*s + s//2, x*s + s//2) with a thin black ring, so it stays visible on any background. Returns the
    written RGB image (uint8, shape (H*s, W*s, 3)).

    With ``labels`` and ``class_names`` (names by class id) a legend strip under the image names the
    classes of the drawn points with their colours (and 'not labeled' for 255); the returned image is
    then taller, the overlay unchanged at its top.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"selection_overlay: image must be (H, W, 3), got shape {img.shape}")
    img = img.astype(float) / 255.0 if img.dtype == np.uint8 else img.astype(float)
    img = np.clip(np.nan_to_num(img), 0.0, 1.0)
    height, width = img.shape[:2]
    ys, xs = np.asarray(ys, dtype=np.int64).reshape(-1), np.asarray(xs, dtype=np.int64).reshape(-1)
    if ys.shape != xs.shape:
        raise ValueError(f"selection_overlay: {ys.size} ys but {xs.size} xs")
    if ys.size and (ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width):
        raise ValueError(f"selection_overlay: a point lies outside the {height}x{width} image")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != ys.shape:
            raise ValueError(f"selection_overlay: {labels.size} labels for {ys.size} points")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"selection_overlay: mask shape {mask.shape} is not the image's {(height, width)}")
        img = np.where(mask[..., None], 0.55 * img + 0.45 * _colour(mask_color), img)

    scale = max(1, math.ceil(min_size / max(height, width)))
    out = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    out_h, out_w = out.shape[:2]
    radius = max(4, scale // 2 + 1, round(max(out_h, out_w) / 90))
    ring = max(1, radius // 4)

    if labels is not None:
        if isinstance(class_colors, Mapping):
            lookup = {int(k): _colour(v) for k, v in class_colors.items()}
        else:
            table = (
                _default_class_colours(int(labels.max(initial=0)) + 1 if labels.size else 1)
                if class_colors is None
                else np.array([_colour(c) for c in class_colors])
            )
            lookup = {i: table[i] for i in range(len(table))}
        colours = [lookup.get(int(k), np.ones(3)) for k in labels]
    else:
        colours = [_colour(point_color)] * ys.size

    oy, ox = _disc_offsets(radius + ring)
    iy, ix = _disc_offsets(radius)
    for y, x, colour in zip(ys, xs, colours):
        cy, cx = y * scale + scale // 2, x * scale + scale // 2
        for dy, dx, value in ((oy, ox, np.zeros(3)), (iy, ix, colour)):
            py, px = cy + dy, cx + dx
            keep = (py >= 0) & (py < out_h) & (px >= 0) & (px < out_w)
            out[py[keep], px[keep]] = value
    rgb = np.round(out * 255.0).astype(np.uint8)
    if labels is not None and class_names is not None:
        present = sorted({int(k) for k in labels})
        entries = [
            (class_names[k] if 0 <= k < len(class_names) else f"class {k}", lookup.get(k, np.ones(3)))
            for k in present
            if k != 255
        ] + ([("not labeled (255)", np.ones(3))] if 255 in present else [])
        rgb = np.concatenate([rgb, _legend_strip(entries, rgb.shape[1])], axis=0)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(png_path, rgb)
    return rgb


def _legend_strip(entries: Sequence[tuple[str, np.ndarray]], width: int) -> np.ndarray:
    """A white strip, ``width`` pixels wide, with a colour swatch and the name of each entry."""
    from matplotlib.patches import Patch

    columns = max(1, min(len(entries), width // 150))
    rows = max(1, math.ceil(len(entries) / columns))
    height = 12 + 20 * rows
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    try:
        handles = [Patch(facecolor=tuple(colour), edgecolor="black", label=name) for name, colour in entries]
        if handles:
            fig.legend(
                handles=handles,
                loc="center",
                ncol=columns,
                frameon=False,
                fontsize=9,
                handlelength=1.2,
                columnspacing=1.0,
            )
        fig.canvas.draw()
        strip = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    return strip[:height, :width]


# ------------------------------------------------------------------------------------- per-class IoU


def _clean_iou(per_class: Mapping[str, float]) -> list[tuple[str, float]]:
    out = []
    for name, value in per_class.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        out.append((str(name), number))
    return out


def iou_table(per_class: Mapping[str, float]) -> str:
    """Markdown table ``| class | IoU |`` (4 decimals, 'n/a' for NaN), in the given order, then the mean
    over the classes with a value (absent classes are left out, as in the project's mIoU)."""
    items = _clean_iou(per_class)
    lines = ["| class | IoU |", "|---|---:|"]
    for name, value in items:
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {_fmt(value)} |")
    finite = [v for _, v in items if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else math.nan
    lines.append(f"| **mean** ({len(finite)} classes) | **{_fmt(mean)}** |")
    return "\n".join(lines) + "\n"


def write_iou_csv(per_class: Mapping[str, float], path: str | os.PathLike) -> Path:
    """Write ``class,iou`` rows (NaN as an empty field) to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "iou"])
        for name, value in _clean_iou(per_class):
            writer.writerow([name, repr(value) if math.isfinite(value) else ""])
    return path


# ------------------------------------------------------------------------ curves per method and setting
#
# A trial is one (method, setting, budget, seed). What a reader compares is a *method* (the rule,
# under one setting of the other swept keys) across budgets and rounds: one curve through every
# budget and round of it, averaged over seeds, starting at the source-only model (round 0).

CURVE_COLUMNS = (
    "curve",
    "rule",
    "setting",
    "budget",
    "round",
    "trials",
    "labeled_fraction",
    "clicks",
    "miou",
    "miou_std",
    "point_label",
)


def _curve_name(rule: str, setting: str) -> str:
    return f"{rule} \u00b7 {setting}" if setting else rule


def _point_label(budget: str, round_index: int) -> str:
    """The budget a point stands for: ``10 points/image`` after one round, ``... x 2`` after two."""
    if round_index == 0:
        return "source-only"
    base = budget.replace("/round", "")
    return base if round_index == 1 else f"{base} x {round_index}"


def method_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per point of each method's curve, with the columns of ``CURVE_COLUMNS``.

    ``rows``: one row per (trial, round) as for ``budget_curve``, optionally with ``setting`` (the
    trial's swept keys other than the rule, the budget and the seed; '' when absent). A curve is
    one (rule, setting); its points are every (budget, round >= 1) of its trials, with the
    labeled fraction, clicks and mIoU averaged over the trials that share them (seeds), and the
    source-only model (round 0) as the first point. ``miou_std`` is the standard deviation over
    those trials (NaN for one trial). Sorted by curve, then labeled fraction, then round.
    """
    _check_columns(rows, ROW_COLUMNS, "method_curves")
    data = rows.copy()
    data["setting"] = data["setting"].fillna("").astype(str) if "setting" in data.columns else ""
    for column in ("rule", "budget"):
        data[column] = data[column].astype(str)
    for column in ("round", "labeled_fraction", "clicks", "miou"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    data = data[np.isfinite(data["miou"].astype(float))]
    if data.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CURVE_COLUMNS})
    data["round"] = data["round"].astype(int)
    # Round 0 is the same source model for every budget of a curve: one point, not one per budget.
    data.loc[data["round"] == 0, "budget"] = ""
    keys = ["rule", "setting", "budget", "round"]
    grouped = data.groupby(keys, sort=False, dropna=False)
    points = grouped.agg(
        trials=("miou", "size"),
        labeled_fraction=("labeled_fraction", "mean"),
        clicks=("clicks", "mean"),
        miou=("miou", "mean"),
        miou_std=("miou", "std"),
    ).reset_index()
    points["curve"] = [_curve_name(s, t) for s, t in zip(points["rule"], points["setting"])]
    points["point_label"] = [_point_label(b, r) for b, r in zip(points["budget"], points["round"])]
    points = points.sort_values(["curve", "labeled_fraction", "round", "budget"], kind="stable").reset_index(drop=True)
    return points[list(CURVE_COLUMNS)]


def pareto_front(points: pd.DataFrame, x: str = "clicks", y: str = "miou") -> pd.DataFrame:
    """The points no other point beats: none has at most as many ``x`` (clicks) and a higher ``y``
    (mIoU), or fewer ``x`` and as high a ``y``. Sorted by ``x``; ties at equal (x, y) all kept."""
    finite = points[np.isfinite(points[x].astype(float)) & np.isfinite(points[y].astype(float))]
    ordered = finite.sort_values([x, y], ascending=[True, False], kind="stable")
    keep, best = [], -math.inf
    for index, px, py in zip(ordered.index, ordered[x].astype(float), ordered[y].astype(float)):
        if py > best or (keep and py == best and px == float(ordered.loc[keep[-1], x])):
            keep.append(index)
            best = max(best, py)
    return ordered.loc[keep].reset_index(drop=True)


def class_iou_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-class IoU of every trial at its final round, side by side (the papers' 19-column table).

    ``rows`` carries one ``iou/<class>`` column per class (classes in column order). Columns:
    ``trial_id, rule, setting, budget, rounds, miou``, then one per class (bare class names).
    Sorted by rule, setting, labeled fraction and trial id.
    """
    _check_columns(rows, ROW_COLUMNS, "class_iou_table")
    classes = [c for c in rows.columns if str(c).startswith("iou/")]
    data = rows.copy()
    data["trial_id"] = data["trial_id"].astype(str)
    data["setting"] = data["setting"].fillna("").astype(str) if "setting" in data.columns else ""
    data = data.sort_values(["trial_id", "round"], kind="stable")
    final = data.groupby("trial_id", sort=False).tail(1)
    final = final.sort_values(["rule", "setting", "labeled_fraction", "trial_id"], kind="stable")
    out = pd.DataFrame(
        {
            "trial_id": final["trial_id"].to_numpy(),
            "rule": final["rule"].astype(str).to_numpy(),
            "setting": final["setting"].to_numpy(),
            "budget": final["budget"].astype(str).to_numpy(),
            "rounds": final["round"].astype(int).to_numpy(),
            "miou": pd.to_numeric(final["miou"], errors="coerce").to_numpy(dtype=float),
        }
    )
    for column in classes:
        out[column[len("iou/") :]] = pd.to_numeric(final[column], errors="coerce").to_numpy(dtype=float)
    return out


def write_table(df: pd.DataFrame, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.parquet`` into ``out_dir`` (created), each atomically."""
    out_dir = Path(out_dir)
    csv_path, parquet_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.parquet"
    atomic_write_text(csv_path, df.to_csv(index=False))
    with staged(parquet_path) as tmp:
        df.to_parquet(tmp, index=False)
    return csv_path, parquet_path


def _curve_styles(curves: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """(colour, matplotlib marker) per curve: one colour family per rule, a shade per setting."""
    styles = {}
    rules = list(dict.fromkeys(curves["rule"]))
    for k, rule in enumerate(rules):
        names = list(dict.fromkeys(curves.loc[curves["rule"] == rule, "curve"]))
        cmap = plt.get_cmap(_FAMILIES[k % len(_FAMILIES)])
        for j, name in enumerate(names):
            shade = 0.75 if len(names) == 1 else 0.5 + 0.45 * j / (len(names) - 1)
            styles[name] = (to_hex(cmap(shade)), _MARKERS[k % len(_MARKERS)])
    return styles


_CURVE_PANELS = (
    ("labeled_pct", "labeled target pixels (%)"),
    ("clicks", "clicks (points, or outline corners of regions)"),
)


def method_curves_png(
    curves: pd.DataFrame,
    png_path: str | os.PathLike,
    source_only: float | None = None,
    oracle: float | None = None,
    title: str = "Target mIoU against the annotation budget",
) -> Path:
    """The curves of ``method_curves`` as a PNG: mIoU against labeled % and against clicks, each point
    labeled with its budget, the Pareto front in clicks as a dashed black step line."""
    if curves.empty:
        raise ValueError("method_curves_png: no curve has a point")
    png_path = Path(png_path)
    data = curves.assign(labeled_pct=100.0 * curves["labeled_fraction"].astype(float))
    styles = _curve_styles(data)
    front = pareto_front(data)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8), dpi=110, sharey=True)
    try:
        for ax, (x_column, x_label) in zip(axes, _CURVE_PANELS):
            for name, points in data.groupby("curve", sort=False):
                points = points.sort_values([x_column, "round"], kind="stable")
                colour, marker = styles[name]
                ax.plot(
                    points[x_column],
                    points["miou"],
                    color=colour,
                    marker=marker,
                    markersize=6,
                    linewidth=1.8,
                    label=name,
                )
                for _, p in points.iterrows():
                    if p["round"] > 0:
                        ax.annotate(
                            p["point_label"],
                            (p[x_column], p["miou"]),
                            textcoords="offset points",
                            xytext=(4, 5),
                            fontsize=7,
                            color=colour,
                        )
            if x_column == "clicks" and len(front) > 1:
                ax.step(
                    front["clicks"],
                    front["miou"],
                    where="post",
                    color="black",
                    linestyle="--",
                    linewidth=1.1,
                    label="Pareto front (clicks)",
                )
            for name, value, style in (("source-only", source_only, _SOURCE_STYLE), ("oracle", oracle, _ORACLE_STYLE)):
                if _finite(value):
                    ax.axhline(
                        value,
                        color=style["color"],
                        linestyle=style["linestyle"],
                        linewidth=1.3,
                        label=f"{name} ({value:.3f})" if x_column == "labeled_pct" else None,
                    )
            ax.set_xlabel(x_label)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("target mIoU")
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        ncol = min(3, max(1, len(labels)))
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
        fig.suptitle(title, fontsize=13)
        fig.tight_layout(rect=(0, min(0.45, 0.05 + 0.045 * math.ceil(len(labels) / ncol)), 1, 0.95))
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, facecolor="white")
    finally:
        plt.close(fig)
    return png_path


# ---------------------------------------------------------------------- interactive pages (plotly, offline)


def _two_panels(titles: Sequence[str], x_titles: Sequence[str]):
    """A plotly figure of two panels side by side sharing the mIoU axis, x axes from 0."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06, subplot_titles=tuple(titles))
    for col, x_title in enumerate(x_titles, start=1):
        fig.update_xaxes(title_text=x_title, rangemode="tozero", row=1, col=col)
    fig.update_yaxes(title_text="target mIoU", row=1, col=1)
    fig.update_layout(
        height=560,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
    )
    return fig


def _reference_lines(fig, source_only: float | None, oracle: float | None) -> None:
    """The source-only (dashed) and oracle (dotted) levels across both panels, labeled with their value."""
    for name, value, style in (("source-only", source_only, _SOURCE_STYLE), ("oracle", oracle, _ORACLE_STYLE)):
        if _finite(value):
            for col in (1, 2):
                fig.add_hline(
                    y=value,
                    line={"color": style["color"], "dash": style["dash"], "width": 1.3},
                    annotation_text=f"{name} {value:.3f}",
                    annotation_position="bottom right",
                    row=1,
                    col=col,
                )


def _html_table(
    df: pd.DataFrame, table_id: str, formats: Mapping[str, callable] | None = None, heat: Sequence[str] = ()
) -> str:
    """A plain HTML table; ``heat`` columns (values in [0, 1]) get a background shade of their value."""
    e = html.escape
    formats = formats or {}
    head = "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for column, value in zip(df.columns, row):
            text = formats.get(column, lambda v: "n/a" if isinstance(v, float) and not math.isfinite(v) else str(v))(
                value
            )
            style = ""
            if column in heat and _finite(value):
                style = f' style="background:rgba(46,125,50,{max(0.0, min(1.0, float(value))) * 0.6:.2f})"'
            cells.append(f"<td{style}>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="data" id="{e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


_NUMBER_FORMATS = {
    "miou": _fmt,
    "miou_std": _fmt,
    "labeled_fraction": _pct,
    "clicks": _num,
    "gain": _fmt,
    "gap_closed": lambda v: _fmt(v, 2),
    "labeled_pixels": _num,
}

_REPORT_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:20px;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 4px} h2{font-size:1.1em;margin:22px 0 6px}
p.note{color:#555;margin:0 0 10px;font-size:.9em;max-width:70em}
table.data{border-collapse:collapse;font-size:.85em}
table.data th,table.data td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
table.data th{background:#f3f3f3}
table.data td:nth-child(-n+4){text-align:left}
.scroll{overflow-x:auto}
"""


def _write_page(
    html_path: str | os.PathLike, title: str, note: str, fig, div_id: str, sections: Sequence[tuple[str, str]]
) -> Path:
    """One self-contained HTML page: the title, a note, the figure with plotly's JavaScript inline (no
    CDN, no network), then (heading, HTML) sections; written atomically."""
    e = html.escape
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id=div_id, config={"displaylogo": False})
    parts = "".join(f'<h2>{e(heading)}</h2>\n<div class="scroll">{body}</div>\n' for heading, body in sections)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
        f"<style>{_REPORT_CSS}</style></head><body>\n<h1>{e(title)}</h1>\n"
        f'<p class="note">{e(note)}</p>\n{plot}\n{parts}</body></html>\n'
    )
    return atomic_write_text(html_path, page)


def curves_figure(curves: pd.DataFrame, source_only: float | None = None, oracle: float | None = None):
    """The curves of ``method_curves`` as a plotly ``Figure``: mIoU against labeled % and against
    clicks, each point labeled with its budget, error bars the standard deviation over seeds, the
    Pareto front in clicks as a dashed black step line, the source-only and oracle levels."""
    import plotly.graph_objects as go

    if curves.empty:
        raise ValueError("report_page: no trial reported a finite mIoU")
    e = html.escape
    data = curves.assign(labeled_pct=100.0 * curves["labeled_fraction"].astype(float))
    styles = _curve_styles(data)
    fig = _two_panels(("mIoU vs labeled fraction", "mIoU vs clicks"), [label for _, label in _CURVE_PANELS])
    for name, points in data.groupby("curve", sort=False):
        colour, marker = styles[name]
        for col, (x_column, _) in enumerate(_CURVE_PANELS, start=1):
            pts = points.sort_values([x_column, "round"], kind="stable")
            hover = [
                f"<b>{e(name)}</b><br>{e(p.point_label)} (round {int(p['round'])})<br>"
                f"mIoU {p.miou:.4f}"
                + (f" \u00b1 {p.miou_std:.4f}" if _finite(p.miou_std) else "")
                + f" over {int(p.trials)} trial(s)<br>labeled {_pct(p.labeled_fraction)}<br>clicks {_num(p.clicks)}"
                for _, p in pts.iterrows()
            ]
            fig.add_trace(
                go.Scatter(
                    x=pts[x_column],
                    y=pts["miou"],
                    mode="lines+markers+text",
                    name=e(name),
                    legendgroup=name,  # one entry hides the curve in both panels
                    showlegend=col == 1,
                    line={"color": colour, "width": 2},
                    marker={"symbol": _PLOTLY_SYMBOLS[marker], "size": 8, "color": colour},
                    text=[e(label) if r > 0 else "" for label, r in zip(pts["point_label"], pts["round"])],
                    textposition="top center",
                    textfont={"size": 9, "color": colour},
                    error_y={
                        "type": "data",
                        "array": pts["miou_std"].fillna(0.0),
                        "visible": bool(pts["miou_std"].notna().any()),
                        "thickness": 1,
                        "width": 3,
                        "color": colour,
                    },
                    hovertext=hover,
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
    front = pareto_front(data)
    if len(front):
        fig.add_trace(
            go.Scatter(
                x=front["clicks"],
                y=front["miou"],
                mode="lines+markers",
                name="Pareto front (clicks)",
                line={"color": "black", "dash": "dash", "width": 1.3, "shape": "hv"},
                marker={"symbol": "circle-open", "size": 13, "color": "black"},
                hovertext=[f"Pareto: {e(c)}, {e(b)}" for c, b in zip(front["curve"], front["point_label"])],
                hoverinfo="text",
            ),
            row=1,
            col=2,
        )
    _reference_lines(fig, source_only, oracle)
    return fig


def report_page(
    rows: pd.DataFrame,
    html_path: str | os.PathLike,
    source_only: float | None = None,
    oracle: float | None = None,
    title: str = "Target mIoU against the annotation budget",
) -> Path:
    """The sweep's interactive report, one self-contained HTML file (plotly, its JavaScript inline:
    no CDN, no network), with

    - the curves of ``method_curves`` against labeled % and against clicks (``curves_figure``: hover
      a point for its budget, round, trials and mIoU ± std; click a legend entry to hide a curve in
      both panels, double-click to show it alone), the source-only and oracle levels, the Pareto
      front in clicks;
    - the Pareto points as a table, the per-class IoU of every trial at its final round
      (``class_iou_table``, cells shaded by IoU), and the per-trial summary.
    """
    curves = method_curves(rows)
    fig = curves_figure(curves, source_only, oracle)
    front = pareto_front(curves)
    pareto_view = front[["curve", "point_label", "round", "trials", "clicks", "labeled_fraction", "miou"]].rename(
        columns={"point_label": "budget"}
    )
    summary = summary_table(rows, source_only=source_only, oracle=oracle)
    classes = class_iou_table(rows)
    class_columns = list(classes.columns[6:])
    class_formats = {**_NUMBER_FORMATS, **dict.fromkeys(class_columns, _fmt)}
    note = (
        "One curve per method (rule) and setting of the other swept keys, through every budget and round "
        "of its trials (averaged over seeds; error bars: standard deviation), from the source-only model. Each "
        "point is labeled with its budget. Hover a point for details; click a legend entry to hide a curve, "
        "double-click to show it alone. The dashed black step line is the Pareto front in clicks: the points "
        "no other point beats with as few clicks."
    )
    sections = [
        ("Pareto front in clicks", _html_table(pareto_view, "pareto", _NUMBER_FORMATS)),
        (
            "Per-class IoU at each trial's final round",
            '<p class="note">Cells shaded by IoU; n/a: a class absent from the validation images and never '
            "predicted.</p>\n" + _html_table(classes, "class-iou", class_formats, heat=[*class_columns, "miou"]),
        ),
        ("Final round of each trial", _html_table(summary, "summary", _NUMBER_FORMATS)),
    ]
    return _write_page(html_path, title, note, fig, "curves", sections)
