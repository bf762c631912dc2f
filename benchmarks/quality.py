"""Quality benchmark: each method in its published procedure, at equal budget and equal training steps.

For each seed, one Tune sweep through the product's own path (``orchestrator.sweep.driver.run_sweep``: the
cached source model, the cached label-free warm-up, the oracle reference, Ray actors ranking the pool,
Ray Train adapting, MLflow logging) runs every row below as one trial. Every trial starts from the
same warmed-up models (G adapted without labels by AdaptSeg's adversarial loss; LabOR's selector network S
trained on G's pseudo labels with the MCD discrepancy: LabOR's order of work) and trains the same
adaptation steps in all (``adapt.total_steps``), whatever its number of rounds, so a difference in
mIoU is the selection's doing.

Rows (P = points per image, 40 by default, the papers' count of clicks per image):

- headline pairs, on every seed: LabOR PPL (P points, one round) against random points; LabOR SPL
  labeling the whole inconsistency mask of every image (one round; its cost is the outcome) against
  random squares buying the same number of pixels (measured per seed from the warmed-up selector
  before the sweep);
- the other rows, on the first seeds only: LabOR SPL at 2.2% against random squares at 2.2%; RIPU
  points (P per image over 5 rounds) and RIPU regions (2.2% over 5 rounds), as RIPU acquires during
  training; entropy at P points; PPL and random at the curve's other point budgets;
- references per seed: source only, the warm-up alone (no label), the oracle (every pool pixel
  labeled, the same steps from the same warmed-up models).

Gap closed = (mIoU - source-only) / (oracle - source-only), per seed. A method beats random when the
95% confidence interval of its paired margin (its gap closed minus random's, seed by seed; Student's
t over the seeds both ran) lies above 0; at least 5 seeds are needed to judge. Writes
``docs/BENCHMARKS.md`` (``--quick``: ``docs/BENCHMARKS-quick.md``) and the budget curve next to it,
and logs both to MLflow (experiment ``quality``).

    python -m benchmarks.quality            # 5 seeds: headline pairs on all, other rows on 2 (about an hour, 2 CPUs)
    python -m benchmarks.quality --quick    # 1 seed, the headline pairs only (about 10 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.common import machine_line
from experiment_config import ConfigError, ExperimentConfig, from_dict, load_config, with_absolute_paths, with_overrides
from trainers.data import CLASS_SETS
from trainers.files import atomic_write_text, staged

ROOT = Path(__file__).resolve().parents[1]
# Never labeled in the Tzeng ablation's semi-supervised rows: thin or small things.
WITHHELD_CLASSES = ("pole", "traffic_sign", "person")
# Seeds needed before a paired margin's interval may decide "beats random" (the rule).
MIN_SEEDS_TO_JUDGE = 5
GOAL_GAP_CLOSED = 0.90


@dataclass(frozen=True)
class Plan:
    """What one benchmark run covers."""

    seeds: tuple[int, ...]  # the headline pairs run on every seed
    other_seeds: tuple[int, ...] = ()  # the other rows run on these seeds only
    points: int = 40  # points per image of the point rows
    curve_points: tuple[int, ...] = (10,)  # more point budgets of PPL and random (other seeds)
    pixel_fraction: float = 0.022  # the region rows' budget (SPL at 2.2%, RIPU regions)
    ripu_rounds: int = 5  # RIPU acquires in 5 rounds during training
    total_steps: int = 300  # adaptation steps of every trial after the warm-up
    tzeng: bool = False  # Tzeng et al.'s ablation, on the first seed
    ablation_points: int = 10  # its PPL budget


# Sized for 2 CPUs (per seed on a quiet machine: source model about 1.5 min, warm-up about 3, oracle
# about 2, a one-round trial about 45 s of which two run at once, a 5-round RIPU trial about 2.5 min):
# five seeds of the four headline trials and two seeds of the other rows fit an hour.
FULL = Plan(seeds=(0, 1, 2, 3, 4), other_seeds=(0, 1))
QUICK = Plan(seeds=(0,), curve_points=())

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
    """How a budget reads: "40 pts/img", "2.2%", or per round "5 x 8 pts/img"."""
    per_round = f"{points} pts/img" if points is not None else f"{100 * fraction:.3g}%"
    return f"{rounds} x {per_round}" if rounds > 1 else per_round


@dataclass(frozen=True)
class Row:
    """One row: a stable id, how it reads, the config keys of its trial and what it is compared with."""

    id: str
    label: str
    procedure: str
    budget: str
    keys: dict
    rival: str | None = None  # the id of the random row at the same budget
    goal: bool = False  # a headline row with the goals
    table: str = "main"  # "main" | "confusion" | "temperature" | "semi"
    value: float | None = None  # the ablated setting, in the ablation tables

    def case(self) -> dict:
        return dict(self.keys)


def ppl_keys(points: int) -> dict:
    return {"selection.rule": "labor_ppl", "selection.points_per_image": points}


def plan_rows(plan: Plan, seed: int | None = None, matched_fraction: float | None = None) -> list[Row]:
    """The rows of the plan that run on ``seed`` (all rows when None). ``matched_fraction`` is the pixel
    share of the pool that LabOR SPL's whole mask buys on that seed: the budget of its random rival
    (the rival is left out while it is unknown)."""
    p, frac, rounds = plan.points, plan.pixel_fraction, plan.ripu_rounds
    one_round = "warm-up, 1 round"
    rows = [
        Row("ppl", "LabOR PPL", one_round, budget_label(points=p), ppl_keys(p), rival="random", goal=True),
        Row(
            "random",
            "random points",
            one_round,
            budget_label(points=p),
            {"selection.rule": "random", "selection.points_per_image": p},
        ),
        Row(
            "spl_mask",
            "LabOR SPL, whole mask",
            one_round,
            "whole mask",
            {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask"},
            rival="random_mask",
            goal=True,
        ),
    ]
    if matched_fraction:  # unknown before it is measured; 0 if the masks are empty (nothing to match)
        rows.append(
            Row(
                "random_mask",
                "random squares at SPL's cost",
                one_round,
                "= SPL's whole mask",
                {"selection.rule": "random_regions", "selection.budget_fraction": matched_fraction},
            )
        )
    others = seed is None or seed in plan.other_seeds
    if others:
        rows += [
            Row(
                "spl",
                "LabOR SPL",
                one_round,
                budget_label(fraction=frac),
                {"selection.rule": "labor_spl", "selection.budget_fraction": frac},
                rival="random_squares",
            ),
            Row(
                "random_squares",
                "random squares",
                one_round,
                budget_label(fraction=frac),
                {"selection.rule": "random_regions", "selection.budget_fraction": frac},
            ),
            Row(
                "ripu_points",
                "RIPU points",
                f"warm-up, {rounds} rounds",
                budget_label(points=p // rounds, rounds=rounds),
                {
                    "selection.rule": "region_impurity",
                    "selection.points_per_image": p // rounds,
                    "selection.rounds": rounds,
                },
                rival="random",
            ),
            Row(
                "ripu_regions",
                "RIPU regions",
                f"warm-up, {rounds} rounds",
                budget_label(fraction=frac / rounds, rounds=rounds),
                {
                    "selection.rule": "region_impurity_regions",
                    "selection.budget_fraction": frac / rounds,
                    "selection.rounds": rounds,
                },
                rival="random_squares",
            ),
            Row(
                "entropy",
                "entropy",
                one_round,
                budget_label(points=p),
                {"selection.rule": "entropy", "selection.points_per_image": p},
                rival="random",
            ),
        ]
        for points in plan.curve_points:
            rows += [
                Row(
                    f"ppl@{points}",
                    "LabOR PPL",
                    one_round,
                    budget_label(points=points),
                    ppl_keys(points),
                    rival=f"random@{points}",
                ),
                Row(
                    f"random@{points}",
                    "random points",
                    one_round,
                    budget_label(points=points),
                    {"selection.rule": "random", "selection.points_per_image": points},
                ),
            ]
    if plan.tzeng and (seed is None or seed == plan.seeds[0]):
        rows += tzeng_rows(plan)
    unique, seen = [], set()
    for row in rows:  # one trial per distinct case (e.g. the ablation's default is a curve row)
        signature = json.dumps(row.keys, sort_keys=True)
        if signature not in seen:
            seen.add(signature)
            unique.append(row)
    return unique


def tzeng_rows(plan: Plan) -> list[Row]:
    """Tzeng et al.'s ablation with LabOR PPL points: confusion weight, temperature, classes never labeled."""
    ppl, budget, out = ppl_keys(plan.ablation_points), budget_label(points=plan.ablation_points), []
    for weight in (0.0, 1.0):
        out.append(
            Row(
                f"confusion={weight:g}",
                f"confusion weight {weight:g}",
                "warm-up, 1 round",
                budget,
                {**ppl, "adapt.confusion_weight": weight},
                table="confusion",
                value=weight,
            )
        )
    for temperature in (1.0, 8.0):
        out.append(
            Row(
                f"temperature={temperature:g}",
                f"temperature {temperature:g}",
                "warm-up, 1 round",
                budget,
                {**ppl, "adapt.soft_label_temperature": temperature},
                table="temperature",
                value=temperature,
            )
        )
    for soft in (0.0, 0.1):
        out.append(
            Row(
                f"semi={soft:g}",
                f"soft labels {'on (0.1)' if soft else 'off'}",
                "warm-up, 1 round",
                budget,
                {**ppl, "selection.unlabeled_classes": list(WITHHELD_CLASSES), "adapt.soft_label_weight": soft},
                table="semi",
            )
        )
    return out


def base_config(plan: Plan, seed: int, output_dir: Path, overrides: list[str]) -> ExperimentConfig:
    """One seed's settings before its cases: what the source model, warm-up and oracle caches depend on."""
    cfg = load_config(None, overrides)
    if cfg.storage.uri:
        raise ConfigError(
            "storage.uri",
            "the quality benchmark reads its sweeps' results from output_dir on this "
            "machine; run it without storage.uri",
        )
    steps = (
        {}
        if any(pair.startswith("adapt.total_steps=") for pair in overrides)
        else {"adapt.total_steps": plan.total_steps}
    )  # the user's --set wins (e.g. a small run to try the path)
    cfg = with_overrides(
        cfg,
        {
            **SWEEP_SETTINGS,
            **steps,
            "seed": seed,
            "output_dir": str(output_dir / f"seed-{seed}"),
            "sweep.search_space": {},
        },
    )
    return with_absolute_paths(cfg)


def sweep_config(
    plan: Plan, seed: int, output_dir: Path, overrides: list[str], matched_fraction: float | None = None
) -> ExperimentConfig:
    """The seed's sweep: every row as a case of the ``cases`` axis, the longest trials first (Tune starts a
    grid in order; two trials run at once, and a long trial started last would leave a slot idle)."""
    cfg = base_config(plan, seed, output_dir, overrides)
    rows = sorted(plan_rows(plan, seed, matched_fraction), key=lambda row: -row.keys.get("selection.rounds", 1))
    return with_overrides(cfg, {"sweep.search_space": {"cases": {"grid": [row.case() for row in rows]}}})


MATCH_FILE = "spl-whole-mask.json"


def whole_mask_fraction(cfg: ExperimentConfig, checkpoint: str) -> dict:
    """Pixels of the pool that LabOR SPL's whole-mask round 1 buys with ``checkpoint``'s selector: ranked
    here with the same ``Ranker`` the actors run (a forward pass of S over the pool)."""
    from orchestrator.round.ranking import Ranker, shard_ids
    from trainers.labels import NO_LABELS

    spl = with_overrides(
        cfg, {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask", "selection.budget_fraction": 0.0}
    )
    ranker = Ranker(checkpoint, spl)
    pool_size = len(ranker.pool)
    pixels = sum(
        query.num_pixels
        for shard in shard_ids(list(range(pool_size)), cfg.ranking.images_per_shard)
        for _, query in ranker.rank(shard, NO_LABELS, 0)
    )
    return {"pixels": int(pixels), "fraction": pixels / (pool_size * cfg.data.height * cfg.data.width)}


def matched_fraction_of(cfg: ExperimentConfig) -> float | None:
    """The whole-mask fraction recorded for this seed's sweep (None before it was measured)."""
    path = Path(cfg.output_dir) / MATCH_FILE
    return json.loads(path.read_text())["fraction"] if path.is_file() else None


def trial_results(cfg: ExperimentConfig) -> list[tuple[dict, dict]]:
    """(trial config, final-round metrics) of every finished trial of a sweep."""
    from orchestrator.sweep.trainable import PROGRESS_FILE

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


def reference_metrics(cfg: ExperimentConfig) -> dict[str, dict]:
    """Source-only, warm-up and oracle target metrics of a finished sweep, from their caches."""
    from orchestrator.round.start_models import oracle_cache_key, source_cache_key, warmup_cache_key

    root = Path(cfg.output_dir)
    out = {
        "source": json.loads((root / "source-models" / source_cache_key(cfg) / "metrics.json").read_text()),
        "oracle": json.loads((root / "oracle-references" / oracle_cache_key(cfg) / "metrics.json").read_text()),
    }
    warmup = root / "warmup-models" / warmup_cache_key(cfg) / "metrics.json"
    out["warmup"] = json.loads(warmup.read_text()) if cfg.warmup.steps and warmup.is_file() else out["source"]
    return out


@dataclass
class Measured:
    """One row's figures over seeds (one entry per seed, in the order of ``seeds``)."""

    row: Row
    seeds: list[int] = field(default_factory=list)
    miou: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    labeled_fraction: list[float] = field(default_factory=list)
    clicks_per_image: list[float] = field(default_factory=list)
    withheld_miou: list[float] = field(default_factory=list)
    global_step: list[float] = field(default_factory=list)


REFERENCES = ("source", "warmup", "oracle")


def collect(plan: Plan, configs: dict[int, ExperimentConfig]) -> tuple[list[Measured], dict[str, list[float]]]:
    """Every row's figures over the seeds of ``configs``, and the references per seed (mIoU; the
    withheld classes' mIoU under ``<name>_withheld``; the warm-up's gap closed under ``warmup_gap``)."""
    measured: dict[str, Measured] = {}
    references: dict[str, list[float]] = {
        name: [] for name in (*REFERENCES, *(f"{r}_withheld" for r in REFERENCES), "warmup_gap")
    }
    pool_images = None
    for seed, cfg in configs.items():
        rows = plan_rows(plan, seed, matched_fraction_of(cfg))
        for row in rows:
            measured.setdefault(row.id, Measured(row))
        refs = reference_metrics(cfg)
        low, high = refs["source"]["target/miou"], refs["oracle"]["target/miou"]
        if high <= low:
            print(
                f"[quality] seed {seed}: the oracle ({high:.3f}) is not above source-only ({low:.3f}); "
                f"gap closed is undefined for this seed",
                file=sys.stderr,
            )

        def gap(miou: float) -> float:
            return (miou - low) / (high - low) if high > low else float("nan")

        for name in REFERENCES:
            references[name].append(refs[name]["target/miou"])
            references[f"{name}_withheld"].append(_class_mean(refs[name], WITHHELD_CLASSES))
        references["warmup_gap"].append(gap(refs["warmup"]["target/miou"]))
        # A trial is a row's when its whole config is the seed's with the row's keys set: a stray trial
        # (e.g. an earlier run in the same folder with other settings) belongs to no row.
        expected = {row.id: with_overrides(cfg, row.case()).flat() for row in rows}
        for config, metrics in trial_results(cfg):
            flat = _flat(config)
            row = next((r for r in rows if flat == expected[r.id]), None)
            if row is None:
                continue
            m = measured[row.id]
            pool_images = pool_images or _pool_images(cfg)
            m.seeds.append(seed)
            m.miou.append(metrics["target/miou"])
            m.gap.append(gap(metrics["target/miou"]))
            m.labeled_fraction.append(metrics["budget/labeled_fraction"])
            m.clicks_per_image.append(metrics["budget/clicks"] / pool_images)
            m.withheld_miou.append(_class_mean(metrics, WITHHELD_CLASSES))
            m.global_step.append(metrics.get("train/global_step", float("nan")))
    order = row_ids(plan)
    return sorted(measured.values(), key=lambda m: order.index(m.row.id)), references


def row_ids(plan: Plan) -> list[str]:
    """Every row id the plan can have, in table order (the matched rival included, whatever its budget)."""
    return [row.id for row in plan_rows(plan, None, matched_fraction=1.0)]


def _flat(config: dict) -> dict | None:
    """A trial's saved config, flattened; None when this version cannot read it (an old one)."""
    try:
        return from_dict(config).flat()
    except ConfigError:
        return None


def _class_mean(metrics: dict, classes) -> float:
    values = [metrics[f"target/iou/{name}"] for name in classes if f"target/iou/{name}" in metrics]
    return sum(values) / len(values) if values else float("nan")


def _pool_images(cfg: ExperimentConfig) -> int:
    from trainers.data import build_domains

    return len(build_domains(cfg.data).target_pool)


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


@dataclass(frozen=True)
class Margin:
    """A row's paired margin against its random rival: gap closed minus the rival's, seed by seed."""

    values: tuple[float, ...]
    mean: float
    low: float  # the 95% t-interval; NaN with fewer than 2 seeds
    high: float

    @property
    def seeds(self) -> int:
        return len(self.values)

    def text(self) -> str:
        if not self.values or self.mean != self.mean:
            return "n/a"
        if self.seeds < 2:
            return f"{self.mean:+.2f} (1 seed)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def verdict(self) -> bool | None:
        """True when the whole interval lies above 0, False when it does not; None with fewer seeds
        than ``MIN_SEEDS_TO_JUDGE`` (or an undefined margin)."""
        if self.seeds < MIN_SEEDS_TO_JUDGE or self.low != self.low:
            return None
        return self.low > 0


def paired_margin(ours: Measured, rival: Measured) -> Margin:
    """The margin over the seeds both rows ran, with its 95% Student's t confidence interval."""
    from scipy import stats

    rival_gap = dict(zip(rival.seeds, rival.gap))
    values = tuple(gap - rival_gap[seed] for seed, gap in zip(ours.seeds, ours.gap) if seed in rival_gap)
    mean, spread = mean_spread(list(values))
    if len(values) < 2 or mean != mean:
        return Margin(values, mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * spread / math.sqrt(len(values))
    return Margin(values, mean, mean - half, mean + half)


@dataclass(frozen=True)
class GoalCheck:
    text: str
    met: bool | None  # None: cannot be judged (too few seeds)


def goal_checks(measured: list[Measured]) -> list[GoalCheck]:
    """The issue's goals for the headline rows (LabOR PPL and SPL in their own procedure): each closes at
    least 0.90 of the gap, and beats random at the same budget (the paired margin's interval above 0)."""
    by_id = {m.row.id: m for m in measured}
    checks = []
    for m in measured:
        if not m.row.goal or not m.gap:
            continue
        mean, _ = mean_spread(m.gap)
        name = f"{m.row.label} ({m.row.budget})"
        checks.append(
            GoalCheck(
                f"{name} closes {mean:.2f} of the gap (goal >= {GOAL_GAP_CLOSED:.2f}; {len(m.gap)} seed(s))",
                mean >= GOAL_GAP_CLOSED if mean == mean else None,
            )
        )
        rival = by_id.get(m.row.rival)
        if rival is None or not rival.gap:
            continue
        margin = paired_margin(m, rival)
        why = [f"95% interval over {margin.seeds} seeds"] if margin.seeds >= 2 else []
        if margin.verdict() is None:
            why.append(f"at least {MIN_SEEDS_TO_JUDGE} seeds are needed to judge")
        why.append(f"per seed {', '.join(f'{v:+.2f}' for v in margin.values)}")
        checks.append(
            GoalCheck(
                f"{name} beats {rival.row.label}: paired margin {margin.text()} of the gap ({'; '.join(why)})",
                margin.verdict(),
            )
        )
    return checks


def write_budget_curve(plan: Plan, measured: list[Measured], references: dict, path: Path) -> list[str]:
    """Gap closed against labeled pixels (% of the pool, log scale), one marker series per method,
    error bars = spread over seeds; the warm-up, source-only and oracle levels drawn across.
    Returns the legend's labels (the series drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axis = plt.subplots(figsize=(8, 4.8), dpi=120)
    colours = plt.get_cmap("tab10")
    series: dict[str, list[tuple[float, float, float]]] = {}
    for m in measured:
        if m.row.table == "main" and m.gap and m.labeled_fraction:
            name = f"{m.row.label} ({m.row.procedure})"
            series.setdefault(name, []).append((statistics.fmean(m.labeled_fraction) * 100, *mean_spread(m.gap)))
    for index, (name, points) in enumerate(series.items()):
        xs, ys, spreads = zip(*sorted(points))
        style = "--s" if any(word in name for word in ("SPL", "squares", "regions")) else "-o"
        axis.errorbar(xs, ys, yerr=spreads, fmt=style, color=colours(index % 10), capsize=3, label=name)
    at_left = axis.get_yaxis_transform()  # x in axes coordinates, y in data coordinates
    warmup_level, _ = mean_spread(references.get("warmup_gap", []))
    if warmup_level == warmup_level:
        axis.axhline(warmup_level, color="grey", linestyle=":", linewidth=1)
        axis.text(0.01, warmup_level + 0.01, "warm-up alone (no labels)", transform=at_left, fontsize=7, color="grey")
    axis.axhline(1.0, color="black", linewidth=1)
    axis.text(0.01, 1.01, "oracle (every pool pixel labeled)", transform=at_left, fontsize=7)
    axis.axhline(0.0, color="black", linewidth=1)
    axis.text(0.01, 0.01, "source only", transform=at_left, fontsize=7)
    axis.set_xscale("log")
    budgets = sorted({round(x, 3) for points in series.values() for x, _, _ in points})
    axis.set_xticks(budgets or [1.0])  # the budgets measured, not decades
    axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:.3g}%"))
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.tick_params(axis="x", labelsize=7, labelrotation=45)
    axis.set_ylim(top=1.1)
    axis.set_xlabel("labeled target pixels (% of the pool, log scale)")
    axis.set_ylabel("fraction of the gap closed\n(mIoU - source-only) / (oracle - source-only)")
    axis.set_title(f"Budget curve on the bundled synthetic domains ({len(plan.seeds)} seed(s), mean ± spread)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    with staged(path) as tmp:
        figure.savefig(tmp)
    labels = axis.get_legend_handles_labels()[1]
    plt.close(figure)
    return labels


def _cost_cells(m: Measured) -> str:
    """A row's annotation cost as two table cells: labeled share of the pool's pixels, clicks per image."""
    fraction = f"{100 * statistics.fmean(m.labeled_fraction):.3g}%" if m.labeled_fraction else "n/a"
    clicks = f"{statistics.fmean(m.clicks_per_image):.1f}" if m.clicks_per_image else "n/a"
    return f"{fraction} | {clicks}"


def render_markdown(
    plan: Plan,
    quick: bool,
    measured: list[Measured],
    references: dict,
    checks: list[GoalCheck],
    cfg: ExperimentConfig,
    minutes: float,
    image_name: str,
    command: str,
) -> str:
    from orchestrator.round.start_models import warmup_losses

    height, width = cfg.data.height, cfg.data.width
    pool = _pool_images(cfg)
    by_id = {m.row.id: m for m in measured}
    src, warm, ora = fmt(references["source"]), fmt(references["warmup"]), fmt(references["oracle"])
    steps = {int(s) for m in measured for s in m.global_step if s == s}
    lines = [
        "# Benchmarks: quality on the bundled synthetic domains",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} ({machine_line()}); the sweeps took "
        f"{minutes:.0f} minutes. {'A quick run: one seed, the headline pairs only. ' if quick else ''}"
        f"Headline pairs on seeds {', '.join(map(str, plan.seeds))}; the other rows on seeds "
        f"{', '.join(map(str, plan.other_seeds)) or '(none)'}. Figures are mean ± sample standard deviation over "
        f"the seeds a row ran on.",
        "",
        "## What ran",
        "",
        f"- Domains: the bundled synthetic source (game style) and target (camera style), {height}x{width} "
        f"pixels, {pool} target pool images, {cfg.data.synthetic.target_val_images} target validation images, "
        f"{len(CLASS_SETS[cfg.data.class_set])} classes. Model `{cfg.model.name}` (width {cfg.model.width}); "
        f"source training {cfg.source.steps} steps.",
        f"- Every trial starts from the same warmed-up models (cached per seed): {cfg.warmup.steps} label-free "
        f"steps in which G adapts with {warmup_losses(cfg)} and LabOR's selector network S "
        f"learns the target from G's pseudo labels (`{cfg.adapt.pseudo_label_rule}`) and the MCD discrepancy "
        f"(num_k {cfg.adapt.num_k}). Then every trial adapts {cfg.adapt.total_steps} steps in all "
        f"(`adapt.total_steps`), split over its rounds, through the product's own path (one Tune sweep per "
        f"seed, Ray actors ranking, Ray Train adapting, MLflow experiment `quality`). Total optimizer steps of "
        f"every trial (source + warm-up + rounds): {', '.join(map(str, sorted(steps))) or 'n/a'}.",
        f"- Budgets: {plan.points} points per image is the papers' number of clicks per image, kept as a count "
        f"(by area, 40 points on LabOR's 1280x640 crops would be {40 * height * width / (1280 * 640):.1f} point(s) "
        f"on a {height}x{width} image): here a point is {100 / (height * width):.4f}% of an image. Region budgets "
        f"are a share of the pool's pixels (`selection.region_spread={cfg.selection.region_spread}`); LabOR SPL's "
        f"whole mask buys what the mask holds, and its random rival buys the same number of pixels.",
        f"- References: source only {src}; the warm-up alone (no label) {warm} "
        f"(gap closed {fmt(references['warmup_gap'], 2)}); the oracle (every pool pixel labeled, the same steps "
        f"from the same warm-up) {ora}. Gap closed = (mIoU - source-only) / (oracle - source-only), per seed.",
        f"- Against random: the paired margin is a row's gap closed minus that of random selection at the same "
        f"budget, seed by seed, with its 95% confidence interval (Student's t over the seeds both ran, shown in "
        f"brackets); a method beats random when the whole interval lies above 0, judged with at least "
        f"{MIN_SEEDS_TO_JUDGE} seeds.",
        "",
        "## Goals",
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
        "| method | procedure | budget | labeled pixels | clicks per image | target mIoU | gap closed | "
        "margin vs random [95% CI] | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| source only | - | 0 | 0% | 0 | {src} | 0 | - | {len(references['source'])} |",
        f"| warm-up alone | {cfg.warmup.steps} label-free steps | 0 | 0% | 0 | {warm} | "
        f"{fmt(references['warmup_gap'], 2)} | - | {len(references['warmup'])} |",
    ]
    for m in measured:
        if m.row.table != "main":
            continue
        rival = by_id.get(m.row.rival) if m.row.rival else None
        margin = paired_margin(m, rival).text() if rival is not None and rival.gap else "-"
        label = f"**{m.row.label}**" if m.row.goal else m.row.label
        lines.append(
            f"| {label} | {m.row.procedure} | {m.row.budget} | {_cost_cells(m)} | {fmt(m.miou)} | "
            f"{fmt(m.gap, 2)} | {margin} | {len(m.seeds)} |"
        )
    lines += [f"| oracle | every pool pixel | - | 100% | - | {ora} | 1 | - | {len(references['oracle'])} |", ""]
    lines += _tzeng_tables(plan, measured, references, cfg, src, ora)
    lines += [
        "## What these figures do and do not show",
        "",
        "- The bundled domains are generated street scenes, not GTA5 and Cityscapes: the ranking of methods "
        "and the shape of the curve are what may carry over, not the mIoU values. For reference, on GTA5 to "
        "Cityscapes with DeepLab-V2, LabOR SPL (2.2%) closes about 0.88 of the gap (66.6 mIoU against "
        "source-only 36.6 and an oracle of 70.5) and RIPU regions about 0.97 (69.6).",
        f"- Each row is one procedure at one budget: the headline pairs ran on {len(plan.seeds)} seed(s), the "
        f"other rows on {len(plan.other_seeds)} (their intervals are wide or missing: a margin there is a "
        f"direction, not a verdict). Spread is over seeds (each its own source model, warm-up, training and "
        f"selection draws; the generated domains are the same, `data.synthetic.seed`).",
        "- RIPU acquires in 5 rounds of equal length here (its code selects at 10k, 12k, ..., 18k of 40k "
        "iterations, after 10k label-free ones); the warm-up plays its first 10k, the rounds split the rest "
        "evenly.",
        "",
        f"Reproduce: `{command}` (results under the printed output folder; each seed's sweep keeps its own "
        f"report and MLflow runs).",
        "",
    ]
    return "\n".join(lines)


def _tzeng_tables(
    plan: Plan, measured: list[Measured], references: dict, cfg: ExperimentConfig, src: str, ora: str
) -> list[str]:
    reference = next((m for m in measured if m.row.keys == ppl_keys(plan.ablation_points)), None)
    lines = []
    for table, title, what, default in (
        ("confusion", "Tzeng ablation: domain confusion weight", "confusion weight lambda", cfg.adapt.confusion_weight),
        ("temperature", "Tzeng ablation: soft-label temperature", "temperature T", cfg.adapt.soft_label_temperature),
    ):
        entries = [(m.row.value, "", m) for m in measured if m.row.table == table]
        if not entries:
            continue
        if reference is not None:
            entries.append((default, " (default)", reference))
        lines += [
            f"## {title}",
            "",
            f"LabOR PPL, {plan.ablation_points} points per image; the other losses at "
            f"their defaults. The default ({default:g}) is the main table's row.",
            "",
            f"| {what} | target mIoU | gap closed |",
            "|---|---|---|",
        ]
        for value, note, m in sorted(entries, key=lambda entry: entry[0]):
            lines.append(f"| {value:g}{note} | {fmt(m.miou)} | {fmt(m.gap, 2)} |")
        lines.append("")
    semi = [m for m in measured if m.row.table == "semi"]
    if semi:
        lines += [
            "## Tzeng ablation: classes without target labels",
            "",
            f"The oracle never reveals {', '.join(WITHHELD_CLASSES)} (the pixels selected there are paid "
            f"for and stay unlabeled); LabOR PPL, {plan.ablation_points} points per image.",
            "",
            "| soft labels | target mIoU (all classes) | mIoU of the withheld classes |",
            "|---|---|---|",
            f"| source only | {src} | {fmt(references['source_withheld'])} |",
        ]
        for m in semi:
            lines.append(f"| {m.row.label.removeprefix('soft labels ')} | {fmt(m.miou)} | {fmt(m.withheld_miou)} |")
        lines += [f"| oracle (every class labeled) | {ora} | {fmt(references['oracle_withheld'])} |", ""]
    return lines


def prepare_seed(cfg: ExperimentConfig, num_cpus: int | None, quiet: bool) -> float:
    """Train (or find) the seed's source model and warm-up, then measure what LabOR SPL's whole mask
    buys with the warmed-up selector (recorded in ``MATCH_FILE``); returns that pool fraction."""
    recorded = matched_fraction_of(cfg)
    if recorded is not None:
        return recorded
    from orchestrator.cluster.ray_session import start_ray
    from orchestrator.round.start_models import ensure_source_model, ensure_warmup_model

    say = (lambda msg: None) if quiet else (lambda msg: print(f"[quality] {msg}", flush=True))
    start_ray(None, num_cpus, quiet)
    source, source_metrics = ensure_source_model(cfg, progress=say)
    warmed, _ = ensure_warmup_model(cfg, source, source_metrics, progress=say)
    measured = whole_mask_fraction(cfg, warmed)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / MATCH_FILE).write_text(json.dumps(measured))
    say(
        f"LabOR SPL's whole mask holds {measured['pixels']} pixels ({100 * measured['fraction']:.3g}% of the pool): "
        f"the budget of its random rival"
    )
    return measured["fraction"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one seed, the headline pairs only (about 10 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the headline pairs (default: 5, quick: 1)")
    parser.add_argument(
        "--other-seeds", type=int, default=None, help="seeds of the other rows, the first ones (default: 2, quick: 0)"
    )
    parser.add_argument("--tzeng", action="store_true", help="also Tzeng et al.'s ablation, on the first seed")
    parser.add_argument("--output-dir", default="runs/benchmarks", help="sweeps go here (default runs/benchmarks)")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where BENCHMARKS.md and the image go")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: as the sweep's)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished sweeps")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-sweep progress (Tune's table, trial lines)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every sweep (as for orchestrator.sweep)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if (args.seeds is not None and args.seeds < 1) or (args.other_seeds is not None and args.other_seeds < 0):
        print("error: --seeds must be >= 1 and --other-seeds >= 0", file=sys.stderr)
        return 2
    seeds = plan.seeds if args.seeds is None else tuple(range(args.seeds))
    others = plan.other_seeds if args.other_seeds is None else tuple(range(args.other_seeds))
    plan = replace(plan, seeds=seeds, other_seeds=tuple(s for s in others if s in seeds) or (), tzeng=args.tzeng)
    output_dir = Path(args.output_dir).resolve() / ("quick" if args.quick else "full")
    try:
        bases = {seed: base_config(plan, seed, output_dir, args.overrides) for seed in plan.seeds}
        sweep_config(plan, plan.seeds[0], output_dir, args.overrides, 0.01)  # every case valid, before anything runs
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from orchestrator.tracking.mlflow_runs import TrackingError, check_tracking_uri, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri, bases[plan.seeds[0]].tracking.uri)
    try:
        check_tracking_uri(tracking_uri)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        from trainers.data import DatasetError, check_domains

        try:
            check_domains(bases[plan.seeds[0]].data, progress=print)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    timing = output_dir / RUN_RECORD
    started = time.perf_counter()
    if not args.report_only:
        from orchestrator.sweep.driver import run_sweep

        output_dir.mkdir(parents=True, exist_ok=True)
        timing.write_text(json.dumps({"started": time.time()}))
        for number, (seed, base) in enumerate(bases.items(), start=1):
            seed_started = time.perf_counter()
            matched = prepare_seed(base, args.num_cpus, args.quiet)
            cfg = sweep_config(plan, seed, output_dir, args.overrides, matched)
            rows = plan_rows(plan, seed, matched)
            print(
                f"[quality] seed {seed} ({number}/{len(bases)}): {len(rows)} trials, {cfg.adapt.total_steps} "
                f"adaptation steps each after a {cfg.warmup.steps}-step warm-up, into {cfg.output_dir}",
                flush=True,
            )
            sweep_dir = Path(cfg.output_dir) / cfg.sweep.name
            resume = (sweep_dir / "sweep.json").is_file()  # an interrupted benchmark continues
            code = run_sweep(
                cfg, tracking_uri, num_cpus=args.num_cpus, quiet=args.quiet, resume=resume, dashboard=False
            )  # no dashboard process taking CPU from the timed run
            if code not in (0,):
                print(
                    f"[quality] seed {seed}: the sweep exited with {code}; rows of failed trials show n/a",
                    file=sys.stderr,
                )
            print(
                f"[quality] seed {seed} done in {(time.perf_counter() - seed_started) / 60:.1f} min "
                f"({(time.perf_counter() - started) / 60:.1f} min in all)",
                flush=True,
            )
        timing.write_text(json.dumps({**json.loads(timing.read_text()), "finished": time.time()}))
    minutes = run_minutes(output_dir)

    configs = bases
    try:
        measured, references = collect(plan, configs)
    except FileNotFoundError as err:
        print(
            f"error: no finished benchmark sweep under '{output_dir}' ({Path(err.filename).name} missing); "
            f"run it without --report-only first",
            file=sys.stderr,
        )
        return 2
    expected = {
        row_id: sum(row_id in {r.id for r in plan_rows(plan, s, matched_fraction_of(configs[s]))} for s in plan.seeds)
        for row_id in row_ids(plan)
    }
    missing = [f"{m.row.label} @ {m.row.budget}" for m in measured if len(m.miou) < expected.get(m.row.id, 0)]
    checks = goal_checks(measured)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    stem = "quality-quick" if args.quick else "quality"
    image = docs / f"{stem}-budget-curve.png"
    write_budget_curve(plan, measured, references, image)
    command = "python -m benchmarks.quality" + (" --quick" if args.quick else "")
    text = render_markdown(
        plan, args.quick, measured, references, checks, configs[plan.seeds[0]], minutes, image.name, command
    )
    if missing:
        text += "\nRows missing a seed (a trial failed or was not run): " + "; ".join(missing) + "\n"
    report = docs / ("BENCHMARKS-quick.md" if args.quick else "BENCHMARKS.md")
    atomic_write_text(report, text)
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
    except Exception as err:
        print(
            f"[quality] could not log to MLflow ({type(err).__name__}: {err}); the report is in {report}",
            file=sys.stderr,
        )


def _log_report(tracking_uri: str, report: Path, image: Path, measured: list[Measured], plan: Plan) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("quality") or client.get_experiment(client.create_experiment("quality"))
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"activeda.benchmark": "quality", "seeds": ",".join(map(str, plan.seeds))},
    )
    status = "FAILED"
    try:
        for m in measured:
            if m.gap and m.gap == m.gap:
                key = "gap_closed/" + "".join(c if c.isalnum() or c in "._-/" else "_" for c in m.row.id)
                client.log_metric(run.info.run_id, key[:250], statistics.fmean(m.gap))
        client.log_artifact(run.info.run_id, str(report))
        client.log_artifact(run.info.run_id, str(image))
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)


if __name__ == "__main__":
    sys.exit(main())
