"""The end of a sweep: one row per trial, the table printed, the rows of the report and the report itself."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiment_config import (
    CASES_AXIS,
    NO_SELECTION,
    ExperimentConfig,
    with_overrides,
)
from orchestrator.sweep.failures import storage_problem

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("activeda")


def _trial_dir(sweep_dir: Path, trial_id: str) -> Path:
    return sweep_dir / "trials" / trial_id


def round_rows(results, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per (trial, round) from every trial's reports: what the budget curve draws."""
    import pandas as pd

    frames = [
        trial_round_rows(
            str((result.metrics or {}).get("trial_id", Path(result.path).name)),
            dict(result.config or {}),
            result.metrics_dataframe,
            cfg,
        )
        for result in results
    ]
    frames = [frame for frame in frames if frame is not None]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop_duplicates(["trial_id", "round"], keep="last")


def trial_round_rows(trial_id: str, sampled: dict, history, cfg: ExperimentConfig):
    """One trial's reports (Tune's metrics history) as rows of the report; None without a round."""
    import pandas as pd

    if history is None or history.empty or "round" not in history:
        return None
    trial_cfg = with_overrides(cfg, sampled)
    return pd.DataFrame(
        {
            "trial_id": trial_id,
            "rule": trial_cfg.selection.rule,
            "setting": trial_setting(sampled),
            "budget": budget_label(trial_cfg),
            "round": history["round"].astype(int),
            "labeled_pixels": history["budget/labeled_pixels"],
            "labeled_fraction": history["budget/labeled_fraction"],
            "clicks": history["budget/clicks"],
            "miou": history["target/miou"],
            # Per-class IoU, for the report's table of every trial side by side.
            **{f"iou/{c[len('target/iou/') :]}": history[c] for c in history.columns if c.startswith("target/iou/")},
        }
    )


# Keys that make a trial's point on its method's curve, not its own curve: the method and the budget
# (the x axis), and the seed (averaged over).
NOT_A_SETTING = ("selection.rule", "selection.points_per_image", "selection.budget_fraction", "seed")


def trial_setting(sampled: dict) -> str:
    """The swept keys of a trial that set its curve apart from others of the same rule, e.g.
    ``confusion_weight=0.1, rounds=2`` ('' when the sweep varies nothing else)."""
    flat = {}
    for key, value in sampled.items():
        flat.update(value if key == CASES_AXIS and isinstance(value, dict) else {key: value})
    return ", ".join(
        f"{key.rpartition('.')[2]}={value}" for key, value in sorted(flat.items()) if key not in NOT_A_SETTING
    )


def budget_label(cfg: ExperimentConfig) -> str:
    if cfg.selection.rule == NO_SELECTION:
        return "no labels"
    if cfg.selection.spl_mode == "whole_mask":
        return "whole mask/round"
    if cfg.selection.budget_fraction > 0:
        return f"{100 * cfg.selection.budget_fraction:g}% of pixels/round"
    return f"{cfg.selection.points_per_image} points/image/round"


def write_sweep_report(
    results, cfg: ExperimentConfig, sweep_dir: Path, source_only: float | None, oracle: float | None, say
) -> Path | None:
    """The sweep's report folder: ``report.html`` (interactive: curves per method and setting, Pareto
    front in clicks, per-class IoU table), ``method_curves.png`` (the same curves as the picture MLflow
    shows), ``budget_curve.html`` (interactive: every trial on its own, round by round), the tables
    ``summary``, ``class_iou``, ``curves`` and ``pareto`` (CSV + parquet) and ``rounds.csv``."""
    from orchestrator.tracking.report import (
        budget_curve,
        class_iou_table,
        method_curves,
        method_curves_png,
        pareto_front,
        report_page,
        summary_table,
        write_summary,
        write_table,
    )

    rows = round_rows(results, cfg)
    if rows.empty:
        return None
    out = sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.sweep.name}: target mIoU against the annotation budget"
    budget_curve(
        rows,
        out / "budget_curve.html",
        source_only=source_only,
        oracle=oracle,
        title=f"{cfg.sweep.name}: every trial, round by round",
    )
    curves = method_curves(rows)
    method_curves_png(curves, out / "method_curves.png", source_only=source_only, oracle=oracle, title=title)
    page = report_page(rows, out / "report.html", source_only=source_only, oracle=oracle, title=title)
    write_summary(summary_table(rows, source_only=source_only, oracle=oracle), out)
    write_table(class_iou_table(rows), out, "class_iou")
    write_table(curves, out, "curves")
    write_table(pareto_front(curves), out, "pareto")
    rows.to_csv(out / "rounds.csv", index=False)
    say(f"report: {page} (curves, Pareto front, per-class IoU), {out / 'summary.csv'}")
    return out


def summarize(
    results,
    cfg: ExperimentConfig,
    source_metrics: dict,
    stopped_early: dict[str, int] | None = None,
    awaiting: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per trial. ``stopped_early`` (trial id -> round) are ASHA's stops: a result, not a failure;
    ``awaiting`` (trial id -> round) are trials that stopped to wait for people's labels of that round."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_cfg = with_overrides(cfg, dict((result.config or {}).items()))
        # A trial is done at its own last round: a search space or case may set selection.rounds.
        ok = result.error is None and metrics.get("round") == trial_cfg.selection.rounds
        stop_round = (stopped_early or {}).get(str(metrics.get("trial_id")))
        stopped = result.error is None and stop_round is not None and metrics.get("round") == stop_round
        waits_for = (awaiting or {}).get(str(metrics.get("trial_id")))
        rows.append(
            {
                "trial": metrics.get("trial_id", "?"),
                "rule": trial_cfg.selection.rule,
                "budget": budget_label(trial_cfg),  # points for point rules, a pixel share for regions
                "rounds": metrics.get("round", 0),
                "labeled px": int(metrics.get("budget/labeled_pixels", 0)),
                "labeled %": 100 * metrics.get("budget/labeled_fraction", 0.0),
                "mIoU": metrics.get("target/miou", math.nan),
                "status": (
                    "ok"
                    if ok
                    else f"stopped by asha after round {stop_round}"
                    if stopped
                    else f"waits for the annotations of round {waits_for}"
                    if waits_for is not None
                    else f"failed: {storage_problem(result.error) or type(result.error).__name__}"
                    if result.error
                    else "failed: incomplete"
                ),
                "sampled": result.config or {},
            }
        )
    rows.sort(key=lambda r: (-(r["mIoU"] if r["mIoU"] == r["mIoU"] else -1), r["trial"]))
    return rows


def format_table(rows: list[dict[str, Any]], source_metrics: dict, oracle_metrics: dict | None = None) -> str:
    header = (
        f"{'trial':<12} {'rule':<23} {'budget':<21} {'rounds':>6} {'labeled px':>10} "
        f"{'labeled %':>9} {'mIoU':>7} {'gain':>7} {'gap closed':>10}  status"
    )
    base = source_metrics.get("target/miou", math.nan)
    ceiling = (oracle_metrics or {}).get("target/miou", math.nan)
    lines = ["", f"source-only target mIoU: {base:.4f}"]
    if ceiling == ceiling:
        lines.append(f"oracle (every pool pixel labeled) target mIoU: {ceiling:.4f}")
    lines += [header, "-" * len(header)]
    for r in rows:
        closed = (r["mIoU"] - base) / (ceiling - base) if ceiling == ceiling and ceiling != base else math.nan
        lines.append(
            f"{r['trial']:<12} {r['rule']:<23} {r['budget']:<21} {r['rounds']:>6} "
            f"{r['labeled px']:>10} {r['labeled %']:>9.3f} {r['mIoU']:>7.4f} {r['mIoU'] - base:>+7.4f} "
            f"{closed:>10.2f}  {r['status']}"
        )
    return "\n".join(lines)
