"""Quality benchmark: the shape of LabOR's Table 1 and Tzeng et al.'s ablation on the bundled domains.

For each seed, one Tune sweep through the product's own path (``orchestrator.sweep.run_sweep``: the
cached source model, the oracle reference, Ray actors ranking the pool, Ray Train adapting, MLflow
logging) runs every row below as one trial of one round:

- unsupervised adaptation: AdaptSeg output-space adversarial loss alone, domain confusion alone;
- every point selector at every point budget (points per image) and every region selector at
  every pixel budget (a fraction of all pool pixels, spent across the pool);
- Tzeng et al.'s ablation with LabOR PPL points: the confusion weight, the soft-label temperature,
  and the semi-supervised case where some classes are never labeled in the target domain (soft
  labels on and off; the mIoU of those classes is what soft labels are for).

Source-only and the oracle (every pool pixel labeled) come from the same sweep. The headline is
the fraction of the gap closed, (mIoU - source-only) / (oracle - source-only), per seed, then the
mean and the spread (sample standard deviation) over seeds. Writes ``docs/BENCHMARKS.md`` and the
budget-curve image next to it, and logs both to MLflow (experiment ``quality``).

    python -m benchmarks.quality            # 3 seeds, the full grid (about an hour on 2 CPUs)
    python -m benchmarks.quality --quick    # 1 seed, a few rows (about 10 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import machine_line
from orchestrator.config import ConfigError, ExperimentConfig, load_config, with_absolute_paths, with_overrides
from trainers.data import CLASS_SETS

ROOT = Path(__file__).resolve().parents[1]
POINT_SELECTORS = ("random", "entropy", "margin", "region_impurity", "labor_ppl")
REGION_SELECTORS = ("random_regions", "region_impurity_regions", "labor_spl")
# What each selector is compared against at the same budget.
RANDOM_OF_KIND = {"points": "random", "regions": "random_regions"}
# The goals' pairs (LabOR against random at the same budget): their budget curves get extra budgets.
CURVE_SELECTORS = ("random", "labor_ppl", "random_regions", "labor_spl")
# Never labeled in the semi-supervised rows: thin or small things (the classes soft labels help most
# in Tzeng et al.'s Office experiments are the ones without target labels; here, a third of them).
WITHHELD_CLASSES = ("pole", "traffic_sign", "person")


@dataclass(frozen=True)
class Plan:
    """What one benchmark run covers."""

    seeds: tuple[int, ...]
    point_budgets: tuple[int, ...]          # points per image
    pixel_budgets: tuple[float, ...]        # fraction of all pool pixels
    point_selectors: tuple[str, ...] = POINT_SELECTORS
    region_selectors: tuple[str, ...] = REGION_SELECTORS
    unsupervised: bool = True
    ablation_seeds: tuple[int, ...] = (0,)  # the Tzeng ablation runs on these seeds only
    confusion_weights: tuple[float, ...] = (0.0, 1.0)   # besides the default 0.1
    temperatures: tuple[float, ...] = (1.0, 8.0)        # besides the default 2
    ablation_points: int = 10
    two_round_points: int = 0   # > 0: random and LabOR PPL in 2 rounds of this many points (every seed)
    two_round_pixel_budget: float = 0.0  # > 0: random squares and LabOR SPL in 2 rounds of this pixel fraction each
    curve_point_budgets: tuple[int, ...] = ()      # extra point budgets of CURVE_SELECTORS
    curve_pixel_budgets: tuple[float, ...] = ()    # extra pixel budgets of CURVE_SELECTORS

    def budgets_of(self, selector: str) -> list:
        """The budgets ``selector`` runs at: points per image, or fractions of the pool's pixels."""
        kind_budgets, extra = ((self.point_budgets, self.curve_point_budgets) if selector in self.point_selectors
                               else (self.pixel_budgets, self.curve_pixel_budgets))
        return sorted({*kind_budgets, *(extra if selector in CURVE_SELECTORS else ())})


# Sized for 2 CPUs: every row is one adaptation job of the default 300 steps (about 45 s of wall time
# here, two at a time, as a last round does not train the selector), and fewer steps would not do --
# with 100 steps even random points closed 0.91-0.98 of the gap (docs/measurements.md, Calibration), leaving
# selection nothing to show. To fit an hour, the uncertainty baselines run at 40 points only (they
# trailed random at 10 and 40 points alike in the first full run), random and LabOR PPL at 10 and 40,
# and the two-round pairs (points and regions) on every seed, since they are where LabOR's selector
# has learned the target (LabOR's two-round trial costs about three one-round trials: its first round
# trains the selector; random's about two). ``--set selection.region_spread=score`` reruns every region
# row with the budget spread by score instead of per-image shares.
FULL = Plan(seeds=(0, 1, 2), point_budgets=(40,), pixel_budgets=(0.022,), curve_point_budgets=(10,),
            two_round_points=20, two_round_pixel_budget=0.011)
QUICK = Plan(seeds=(0,), point_budgets=(10,), pixel_budgets=(0.022,), point_selectors=("random", "labor_ppl"),
             region_selectors=("random_regions", "labor_spl"), unsupervised=False, ablation_seeds=())

# Settings of every benchmark sweep (on top of configs/default.yaml and the user's --set).
SWEEP_SETTINGS = {
    "sweep.name": "quality",
    "sweep.oracle_reference": True,
    "sweep.scheduler": "fifo",
    "sweep.num_samples": 1,
    "selection.rounds": 1,
    "ranking.num_actors": 1,  # two trials run at once on 2 CPUs; one actor each keeps both busy
}


def budget_label(points: int | None = None, fraction: float | None = None, rounds: int = 1) -> str:
    """How a budget reads in the tables and goals: "40 pts/img", "2.2%", per round "2 x 20 pts/img"."""
    per_round = f"{points} pts/img" if points is not None else f"{100 * fraction:g}%"
    return f"{rounds} x {per_round}" if rounds > 1 else per_round


@dataclass(frozen=True)
class Row:
    """One row of a table: a label, the config keys of its trial, and where it is reported."""

    table: str      # "main" | "confusion" | "temperature" | "semi"
    label: str
    budget: str
    keys: dict
    value: float | None = None  # the ablated setting, in the ablation tables

    def case(self) -> dict:
        return dict(self.keys)

    def one_round_budget(self) -> str:
        """The budget label of one round that buys what all of this row's rounds buy together."""
        rounds = self.keys.get("selection.rounds", 1)
        if "selection.points_per_image" in self.keys:
            return budget_label(points=rounds * self.keys["selection.points_per_image"])
        return budget_label(fraction=rounds * self.keys["selection.budget_fraction"])


def plan_rows(plan: Plan, seed: int | None = None) -> list[Row]:
    """The rows of the plan; with ``seed``, only those that run on that seed."""
    rows = []
    ablation = seed is None or seed in plan.ablation_seeds
    if plan.unsupervised:  # every seed: they are the lower reference of the curve
        rows += [
            Row("main", "AdaptSeg adversarial only (no labels)", "0",
                {"selection.selector": "none", "adapt.confusion_weight": 0.0, "adapt.soft_label_weight": 0.0}),
            Row("main", "domain confusion only (no labels)", "0",
                {"selection.selector": "none", "adapt.adversarial_weight": 0.0, "adapt.soft_label_weight": 0.0}),
        ]
    for selector in plan.point_selectors:
        for points in plan.budgets_of(selector):
            rows.append(Row("main", selector, budget_label(points=points),
                            {"selection.selector": selector, "selection.points_per_image": points}))
    for selector in plan.region_selectors:
        for fraction in plan.budgets_of(selector):
            rows.append(Row("main", selector, budget_label(fraction=fraction),
                            {"selection.selector": selector, "selection.budget_fraction": fraction}))
    ppl = {"selection.selector": "labor_ppl", "selection.points_per_image": plan.ablation_points}
    ablation_budget = budget_label(points=plan.ablation_points)
    for weight in plan.confusion_weights if ablation else ():
        rows.append(Row("confusion", f"confusion weight {weight:g}", ablation_budget,
                        {**ppl, "adapt.confusion_weight": weight}, weight))
    for temperature in plan.temperatures if ablation else ():
        rows.append(Row("temperature", f"temperature {temperature:g}", ablation_budget,
                        {**ppl, "adapt.soft_label_temperature": temperature}, temperature))
    for soft in (0.0, 0.1) if ablation else ():
        rows.append(Row("semi", f"soft labels {'on (0.1)' if soft else 'off'}", ablation_budget,
                        {**ppl, "selection.unlabeled_classes": list(WITHHELD_CLASSES), "adapt.soft_label_weight": soft}))
    # LabOR's selector learns the target between rounds (pseudo labels from G, MCD); the second round
    # ranks with it. Random points (squares) in the same two rounds are its rival.
    for selector in ("random", "labor_ppl") if plan.two_round_points else ():
        rows.append(Row("rounds", selector, budget_label(points=plan.two_round_points, rounds=2),
                        {"selection.selector": selector, "selection.points_per_image": plan.two_round_points,
                         "selection.rounds": 2}))
    for selector in ("random_regions", "labor_spl") if plan.two_round_pixel_budget else ():
        rows.append(Row("rounds", selector, budget_label(fraction=plan.two_round_pixel_budget, rounds=2),
                        {"selection.selector": selector, "selection.budget_fraction": plan.two_round_pixel_budget,
                         "selection.rounds": 2}))
    # The default-valued ablation points are the main table's PPL row at the same budget; run once.
    unique, seen = [], set()
    for row in rows:
        signature = json.dumps(row.keys, sort_keys=True)
        if signature not in seen:
            seen.add(signature)
            unique.append(row)
    return unique


def main_table_reference(plan: Plan) -> dict:
    """The PPL row the ablation tables share their default values with."""
    return {"selection.selector": "labor_ppl", "selection.points_per_image": plan.ablation_points}


def sweep_config(plan: Plan, seed: int, output_dir: Path, overrides: list[str]) -> ExperimentConfig:
    cfg = load_config(None, overrides)
    if cfg.storage.uri:
        raise ConfigError("storage.uri", "the quality benchmark reads its sweeps' results from output_dir on this "
                                         "machine; run it without storage.uri")
    # Longest trials first (Tune starts a grid's trials in its order): two trials run at once, and a
    # two-round trial started last would leave the other slot idle for most of its length.
    rows = sorted(plan_rows(plan, seed), key=lambda row: -row.keys.get("selection.rounds", 1))
    cfg = with_overrides(cfg, {**SWEEP_SETTINGS, "seed": seed, "output_dir": str(output_dir / f"seed-{seed}"),
                               "sweep.search_space": {"cases": {"grid": [row.case() for row in rows]}}})
    return with_absolute_paths(cfg)


def trial_results(cfg: ExperimentConfig) -> list[tuple[dict, dict]]:
    """(trial config keys that were swept, final-round metrics) of every finished trial of a sweep."""
    from orchestrator.experiment import PROGRESS_FILE

    out = []
    for trial in sorted((Path(cfg.output_dir) / cfg.sweep.name / "trials").glob("*")):
        progress, config = trial / PROGRESS_FILE, trial / "config.json"
        if not (progress.is_file() and config.is_file()):
            continue
        record, trial_config = json.loads(progress.read_text()), json.loads(config.read_text())
        if record["progress"]["round"] != trial_config["selection"]["rounds"]:
            continue  # unfinished
        out.append((trial_config, record["metrics"]))
    return out


def flat_value(config: dict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def reference_metrics(cfg: ExperimentConfig) -> tuple[dict, dict]:
    """(source-only, oracle) target metrics of a finished sweep, from their caches."""
    from orchestrator.experiment import ORACLE_CACHE_SECTIONS, source_cache_key

    root = Path(cfg.output_dir)
    source = json.loads((root / "source-models" / source_cache_key(cfg) / "metrics.json").read_text())
    oracle = json.loads((root / "oracle-references" / cfg.hash(*ORACLE_CACHE_SECTIONS) / "metrics.json").read_text())
    return source, oracle


@dataclass
class Measured:
    """One row's figures over seeds."""

    row: Row
    seeds: list[int] = field(default_factory=list)  # the seed of each figure below, in order
    miou: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    labeled_fraction: list[float] = field(default_factory=list)
    clicks_per_image: list[float] = field(default_factory=list)
    withheld_miou: list[float] = field(default_factory=list)


def collect(plan: Plan, configs: dict[int, ExperimentConfig]) -> tuple[list[Measured], dict[str, list[float]]]:
    rows = plan_rows(plan)
    measured = {id(row): Measured(row) for row in rows}
    references: dict[str, list[float]] = {"source": [], "oracle": [], "source_withheld": [], "oracle_withheld": []}
    for seed, cfg in configs.items():
        source, oracle = reference_metrics(cfg)
        low, high = source["target/miou"], oracle["target/miou"]
        if high <= low:
            print(f"[quality] seed {seed}: the oracle ({high:.3f}) is not above source-only ({low:.3f}); "
                  f"gap closed is undefined for this seed", file=sys.stderr)
        references["source"].append(low)
        references["oracle"].append(high)
        references["source_withheld"].append(_class_mean(source, WITHHELD_CLASSES))
        references["oracle_withheld"].append(_class_mean(oracle, WITHHELD_CLASSES))
        pool_images = None
        for config, metrics in trial_results(cfg):
            row = next((r for r in rows if all(flat_value(config, k) == v for k, v in r.keys.items())
                        and _is_default_elsewhere(config, r, cfg)), None)
            if row is None:
                continue
            m = measured[id(row)]
            m.seeds.append(seed)
            m.miou.append(metrics["target/miou"])
            m.gap.append((metrics["target/miou"] - low) / (high - low) if high > low else float("nan"))
            m.labeled_fraction.append(metrics["budget/labeled_fraction"])
            pool_images = pool_images or _pool_images(cfg)
            m.clicks_per_image.append(metrics["budget/clicks"] / pool_images)
            m.withheld_miou.append(_class_mean(metrics, WITHHELD_CLASSES))
    return [measured[id(row)] for row in rows], references


def _is_default_elsewhere(config: dict, row: Row, cfg: ExperimentConfig) -> bool:
    """A trial belongs to a row only if the keys other rows vary are at their defaults for it."""
    varied = {"adapt.confusion_weight", "adapt.soft_label_temperature", "adapt.soft_label_weight",
              "adapt.adversarial_weight", "selection.unlabeled_classes", "selection.rounds",
              "selection.region_spread"}
    return all(flat_value(config, key) == flat_value(cfg.to_dict(), key) for key in varied - set(row.keys))


def _class_mean(metrics: dict, classes) -> float:
    values = [metrics[f"target/iou/{name}"] for name in classes if f"target/iou/{name}" in metrics]
    return sum(values) / len(values) if values else float("nan")


def _pool_images(cfg: ExperimentConfig) -> int:
    from trainers.data import build_domains

    return len(build_domains(cfg.to_dict()["data"]).target_pool)


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; NaN for both when a value is undefined (a seed whose gap
    closed is undefined, a class no model predicted), as ``statistics.stdev`` raises on NaN."""
    if not values or any(value != value for value in values):
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    mean, spread = mean_spread(values)
    if mean != mean:  # NaN: no finished trial
        return "n/a"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def paired_margins(ours: Measured, rival: Measured) -> str:
    """Gap closed by ``ours`` minus ``rival``'s on each seed both ran: the two rows share that seed's
    source model, domains and batches, so the per-seed difference shows what the means' spread hides."""
    rival_gap = dict(zip(rival.seeds, rival.gap))
    margins = [f"{gap - rival_gap[seed]:+.2f}" for seed, gap in zip(ours.seeds, ours.gap) if seed in rival_gap]
    return "per seed " + ", ".join(margins) if margins else "no seed in common"


@dataclass(frozen=True)
class GoalCheck:
    text: str
    met: bool | None  # None: cannot be judged (one seed has no spread)


def goal_checks(plan: Plan, measured: list[Measured]) -> list[GoalCheck]:
    """Issue 9's goals: PPL at the largest point budget >= 0.85 of the gap, SPL at 2.2% >= 0.90 (each in
    one round, and in two rounds when the plan has them), each beating random selection at the same
    budget (and rounds) by more than the seed spread."""
    def find(selector, budget):
        return next((m for m in measured if m.row.table in ("main", "rounds")
                     and m.row.keys.get("selection.selector") == selector and m.row.budget == budget), None)

    checks = []
    goals = [("labor_ppl", budget_label(points=max(plan.point_budgets)), 0.85),
             ("labor_spl", budget_label(fraction=0.022), 0.90)]
    # The same goals for LabOR's own setting, its selector trained on the target, at the same total budget.
    if plan.two_round_points:
        goals.insert(1, ("labor_ppl", budget_label(points=plan.two_round_points, rounds=2), 0.85))
    if plan.two_round_pixel_budget:
        goals.append(("labor_spl", budget_label(fraction=plan.two_round_pixel_budget, rounds=2), 0.90))
    for selector, budget, goal in goals:
        ours = find(selector, budget)
        if ours is None or not ours.gap:
            continue
        kind = "points" if selector == "labor_ppl" else "regions"
        rival = find(RANDOM_OF_KIND[kind], budget)
        mean, spread = mean_spread(ours.gap)
        checks.append(GoalCheck(f"{selector} at {budget} closes {mean:.2f} of the gap (goal >= {goal:.2f})",
                                mean >= goal))
        if rival is not None and rival.gap:
            rival_mean, rival_spread = mean_spread(rival.gap)
            margin = mean - rival_mean
            if min(len(ours.gap), len(rival.gap)) < 2:
                checks.append(GoalCheck(f"{selector} beats {rival.row.label} at {budget} by {margin:+.2f} of the "
                                        f"gap (one seed: no spread to judge the margin by)", None))
                continue
            needed = max(spread, rival_spread)
            checks.append(GoalCheck(f"{selector} beats {rival.row.label} at {budget} by {margin:+.2f} of the gap "
                                    f"(goal: more than the seed spread, {needed:.2f}; {paired_margins(ours, rival)})",
                                    margin > needed))
    return checks


def write_budget_curve(plan: Plan, measured: list[Measured], references: dict, path: Path) -> list[str]:
    """Gap closed against labeled pixels (% of the pool), one line per selector, error bars = spread.
    Returns the legend's labels (the series drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axis = plt.subplots(figsize=(8, 4.8), dpi=120)
    selectors = [*plan.point_selectors, *plan.region_selectors]
    colours = plt.get_cmap("tab10")
    for index, selector in enumerate(selectors):
        points = sorted(((statistics.fmean(m.labeled_fraction) * 100, *mean_spread(m.gap)) for m in measured
                         if m.row.table == "main" and m.row.label == selector and m.gap))
        if not points:
            continue
        xs, ys, spreads = zip(*points)
        style = "-o" if selector in plan.point_selectors else "--s"
        axis.errorbar(xs, ys, yerr=spreads, fmt=style, color=colours(index), capsize=3, label=selector)
    # Two-round rows: one point each, in their selector's colour, with a hollow marker.
    for m in measured:
        selector = m.row.keys.get("selection.selector")
        if m.row.table == "rounds" and m.gap and selector in selectors:
            mean, spread = mean_spread(m.gap)
            axis.errorbar([statistics.fmean(m.labeled_fraction) * 100], [mean], yerr=[spread], fmt="D",
                          mfc="white", color=colours(selectors.index(selector)), capsize=3,
                          label=f"{selector}, {m.row.budget.replace(' pts/img', '')} (2 rounds)")
    # Horizontal references, labeled at the left edge (x in axes coordinates, y in data coordinates).
    at_left = axis.get_yaxis_transform()
    for m in measured:
        if m.row.keys.get("selection.selector") == "none" and m.gap:
            level = statistics.fmean(m.gap)
            axis.axhline(level, color="grey", linestyle=":", linewidth=1)
            axis.text(0.01, level + 0.01, m.row.label, transform=at_left, fontsize=7, color="grey")
    axis.axhline(1.0, color="black", linewidth=1)
    axis.text(0.01, 1.01, "oracle (every pool pixel labeled)", transform=at_left, fontsize=7)
    axis.axhline(0.0, color="black", linewidth=1)
    axis.text(0.01, 0.01, "source only", transform=at_left, fontsize=7)
    axis.set_xscale("log")
    budgets = sorted({round(statistics.fmean(m.labeled_fraction) * 100, 3) for m in measured
                      if m.labeled_fraction and m.row.keys.get("selection.selector") != "none"})
    axis.set_xticks(budgets or [1.0])  # the budgets measured, not decades
    axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}%"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_ylim(top=1.1)
    axis.set_xlabel("labeled target pixels (% of the pool, log scale)")
    axis.set_ylabel("fraction of the gap closed\n(mIoU - source-only) / (oracle - source-only)")
    axis.set_title(f"Budget curve on the bundled synthetic domains ({len(plan.seeds)} seed(s), mean ± spread)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, ncol=2, loc="lower right")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    figure.savefig(tmp)
    labels = axis.get_legend_handles_labels()[1]
    plt.close(figure)
    os.replace(tmp, path)
    return labels


def _curve_note(plan: Plan, kind: str) -> str:
    """" (random, labor_ppl also at 10)": the extra budgets of the goals' pair of one kind, if any."""
    selectors, budgets = ((plan.point_selectors, [str(b) for b in plan.curve_point_budgets]) if kind == "points"
                          else (plan.region_selectors, [budget_label(fraction=b) for b in plan.curve_pixel_budgets]))
    pairs = [s for s in CURVE_SELECTORS if s in selectors]
    return f" ({', '.join(pairs)} also at {', '.join(budgets)})" if pairs and budgets else ""


SPREAD_WORDS = {"share": "every image gets the same share of its own candidates, e.g. of its inconsistency mask "
                          "for LabOR SPL, as the paper labels the mask of every image",
                "score": "the best-scored regions of the pool, wherever they are"}


def _cost_cells(m: Measured) -> str:
    """A row's annotation cost as two table cells: labeled share of the pool's pixels, clicks per image."""
    fraction = f"{100 * statistics.fmean(m.labeled_fraction):.3g}%" if m.labeled_fraction else "n/a"
    clicks = f"{statistics.fmean(m.clicks_per_image):.1f}" if m.clicks_per_image else "n/a"
    return f"{fraction} | {clicks}"


def render_markdown(plan: Plan, quick: bool, measured: list[Measured], references: dict, checks: list[GoalCheck],
                    cfg: ExperimentConfig, minutes: float, image_name: str, command: str) -> str:
    height, width = cfg.data.height, cfg.data.width
    pool = _pool_images(cfg)
    src, ora = fmt(references["source"]), fmt(references["oracle"])
    lines = [
        "# Benchmarks: quality on the bundled synthetic domains",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} ({machine_line()}); the sweeps took "
        f"{minutes:.0f} minutes. {'A quick run: one seed, a few rows; ' if quick else ''}"
        f"seeds {', '.join(map(str, plan.seeds))}; figures are mean ± sample standard deviation over seeds.",
        "",
        "## What ran",
        "",
        f"- Domains: the bundled synthetic source (game style) and target (camera style), {height}x{width} "
        f"pixels, {pool} target pool images, {cfg.data.synthetic.target_val_images} target validation images, "
        f"{len(CLASS_SETS[cfg.data.class_set])} classes.",
        f"- Model: `{cfg.model.name}` (width {cfg.model.width}); source training {cfg.source.steps} steps; "
        f"each row is one round of selection then {cfg.adapt.steps} adaptation steps (batch "
        f"{cfg.adapt.batch_size} source + {cfg.adapt.batch_size} target), through the product's own path: one "
        f"Tune sweep per seed, Ray actors ranking, Ray Train adapting, MLflow experiment `quality`.",
        f"- Losses of every labeled row: source CE + labeled-target CE + AdaptSeg adversarial "
        f"({cfg.adapt.adversarial_weight:g}) + Tzeng confusion ({cfg.adapt.confusion_weight:g}) + soft labels "
        f"({cfg.adapt.soft_label_weight:g}, T={cfg.adapt.soft_label_temperature:g}). LabOR's selector S ranks "
        f"with the source model's heads: its target losses (pseudo labels, MCD) train it for a later round, "
        f"and with one round nothing ranks after, so they are skipped (the segmenter is the same either way).",
        f"- Budgets: points per image for point selectors; a fraction of all pool pixels, spent across the "
        f"pool, for region selectors (`selection.region_spread={cfg.selection.region_spread}`: "
        f"{SPREAD_WORDS[cfg.selection.region_spread]}). A {height}x{width} image has {height * width} pixels, so 40 points are "
        f"{100 * 40 / (height * width):.2f}% of it; on LabOR's 1280x640 Cityscapes crops 40 points are 0.005%. "
        f"The bundled images are 100x smaller, so a point here is worth 100x more of the image.",
        f"- Gap closed = (mIoU - source-only) / (oracle - source-only), per seed. Source-only {src}, oracle "
        f"(every pool pixel labeled, same adaptation) {ora}.",
        "",
        "## Goals (issue 9)",
        "",
    ]
    verdicts = {True: "met", False: "MISSED", None: "n/a"}
    lines += [f"- {verdicts[c.met]}: {c.text}" for c in checks] or ["- (no goal rows in this run)"]
    lines += [
        "",
        "## Main table",
        "",
        f"![budget curve]({image_name})",
        "",
        "| method | budget | labeled pixels | clicks per image | target mIoU | gap closed |",
        "|---|---|---|---|---|---|",
        f"| source only | 0 | 0% | 0 | {src} | 0 |",
    ]
    for m in measured:
        if m.row.table == "main":
            lines.append(f"| {m.row.label} | {m.row.budget} | {_cost_cells(m)} | {fmt(m.miou)} | {fmt(m.gap, 2)} |")
    lines += [f"| oracle | every pool pixel | 100% | - | {ora} | 1 |", ""]

    reference = next((m for m in measured if m.row.keys == main_table_reference(plan)), None)
    for table, title, what, default in (
            ("confusion", "Tzeng ablation: domain confusion weight", "confusion weight lambda",
             cfg.adapt.confusion_weight),
            ("temperature", "Tzeng ablation: soft-label temperature", "temperature T", cfg.adapt.soft_label_temperature)):
        entries = [(m.row.value, "", m) for m in measured if m.row.table == table]
        if not entries:
            continue
        if reference is not None:
            entries.append((default, " (default)", reference))
        lines += [f"## {title}", "", f"LabOR PPL, {plan.ablation_points} points per image; the other losses at "
                                     f"their defaults. The default ({default:g}) is the main table's row.", "",
                  f"| {what} | target mIoU | gap closed |", "|---|---|---|"]
        for value, note, m in sorted(entries, key=lambda entry: entry[0]):
            lines.append(f"| {value:g}{note} | {fmt(m.miou)} | {fmt(m.gap, 2)} |")
        lines.append("")
    semi = [m for m in measured if m.row.table == "semi"]
    if semi:
        lines += ["## Tzeng ablation: classes without target labels", "",
                  f"The oracle never reveals {', '.join(WITHHELD_CLASSES)} (the pixels selected there are paid "
                  f"for and stay unlabeled); LabOR PPL, {plan.ablation_points} points per image. Soft labels carry "
                  f"the source's class relations to the target; the withheld classes' mIoU is their test.", "",
                  "| soft labels | target mIoU (all classes) | mIoU of the withheld classes |", "|---|---|---|",
                  f"| source only | {src} | {fmt(references['source_withheld'])} |"]
        for m in semi:
            lines.append(f"| {m.row.label.removeprefix('soft labels ')} | {fmt(m.miou)} | {fmt(m.withheld_miou)} |")
        lines += [f"| oracle (every class labeled) | {ora} | {fmt(references['oracle_withheld'])} |", ""]
    two_rounds = [m for m in measured if m.row.table == "rounds"]
    if two_rounds:
        single = {(m.row.label, m.row.budget): m for m in measured if m.row.table == "main"}
        lines += ["## LabOR with a selector trained on the target: two rounds", "",
                  f"Round 1 ranks with the source model's selector, as in the main table; its adaptation also "
                  f"trains the selector S on the target (pseudo labels from G, the MCD discrepancy), and round 2 "
                  f"ranks with that S -- LabOR's own setting. Each round adapts {cfg.adapt.steps} steps, so these "
                  f"rows train twice as long as the main table's one-round rows at the same total budget.", "",
                  "| selector | budget | labeled pixels | clicks per image | target mIoU | gap closed | "
                  "one round of the same total budget (gap closed) |", "|---|---|---|---|---|---|---|"]
        for m in two_rounds:
            reference = single.get((m.row.label, m.row.one_round_budget()))
            lines.append(f"| {m.row.label} | {m.row.budget} | {_cost_cells(m)} | {fmt(m.miou)} | {fmt(m.gap, 2)} | "
                         f"{fmt(reference.gap, 2) if reference else 'n/a'} |")
        lines.append("")
    lines += [
        "## What these figures do and do not show",
        "",
        "- The bundled domains are generated street scenes, not GTA5 and Cityscapes: the ranking of methods "
        "and the shape of the budget curve are what carry over, not the mIoU values. For reference, on "
        "GTA5 to Cityscapes with DeepLab-V2, LabOR SPL at 2.2% closes about 0.88 of the gap (66.6 mIoU "
        "against source-only 36.6 and an oracle of 70.5) and the region-impurity method about 0.97 (69.6).",
        f"- Every row, and the oracle, trains {cfg.adapt.steps} adaptation steps (fewer would not do: with 100 "
        f"steps even random points closed 0.91-0.98 of the gap). For 2 CPUs the grid is small: point budgets "
        f"{', '.join(map(str, plan.point_budgets))} per image{_curve_note(plan, 'points')}, pixel budgets "
        f"{', '.join(f'{100 * b:g}%' for b in plan.pixel_budgets)}{_curve_note(plan, 'regions')}, and the Tzeng "
        f"ablation on seed(s) {', '.join(map(str, plan.ablation_seeds)) or '(none)'} only (no spread there).",
        "- The main table is one round of selection from the source model; only the two-round table (if "
        "present) lets LabOR's selector learn the target first.",
        "- Spread is over seeds (each seed: its own source model, training and selection draws; the generated "
        "domains are the same, `data.synthetic.seed`), with only " + (f"{len(plan.seeds)} seeds: " if len(plan.seeds) > 1 else "one seed: no ")
        + "spread" + (" estimates are rough." if len(plan.seeds) > 1 else " estimate at all."),
        "",
        f"Reproduce: `{command}` (results under the printed output folder; each seed's sweep keeps its own "
        f"report and MLflow runs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, four rows (about 10 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3, quick: 1)")
    parser.add_argument("--output-dir", default="runs/benchmarks", help="sweeps go here (default runs/benchmarks)")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where BENCHMARKS.md and the image go")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: as the sweep's)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished sweeps")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-sweep progress (Tune's table, trial lines)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every sweep (as for orchestrator.sweep)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seeds is not None:
        if args.seeds < 1:
            print("error: --seeds must be >= 1", file=sys.stderr)
            return 2
        plan = Plan(**{**plan.__dict__, "seeds": tuple(range(args.seeds))})
    output_dir = Path(args.output_dir).resolve() / ("quick" if args.quick else "full")
    try:
        configs = {seed: sweep_config(plan, seed, output_dir, args.overrides) for seed in plan.seeds}
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from orchestrator.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri, configs[plan.seeds[0]].tracking.uri)
    try:
        check_tracking_uri(tracking_uri)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        from trainers.data import DatasetError, check_domains

        try:
            check_domains(configs[plan.seeds[0]].to_dict()["data"], progress=print)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    timing = output_dir / RUN_RECORD
    started = time.perf_counter()
    if not args.report_only:
        from orchestrator.sweep import run_sweep

        output_dir.mkdir(parents=True, exist_ok=True)
        timing.write_text(json.dumps({"started": time.time()}))
        for number, (seed, cfg) in enumerate(configs.items(), start=1):
            print(f"[quality] seed {seed} ({number}/{len(configs)}): {len(plan_rows(plan, seed))} trials, "
                  f"{cfg.adapt.steps} adaptation steps each, into {cfg.output_dir}", flush=True)
            sweep_dir = Path(cfg.output_dir) / cfg.sweep.name
            resume = (sweep_dir / "sweep.json").is_file()  # an interrupted benchmark continues
            code = run_sweep(cfg, tracking_uri, num_cpus=args.num_cpus, quiet=args.quiet, resume=resume,
                             dashboard=False)  # no dashboard process taking CPU from the timed run
            if code not in (0,):
                print(f"[quality] seed {seed}: the sweep exited with {code}; rows of failed trials show n/a",
                      file=sys.stderr)
            print(f"[quality] seed {seed} done at {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        timing.write_text(json.dumps({**json.loads(timing.read_text()), "finished": time.time()}))
    minutes = run_minutes(output_dir)

    try:
        measured, references = collect(plan, configs)
    except FileNotFoundError as err:
        print(f"error: no finished benchmark sweep under '{output_dir}' ({Path(err.filename).name} missing); "
              f"run it without --report-only first", file=sys.stderr)
        return 2
    runs_on = [plan_rows(plan, seed) for seed in plan.seeds]
    missing = [f"{m.row.label} @ {m.row.budget}" for m in measured
               if len(m.miou) < sum(m.row in rows for rows in runs_on)]
    checks = goal_checks(plan, measured)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    stem = "quality-quick" if args.quick else "quality"
    image = docs / f"{stem}-budget-curve.png"
    write_budget_curve(plan, measured, references, image)
    command = "python -m benchmarks.quality" + (" --quick" if args.quick else "")
    text = render_markdown(plan, args.quick, measured, references, checks, configs[plan.seeds[0]], minutes,
                           image.name, command)
    if missing:
        text += "\nRows missing a seed (a trial failed or was not run): " + "; ".join(missing) + "\n"
    report = docs / ("BENCHMARKS-quick.md" if args.quick else "BENCHMARKS.md")
    tmp = report.with_name(f".{report.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, report)
    _log_to_mlflow(tracking_uri, report, image, measured, plan)
    print(text)
    print(f"[quality] wrote {report} and {image} in {minutes:.1f} min")
    return 0 if not missing else 1


RUN_RECORD = "benchmark-run.json"


def run_minutes(output_dir: Path) -> float:
    """Wall time of the benchmark run that produced the sweeps under ``output_dir``: from its own
    record, else from the files it wrote (first written to last trial result); NaN if unknown."""
    record = output_dir / RUN_RECORD
    if record.is_file():
        times = json.loads(record.read_text())
        if "finished" in times:
            return (times["finished"] - times["started"]) / 60
    written = [f.stat().st_mtime for f in output_dir.glob("seed-*/**/*") if f.is_file()]
    return (max(written) - min(written)) / 60 if written else float("nan")


def _log_to_mlflow(tracking_uri: str, report: Path, image: Path, measured: list[Measured], plan: Plan) -> None:
    """The report and the curve as artifacts of one run, and each row's mean gap closed as a metric.
    MLflow being away costs a warning, not the report (it is on disk already)."""
    try:
        _log_report(tracking_uri, report, image, measured, plan)
    except Exception as err:  # noqa: BLE001 -- any client or server failure
        print(f"[quality] could not log to MLflow ({type(err).__name__}: {err}); the report is in {report}",
              file=sys.stderr)


def _log_report(tracking_uri: str, report: Path, image: Path, measured: list[Measured], plan: Plan) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("quality") or client.get_experiment(client.create_experiment("quality"))
    run = client.create_run(experiment.experiment_id, run_name=f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"activeda.benchmark": "quality", "seeds": ",".join(map(str, plan.seeds))})
    status = "FAILED"
    try:
        for m in measured:
            if m.gap:
                key = "gap_closed/" + "".join(c if c.isalnum() or c in "._-/" else "_" for c in
                                              f"{m.row.table}/{m.row.label}/{m.row.budget}")
                client.log_metric(run.info.run_id, key[:250], statistics.fmean(m.gap))
        client.log_artifact(run.info.run_id, str(report))
        client.log_artifact(run.info.run_id, str(image))
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)


if __name__ == "__main__":
    sys.exit(main())
