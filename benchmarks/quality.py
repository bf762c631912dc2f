"""Quality benchmark: each method in its published procedure, at equal budget and equal training steps.

For each seed, one Tune sweep through the product's own path (``orchestrator.sweep.driver.run_sweep``: the
cached source model, the cached label-free warm-up, the oracle reference, Ray actors ranking the pool,
Ray Train adapting, MLflow logging) runs every row below as one trial. Every trial starts from the
same warmed-up models (G adapted without labels by AdaptSeg's adversarial loss; LabOR's selector network S
trained on G's pseudo labels with the MCD discrepancy: LabOR's order of work) and trains the same
adaptation steps in all (``adapt.total_steps``), whatever its number of rounds, so a difference in
mIoU is the selection's doing.

Seeds: the evaluation seeds 0-7, each drawing its own domains (``data.synthetic.seed``) as well as its own
models and selections (``seed``). The calibration of the domains ran on seeds 100-109
(``benchmarks.calibrate_domains``), which never appear here. The plan below is fixed before any result:
no seed or setting is added after the results are seen.

Rows (P = points per image, 10: the default config's ``selection.points_per_image``, the budget at which
the calibration's gates are stated):

- headline pairs, on every seed: LabOR PPL by the paper's rule (``selection.ppl_rule: per_piece``; P
  points, one round) against random points at P; LabOR SPL labeling the whole inconsistency mask of
  every image (one round; its cost is the outcome) against random squares buying the same number of
  pixels (measured per seed from the warmed-up selector before the sweep);
- the other rows, on the first seed(s) only: RIPU points (P per image over 5 rounds) and RIPU regions
  (2.2% over 5 rounds), as RIPU acquires during training; entropy at P points;
- the arm, on the first seed(s) only: PPL's rule (``per_piece``, the paper's, against ``nearest_k``, the
  earlier one) crossed with the domains (the default version 4 against version 1, the earlier 9 classes),
  each cell against random points at P on the same domains, to separate the implementation from the
  regime. Version 4's ``per_piece`` cell is the headline PPL row (not run twice); version 1 is a sweep
  of its own per seed (its own source model, warm-up and oracle);
- references per seed and domains: source only, the warm-up alone (no label), the oracle (every pool
  pixel labeled, the same steps from the same warmed-up models).

Gap closed = (mIoU - source-only) / (oracle - source-only), per seed and domains. A row's paired margin is
its gap closed minus its random rival's, seed by seed. The two headline comparisons (PPL against random
points, SPL's whole mask against random squares) are one family: each gets a one-sided paired t-test
(H1: margin > 0) over the seeds both ran, and Holm's step-down procedure at family-wise alpha 0.05
decides whether it beats random (at least 5 seeds are needed to judge); the report gives each one's
adjusted p-value, paired 95% interval and verdict, whichever way it falls. The other rows' intervals are
plain (unadjusted) 95% intervals. Writes ``docs/BENCHMARKS.md`` (``--quick``: ``docs/BENCHMARKS-quick.md``)
and the budget curve next to it, and logs both to MLflow (experiment ``quality``).

    python -m benchmarks.quality            # seeds 0-7; other rows and the arm on seed 0 (about 57 minutes, 2 CPUs)
    python -m benchmarks.quality --quick    # seed 0, the headline pairs only (about 8 minutes)

Both print the plan and its estimated duration before they start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from benchmarks.calibrate_domains import EVALUATION_SEEDS
from benchmarks.common import machine_line
from experiment_config import ConfigError, ExperimentConfig, from_dict, load_config, with_absolute_paths, with_overrides
from experiment_config.choices import SYNTHETIC_CLASS_SET_OF_VERSION
from trainers.data import CLASS_SETS
from trainers.files import atomic_write_text, staged

ROOT = Path(__file__).resolve().parents[1]
# Never labeled in the Tzeng ablation's semi-supervised rows: thin or small things.
WITHHELD_CLASSES = ("pole", "traffic_sign", "person")
# Seeds needed before a headline comparison may be judged (the rule).
MIN_SEEDS_TO_JUDGE = 5
# Holm's family: the two headline comparisons (row id, its random rival's id), judged together at this
# family-wise error rate. Fixed here, before any result, whatever a run measures.
HEADLINE_COMPARISONS = (("ppl", "random"), ("spl_mask", "random_mask"))
FAMILY_ALPHA = 0.05
# The arm crosses PPL's rules with the configured domains (version 4 by default) and these earlier ones.
ARM_VERSION = 1
PPL_RULES = ("per_piece", "nearest_k")  # the paper's reading (the default), the earlier one


@dataclass(frozen=True)
class Plan:
    """What one benchmark run covers. Every seed is an evaluation seed (0-7)."""

    seeds: tuple[int, ...]  # the headline pairs run on every seed
    other_seeds: tuple[int, ...] = ()  # RIPU points, RIPU regions and entropy run on these seeds only
    arm_seeds: tuple[int, ...] = ()  # PPL's rule x the domains' version, on these seeds only
    points: int = 10  # points per image of the point rows: the default config's, the calibration's
    curve_points: tuple[int, ...] = ()  # more point budgets of PPL and random (other seeds)
    pixel_fraction: float = 0.022  # RIPU regions' budget (the papers' 2.2%)
    ripu_rounds: int = 5  # RIPU acquires in 5 rounds during training
    total_steps: int = 300  # adaptation steps of every trial after the warm-up
    tzeng: bool = False  # Tzeng et al.'s ablation, on the first seed
    ablation_points: int = 10  # its PPL budget


# The other rows and the arm go on one seed, the first, chosen before any result. Sized for the hour on 2
# CPUs with the sweeps' references trained in background lanes (``ReferenceLanes``) beside the trials
# of the sweeps before them (``estimate``).
FULL = Plan(seeds=EVALUATION_SEEDS, other_seeds=EVALUATION_SEEDS[:1], arm_seeds=EVALUATION_SEEDS[:1])
QUICK = Plan(seeds=EVALUATION_SEEDS[:1])
REFERENCE_LANES = 2  # sweeps whose references train at once (``ReferenceLanes``)

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
    """How a budget reads: "10 pts/img", "2.2%", or per round "5 x 2 pts/img"."""
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
    rival: str | None = None  # the id of the random row at the same budget (on the same domains)
    goal: bool = False  # a headline row with the goals
    table: str = "main"  # "main" | "arm" | "confusion" | "temperature" | "semi"
    value: float | None = None  # the ablated setting, in the ablation tables
    domain_version: int | None = None  # the sweep it runs in: None, the configured domains; else that version's

    def case(self) -> dict:
        return dict(self.keys)

    @property
    def rounds(self) -> int:
        return self.keys.get("selection.rounds", 1)


def ppl_keys(points: int, rule: str = "per_piece") -> dict:
    """LabOR PPL at ``points`` per image; the rule is always set, so no row leans on the default."""
    return {"selection.rule": "labor_ppl", "selection.points_per_image": points, "selection.ppl_rule": rule}


def random_point_keys(points: int) -> dict:
    return {"selection.rule": "random", "selection.points_per_image": points}


def plan_rows(plan: Plan, seed: int | None = None, matched_fraction: float | None = None) -> list[Row]:
    """The rows of the plan that run on ``seed`` (all rows when None), in every sweep of that seed (each
    row's ``domain_version`` says which). ``matched_fraction`` is the pixel share of the pool that LabOR
    SPL's whole mask buys on that seed: the budget of its random rival (the rival is left out while it
    is unknown)."""
    p, frac, rounds = plan.points, plan.pixel_fraction, plan.ripu_rounds
    one_round = "warm-up, 1 round"
    rows = [
        Row("ppl", "LabOR PPL", one_round, budget_label(points=p), ppl_keys(p), rival="random", goal=True),
        Row("random", "random points", one_round, budget_label(points=p), random_point_keys(p)),
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
    if seed is None or seed in plan.other_seeds:
        rows += [
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
            # No random rival: squares at 2.2% would cost the plan a seed of its hour. RIPU regions read
            # against SPL's whole mask and the budget curve instead.
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
                    random_point_keys(points),
                ),
            ]
    if seed is None or seed in plan.arm_seeds:
        rows += arm_rows(plan)
    if plan.tzeng and (seed is None or seed == plan.seeds[0]):
        rows += tzeng_rows(plan)
    unique, seen = [], set()
    for row in rows:  # one trial per distinct case and sweep (e.g. the ablation's default is the PPL row)
        signature = (row.domain_version, json.dumps(row.keys, sort_keys=True))
        if signature not in seen:
            seen.add(signature)
            unique.append(row)
    return unique


def arm_rows(plan: Plan) -> list[Row]:
    """PPL's rule crossed with the domains' version, every cell at the headline budget against random points
    on its own domains. On the configured domains the paper's rule is the headline row ("ppl") and its
    rival the headline's ("random"), so only the earlier rule is added there; version ``ARM_VERSION`` gets
    all three trials in a sweep of its own."""
    p, one_round, budget = plan.points, "warm-up, 1 round", budget_label(points=plan.points)
    label = {"per_piece": "LabOR PPL", "nearest_k": "LabOR PPL, nearest_k rule"}
    prefix = f"v{ARM_VERSION}/"
    rows = [
        Row("ppl_nearest_k", label["nearest_k"], one_round, budget, ppl_keys(p, "nearest_k"), "random", table="arm")
    ]
    for rule in PPL_RULES:
        rows.append(
            Row(
                prefix + ("ppl" if rule == "per_piece" else f"ppl_{rule}"),
                label[rule],
                one_round,
                budget,
                ppl_keys(p, rule),
                rival=prefix + "random",
                table="arm",
                domain_version=ARM_VERSION,
            )
        )
    rows.append(
        Row(
            prefix + "random",
            "random points",
            one_round,
            budget,
            random_point_keys(p),
            table="arm",
            domain_version=ARM_VERSION,
        )
    )
    return rows


def sweep_rows(
    plan: Plan, seed: int, domain_version: int | None = None, matched_fraction: float | None = None
) -> list[Row]:
    """The rows of one sweep: ``seed`` on the configured domains (None) or on version ``domain_version``."""
    return [row for row in plan_rows(plan, seed, matched_fraction) if row.domain_version == domain_version]


def plan_sweeps(plan: Plan) -> list[tuple[int, int | None]]:
    """Every sweep of the plan as (seed, domain version), in the order they run: the headline seeds
    first (a run cut short still has its headline pairs), then the arm's other domains."""
    return [(seed, None) for seed in plan.seeds] + [(seed, ARM_VERSION) for seed in plan.arm_seeds]


def seed_list(seeds) -> str:
    """Seeds as they read: "0-7", "0, 2", or "(none)"."""
    seeds = sorted(seeds)
    if not seeds:
        return "(none)"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def on_seeds(seeds) -> str:
    """Where a row group runs, as a phrase: "on seeds 0-7", "on seed 0", "on no seed"."""
    return f"on seed{'s' if len(seeds) > 1 else ''} {seed_list(seeds)}" if seeds else "on no seed"


def plan_text(plan: Plan) -> str:
    """The plan in one sentence, as the report and the command line state it."""
    return (
        f"headline pairs (LabOR PPL by the paper's rule and random points at {plan.points} per image; LabOR "
        f"SPL's whole mask and random squares of the same pixels) {on_seeds(plan.seeds)}; RIPU points, RIPU "
        f"regions and entropy {on_seeds(plan.other_seeds)}; the arm, PPL's rule (per_piece, nearest_k) x the "
        f"domains (the configured ones, version {ARM_VERSION}), {on_seeds(plan.arm_seeds)}"
    )


@dataclass(frozen=True)
class CostFigures:
    """Wall-clock seconds of a run's parts on 2 CPUs at the default config, on a quiet machine: what
    ``estimate`` builds on, fitted to the full run of 2026-12-05 (57.0 min, Intel Xeon, 2 CPUs). A sweep's
    references (source model, warm-up, oracle: three Train jobs of one CPU each, one after another) took
    294 s in each of the two lanes side by side with nothing else running, and 730-735 s in each lane later,
    beside two trials. Trials: 85-90 s a one-round trial, two at a time. Other settings (``--set``),
    another machine or a busy one make them wrong."""

    references_alone: float = 294.0  # the first sweeps', one per lane, with no trial beside them
    references: tuple[float, float] = (700.0, 760.0)  # every later sweep's, in a lane beside trials (low, high)
    one_round_trial: float = 90.0
    five_round_trial: float = 310.0  # RIPU's
    trials_at_once: int = 2

    def trial(self, rounds: int) -> float:
        """A line through the two timed figures (one round, five rounds)."""
        return self.one_round_trial + (rounds - 1) * (self.five_round_trial - self.one_round_trial) / 4


COSTS = CostFigures()


@dataclass(frozen=True)
class Estimate:
    """A plan's duration estimated from ``CostFigures``, before anything runs (not a measurement)."""

    sweeps: int
    trials: int
    minutes: tuple[float, float, float]  # at the references' low, central and high cost

    def text(self) -> str:
        low, central, high = self.minutes
        spread = (
            "" if round(low) == round(high) else f"{low:.0f}-{high:.0f} over the per-sweep reference cost's range; "
        )
        return (
            f"{self.sweeps} sweep(s), {self.trials} trials: estimated {central:.1f} min on 2 CPUs at the default "
            f"config ({spread}an estimate from rough timings, not a measurement)"
        )


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of trials started in this order, each on the first slot to come free (as Tune starts
    a grid when a trial ends)."""
    free = [0.0] * slots
    for duration in durations:
        free[free.index(min(free))] += duration
    return max(free)


def pipeline_end(reference_seconds: list[float], trial_seconds: list[float], lanes: int = 1) -> float:
    """When the last sweep ends, as ``main`` runs them: the references of the sweeps in the plan's order, each
    on the first of ``lanes`` background lanes to come free, from the start; and each sweep's trials once its
    references are ready and the sweep before it has ended."""
    lane_free, sweep_end = [0.0] * max(1, lanes), 0.0
    for refs, trials in zip(reference_seconds, trial_seconds):
        lane = lane_free.index(min(lane_free))
        lane_free[lane] += refs
        sweep_end = max(sweep_end, lane_free[lane]) + trials
    return sweep_end


def estimate(plan: Plan, costs: CostFigures = COSTS, lanes: int = REFERENCE_LANES) -> Estimate:
    """The plan's duration: per sweep its references (in the background lanes, ahead of the trials), then
    its trials two at a time, longest first (as ``sweep_config`` orders them); the first sweeps' references,
    one per lane, with nothing beside them, later ones beside trials. Never less than the CPU time of all
    the work (every sweep's references as alone, every trial as one of two at once) spread over the CPUs:
    with several lanes the machine, not the order, sets the pace. The random squares at SPL's cost count
    as a one-round trial."""
    trials, trial_seconds, work = 0, [], 0.0
    sweeps = plan_sweeps(plan)
    for seed, version in sweeps:
        rows = sweep_rows(plan, seed, version, matched_fraction=1.0)
        trials += len(rows)
        durations = sorted((costs.trial(row.rounds) for row in rows), reverse=True)
        trial_seconds.append(makespan(durations, costs.trials_at_once))
        work += costs.references_alone + sum(durations)  # CPU-seconds: one CPU per job
    busy = work / costs.trials_at_once
    low, high = costs.references
    first = min(max(1, lanes), len(sweeps))
    minutes = tuple(
        max(busy, pipeline_end([costs.references_alone] * first + [refs] * (len(sweeps) - first), trial_seconds, lanes))
        / 60
        for refs in (low, (low + high) / 2, high)
    )
    return Estimate(len(sweeps), trials, minutes)


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


def sweep_folder(seed: int, domain_version: int | None = None) -> str:
    """A sweep's folder under the output folder: ``seed-0`` on the configured domains, ``seed-0-v1`` on version 1."""
    return f"seed-{seed}" + (f"-v{domain_version}" if domain_version is not None else "")


def base_config(
    plan: Plan, seed: int, output_dir: Path, overrides: list[str], domain_version: int | None = None
) -> ExperimentConfig:
    """One sweep's settings before its cases: what its source model, warm-up and oracle caches depend on.
    The seed draws the domains (``data.synthetic.seed``) as well as the models and selections (``seed``);
    ``domain_version`` swaps the configured domains for that generator version, in its class set."""
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
    domains = (
        {}
        if domain_version is None
        else {
            "data.synthetic.version": domain_version,
            "data.class_set": SYNTHETIC_CLASS_SET_OF_VERSION[domain_version],
        }
    )
    cfg = with_overrides(
        cfg,
        {
            **SWEEP_SETTINGS,
            **steps,
            **domains,
            "seed": seed,
            "data.synthetic.seed": seed,
            "output_dir": str(output_dir / sweep_folder(seed, domain_version)),
            "sweep.search_space": {},
        },
    )
    return with_absolute_paths(cfg)


def sweep_config(
    plan: Plan,
    seed: int,
    output_dir: Path,
    overrides: list[str],
    matched_fraction: float | None = None,
    domain_version: int | None = None,
) -> ExperimentConfig:
    """The sweep's config: every row as a case of the ``cases`` axis, the longest trials first (Tune starts a
    grid in order; two trials run at once, and a long trial started last would leave a slot idle)."""
    cfg = base_config(plan, seed, output_dir, overrides, domain_version)
    rows = sorted(sweep_rows(plan, seed, domain_version, matched_fraction), key=lambda row: -row.rounds)
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


def reference_name(name: str, domain_version: int | None = None) -> str:
    """A reference's key in ``collect``'s references: "oracle" on the configured domains, "v1/oracle" on version 1."""
    return name if domain_version is None else f"v{domain_version}/{name}"


def collect(
    plan: Plan, configs: dict[int, ExperimentConfig], arm_configs: dict[int, ExperimentConfig] | None = None
) -> tuple[list[Measured], dict[str, list[float]]]:
    """Every row's figures over the sweeps of ``configs`` (by seed, on the configured domains) and
    ``arm_configs`` (by seed, the arm's sweeps on version ``ARM_VERSION``), and the references per seed
    (mIoU; the withheld classes' mIoU under ``<name>_withheld``; the warm-up's gap closed under
    ``warmup_gap``; the arm's domains' under the same names, prefixed as ``reference_name`` does). Each
    trial's gap closed is measured against its own sweep's references."""
    measured: dict[str, Measured] = {}
    references: dict[str, list[float]] = {
        reference_name(name, version): []
        for version in (None, ARM_VERSION)
        for name in (*REFERENCES, *(f"{r}_withheld" for r in REFERENCES), "warmup_gap")
    }
    pool_images = None
    sweeps = [(seed, None, cfg) for seed, cfg in configs.items()]
    sweeps += [(seed, ARM_VERSION, cfg) for seed, cfg in (arm_configs or {}).items()]
    for seed, version, cfg in sweeps:
        rows = sweep_rows(plan, seed, version, matched_fraction_of(cfg))
        for row in rows:
            measured.setdefault(row.id, Measured(row))
        refs = reference_metrics(cfg)
        low, high = refs["source"]["target/miou"], refs["oracle"]["target/miou"]
        if high <= low:
            where = "" if version is None else f" (domains version {version})"
            print(
                f"[quality] seed {seed}{where}: the oracle ({high:.3f}) is not above source-only ({low:.3f}); "
                f"gap closed is undefined for this seed",
                file=sys.stderr,
            )

        def gap(miou: float) -> float:
            return (miou - low) / (high - low) if high > low else float("nan")

        for name in REFERENCES:
            references[reference_name(name, version)].append(refs[name]["target/miou"])
            references[reference_name(f"{name}_withheld", version)].append(_class_mean(refs[name], WITHHELD_CLASSES))
        references[reference_name("warmup_gap", version)].append(gap(refs["warmup"]["target/miou"]))
        # A trial is a row's when its whole config is the sweep's with the row's keys set: a stray trial
        # (e.g. an earlier run in the same folder with other settings) belongs to no row.
        expected = {row.id: _what_it_computes(with_overrides(cfg, row.case()).flat()) for row in rows}
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
    """A trial's saved config, flattened, without the keys that change only where and how fast it ran (e.g.
    ``sweep.max_concurrent``, which the benchmark sets from the machine); None when this version cannot
    read it (an old one)."""
    try:
        return _what_it_computes(from_dict(config).flat())
    except ConfigError:
        return None


def _what_it_computes(flat: dict) -> dict:
    from orchestrator.sweep.state import RESUMABLE_DIFFERENCES

    return {key: value for key, value in flat.items() if not key.startswith(RESUMABLE_DIFFERENCES)}


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
    low: float  # the plain (unadjusted) 95% t-interval; NaN with fewer than 2 seeds
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


def paired_margin(ours: Measured, rival: Measured) -> Margin:
    """The margin over the seeds both rows ran, with its 95% Student's t confidence interval."""

    rival_gap = dict(zip(rival.seeds, rival.gap))
    return _interval(tuple(gap - rival_gap[seed] for seed, gap in zip(ours.seeds, ours.gap) if seed in rival_gap))


def _interval(values: tuple[float, ...]) -> Margin:
    """The mean of ``values`` (one per seed) with its plain 95% Student's t confidence interval."""
    from scipy import stats

    mean, spread = mean_spread(list(values))
    if len(values) < 2 or mean != mean:
        return Margin(values, mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * spread / math.sqrt(len(values))
    return Margin(values, mean, mean - half, mean + half)


def one_sided_p(values: tuple[float, ...]) -> float:
    """The paired t-test's p-value for the margins ``values`` (one per seed), one-sided, H1: the mean
    margin > 0. NaN with fewer than 2 values or an undefined one; with no spread at all, 0 for a
    positive mean and 1 otherwise (the t statistic is infinite or undefined)."""
    from scipy import stats

    mean, spread = mean_spread(list(values))
    if len(values) < 2 or mean != mean:
        return float("nan")
    if spread == 0:
        return 0.0 if mean > 0 else 1.0
    return float(stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)


@dataclass(frozen=True)
class HolmStep:
    """One hypothesis's place in Holm's step-down procedure."""

    p_value: float
    adjusted: float  # Holm-adjusted p-value (NaN for a NaN p)
    step: int  # 1 for the smallest p, m for the largest
    level: float  # alpha / (m - step + 1): what this step's p is compared with
    rejected: bool


def holm(p_values: list[float], alpha: float = FAMILY_ALPHA) -> list[HolmStep]:
    """Holm's step-down procedure over ``p_values`` (results in the same order). Sorted from the smallest,
    the i-th of m is rejected when its p <= alpha / (m - i + 1) and every earlier one was rejected; the
    first that fails stops the procedure. Adjusted p = the running maximum of min(1, (m - i + 1) p), so a
    hypothesis is rejected exactly when its adjusted p <= alpha. A NaN p (a comparison that cannot be
    judged) keeps its place in the family (m counts it, as planned), comes last and is never rejected."""
    m = len(p_values)

    def place(index: int) -> tuple[bool, float]:  # NaN last
        p = p_values[index]
        return (p != p, p if p == p else 0.0)

    order = sorted(range(m), key=place)
    steps: list[HolmStep | None] = [None] * m
    running, rejecting = 0.0, True
    for step, index in enumerate(order, start=1):
        p, level = p_values[index], alpha / (m - step + 1)
        if p != p:
            steps[index] = HolmStep(p, float("nan"), step, level, False)
            rejecting = False
            continue
        running = max(running, min(1.0, (m - step + 1) * p))
        rejecting = rejecting and p <= level
        steps[index] = HolmStep(p, running, step, level, rejecting)
    return steps


@dataclass(frozen=True)
class Comparison:
    """One headline comparison, judged with the other in Holm's family."""

    row_id: str
    name: str  # the row as it reads, with its budget
    rival: str  # its random rival as it reads
    margin: Margin  # over the seeds both ran, with its plain 95% interval
    holm: HolmStep  # its p-value: NaN when not judged
    family: int  # how many comparisons Holm's family holds

    @property
    def judged(self) -> bool:
        return self.margin.seeds >= MIN_SEEDS_TO_JUDGE and self.holm.p_value == self.holm.p_value

    @property
    def beats(self) -> bool | None:
        """True: beats random; False: does not; None: cannot be judged."""
        return self.holm.rejected if self.judged else None

    def verdict(self) -> str:
        if self.margin.seeds < MIN_SEEDS_TO_JUDGE:
            return f"cannot be judged: fewer than {MIN_SEEDS_TO_JUDGE} seeds ({self.margin.seeds} ran both)"
        if not self.judged:
            return "cannot be judged: the margin is undefined on a seed"
        return "beats random" if self.holm.rejected else "does not beat random"

    def text(self) -> str:
        """The verdict in words, then the figures it rests on."""
        parts = [f"{self.name} against {self.rival}: {self.verdict()}."]
        margin = self.margin
        if margin.values and margin.mean == margin.mean:
            interval = f", 95% interval [{margin.low:+.2f}, {margin.high:+.2f}]" if margin.seeds >= 2 else ""
            per_seed = ", ".join(f"{v:+.2f}" for v in margin.values)
            parts.append(
                f"Paired margin {margin.mean:+.2f} of the gap{interval} over {margin.seeds} seed(s) "
                f"(per seed {per_seed})."
            )
        elif margin.values:
            parts.append("Paired margin undefined (a seed's gap closed is undefined).")
        if self.judged:
            step = f"Holm step {self.holm.step} of {self.family}, its p compared with {self.holm.level:.3g}"
            if not self.holm.rejected and self.holm.p_value <= self.holm.level:
                step += "; not rejected all the same, as Holm stops at the first step not rejected"
            parts.append(
                f"One-sided paired t-test p = {self.holm.p_value:.3g}, Holm-adjusted p = {self.holm.adjusted:.3g} "
                f"({step})."
            )
        return " ".join(parts)


def headline_comparisons(measured: list[Measured], alpha: float = FAMILY_ALPHA) -> list[Comparison]:
    """The two headline comparisons (``HEADLINE_COMPARISONS``), each a one-sided paired t-test over the
    seeds both rows ran, judged together by Holm's procedure at family-wise ``alpha``. A comparison with
    fewer than ``MIN_SEEDS_TO_JUDGE`` seeds stays in the family, never rejected."""
    by_id = {m.row.id: m for m in measured}
    pending = []
    for ours_id, rival_id in HEADLINE_COMPARISONS:
        ours, rival = by_id.get(ours_id), by_id.get(rival_id)
        margin = (
            paired_margin(ours, rival)
            if ours is not None and rival is not None
            else Margin((), float("nan"), float("nan"), float("nan"))
        )
        p = one_sided_p(margin.values) if margin.seeds >= MIN_SEEDS_TO_JUDGE else float("nan")
        name = f"{ours.row.label} ({ours.row.budget})" if ours is not None else ours_id
        pending.append((ours_id, name, rival.row.label if rival is not None else "its random rival", margin, p))
    steps = holm([p for *_, p in pending], alpha)
    return [
        Comparison(row_id, name, rival, margin, step, len(pending))
        for (row_id, name, rival, margin, _), step in zip(pending, steps)
    ]


@dataclass(frozen=True)
class GoalCheck:
    text: str
    met: bool | None  # None: cannot be judged (too few seeds)


def goal_checks(measured: list[Measured], references: dict[str, list[float]] | None = None) -> list[GoalCheck]:
    """What the plan expects, stated before any result and never tuned for: the label-free warm-up beats
    source-only (its gap closed above 0 by the plain 95% interval over the seeds, from ``references``),
    and each headline row (LabOR PPL and SPL in their own procedure) beats random at the same budget
    (Holm's verdict, ``headline_comparisons``)."""
    checks = []
    warmup = [g for g in (references or {}).get("warmup_gap", []) if g == g]
    if warmup:
        margin = _interval(tuple(warmup))
        met = None if margin.seeds < 2 else margin.low > 0
        checks.append(
            GoalCheck(
                f"the label-free warm-up beats source-only: gap closed {margin.text()} over {margin.seeds} seed(s)",
                met,
            )
        )
    comparisons = {c.row_id: c for c in headline_comparisons(measured)}
    for m in measured:
        if not m.row.goal or not m.gap:
            continue
        comparison = comparisons.get(m.row.id)
        if comparison is None or not comparison.margin.values:  # its rival never ran beside it
            continue
        name = f"{m.row.label} ({m.row.budget})"
        adjusted = f" (Holm-adjusted p = {comparison.holm.adjusted:.3g})" if comparison.judged else ""
        checks.append(GoalCheck(f"{name} beats {comparison.rival}: {comparison.verdict()}{adjusted}", comparison.beats))
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
    estimated_minutes: float | None = None,
) -> str:
    """The report. ``estimated_minutes``: what the run printed as its estimate before it started (default:
    today's estimate of the plan)."""
    from orchestrator.round.start_models import warmup_losses

    if estimated_minutes is None:
        estimated_minutes = estimate(plan).minutes[1]

    height, width = cfg.data.height, cfg.data.width
    pool = _pool_images(cfg)
    by_id = {m.row.id: m for m in measured}
    src, warm, ora = fmt(references["source"]), fmt(references["warmup"]), fmt(references["oracle"])
    steps = {int(s) for m in measured for s in m.global_step if s == s}
    lines = [
        "# Benchmarks: quality on the bundled synthetic domains",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} ({machine_line()}); the sweeps took "
        f"{minutes:.0f} minutes (estimated beforehand at {estimated_minutes:.0f}). "
        f"{'A quick run: one seed, the headline pairs only. ' if quick else ''}"
        f"Figures are mean ± sample standard deviation over the seeds a row ran on.",
        "",
        f"The plan, fixed before any result: {plan_text(plan)}. Every seed is an evaluation seed (0-7) and draws "
        f"its own domains (`data.synthetic.seed`), models and selections (`seed`); the calibration of the "
        f"domains ran on seeds 100-109, none of which is used here.",
        "",
        "## What ran",
        "",
        f"- Domains: the bundled synthetic source (game style) and target (camera style), generator version "
        f"{cfg.data.synthetic.version}, {height}x{width} pixels, {pool} target pool images, "
        f"{cfg.data.synthetic.target_val_images} target validation images, {len(CLASS_SETS[cfg.data.class_set])} "
        f"classes. Model `{cfg.model.name}` (width {cfg.model.width}); source training {cfg.source.steps} steps.",
        f"- Every trial starts from the same warmed-up models (cached per seed): {cfg.warmup.steps} label-free "
        f"steps in which G adapts with {warmup_losses(cfg)} and LabOR's selector network S "
        f"learns the target from G's pseudo labels (`{cfg.adapt.pseudo_label_rule}`) and the MCD discrepancy "
        f"(num_k {cfg.adapt.num_k}). Then every trial adapts {cfg.adapt.total_steps} steps in all "
        f"(`adapt.total_steps`), split over its rounds, through the product's own path (one Tune sweep per "
        f"seed and domains, Ray actors ranking, Ray Train adapting, MLflow experiment `quality`). Total optimizer "
        f"steps of every trial (source + warm-up + rounds): {', '.join(map(str, sorted(steps))) or 'n/a'}.",
        f"- Budgets: {plan.points} points per image, the default config's `selection.points_per_image`, the "
        f"budget at which the calibration of the domains states its gates; LabOR PPL places them by the "
        f"paper's rule (`selection.ppl_rule: per_piece`). The papers click 40 points per image on LabOR's "
        f"1280x640 crops; by area that would be {40 * height * width / (1280 * 640):.1f} point(s) on a "
        f"{height}x{width} image, where a point is {100 / (height * width):.4f}% of an image. Region budgets "
        f"are a share of the pool's pixels (`selection.region_spread={cfg.selection.region_spread}`); LabOR SPL's "
        f"whole mask buys what the mask holds, and its random rival buys the same number of pixels.",
        f"- References: source only {src}; the warm-up alone (no label) {warm} "
        f"(gap closed {fmt(references['warmup_gap'], 2)}); the oracle (every pool pixel labeled, the same steps "
        f"from the same warm-up) {ora}. Gap closed = (mIoU - source-only) / (oracle - source-only), per seed.",
        "- Against random: the paired margin is a row's gap closed minus that of random selection at the same "
        "budget on the same domains, seed by seed; the tables give its plain (unadjusted) 95% confidence "
        "interval in brackets (Student's t over the seeds both ran). Only the two headline comparisons have "
        "a verdict, Holm's (below); elsewhere a margin is a direction, not a verdict.",
        "",
        "## Verdicts",
        "",
        f"Holm's procedure over the {len(HEADLINE_COMPARISONS)} headline comparisons: each gets a one-sided "
        f"paired t-test (H1: its margin over random > 0) over the seeds both rows ran, the smaller p-value is "
        f"compared with {FAMILY_ALPHA:g}/{len(HEADLINE_COMPARISONS)} = {FAMILY_ALPHA / len(HEADLINE_COMPARISONS):g} "
        f'and, only if that rejects, the other with {FAMILY_ALPHA:g}, which keeps the chance of any false "beats '
        f'random" at most {FAMILY_ALPHA:g} (adjusted p-value = the p-value at which a comparison would just be '
        f"rejected); a comparison needs at least {MIN_SEEDS_TO_JUDGE} seeds to be judged.",
        "",
    ]
    lines += [f"- {comparison.text()}" for comparison in headline_comparisons(measured)]
    lines += [
        "",
        "## Expected outcomes",
        "",
        "Stated with the plan, before any result, and not tuned for: the label-free warm-up beats source-only, "
        "and LabOR PPL and LabOR SPL each beat random at the same budget (Holm's verdict above). Each is "
        "reported whichever way it falls.",
        "",
    ]
    verdicts = {True: "met", False: "MISSED", None: "n/a"}
    lines += [f"- {verdicts[c.met]}: {c.text}" for c in checks] or ["- (no expected outcome can be read from this run)"]
    lines += [
        "",
        "## Main table",
        "",
        f"![budget curve]({image_name})",
        "",
        "| method | procedure | budget | labeled pixels | clicks per image | target mIoU | gap closed | "
        "margin vs random [plain 95% CI] | seeds |",
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
    lines += _arm_table(plan, measured, references, cfg)
    lines += _tzeng_tables(plan, measured, references, cfg, src, ora)
    lines += [
        "## What these figures do and do not show",
        "",
        "- The bundled domains are generated street scenes, not GTA5 and Cityscapes: the ranking of methods "
        "and the shape of the curve are what may carry over, not the mIoU values. For reference, on GTA5 to "
        "Cityscapes with DeepLab-V2, LabOR SPL (2.2%) closes about 0.88 of the gap (66.6 mIoU against "
        "source-only 36.6 and an oracle of 70.5) and RIPU regions about 0.97 (69.6).",
        f"- Each row is one procedure at one budget: the headline pairs ran on {len(plan.seeds)} seed(s), the "
        f"other rows on {len(plan.other_seeds)} and the arm on {len(plan.arm_seeds)} (their intervals are wide "
        f"or missing: a margin there is a direction, not a verdict). Spread is over seeds (each its own "
        f"generated domains, source model, warm-up, training and selection draws).",
        "- RIPU acquires in 5 rounds of equal length here (its code selects at 10k, 12k, ..., 18k of 40k "
        "iterations, after 10k label-free ones); the warm-up plays its first 10k, the rounds split the rest "
        "evenly. RIPU regions have no random rival in this plan (it would not fit the hour).",
        "",
        f"Reproduce: `{command}` (results under the printed output folder; each seed's sweep keeps its own "
        f"report and MLflow runs).",
        "",
    ]
    return "\n".join(lines)


def _on_seeds(m: Measured, seeds) -> Measured:
    """``m`` with only the given seeds' entries: the arm's cells compared over the same seeds."""
    keep = [index for index, seed in enumerate(m.seeds) if seed in seeds]

    def pick(values: list) -> list:
        return [values[index] for index in keep]

    return Measured(
        m.row,
        pick(m.seeds),
        pick(m.miou),
        pick(m.gap),
        pick(m.labeled_fraction),
        pick(m.clicks_per_image),
        pick(m.withheld_miou),
        pick(m.global_step),
    )


def _arm_table(plan: Plan, measured: list[Measured], references: dict, cfg: ExperimentConfig) -> list[str]:
    """PPL's rule x the domains' version, every cell against random points on its own domains, over the
    arm's seeds only (the headline row's other seeds left out, so the four cells share their seeds)."""
    by_id = {m.row.id: _on_seeds(m, plan.arm_seeds) for m in measured}
    old = f"v{ARM_VERSION}/"
    cells = [
        (f"version {cfg.data.synthetic.version} ({len(CLASS_SETS[cfg.data.class_set])} classes)", rule, ours, "random")
        for rule, ours in (("per_piece", "ppl"), ("nearest_k", "ppl_nearest_k"))
    ] + [
        (
            f"version {ARM_VERSION} ({len(CLASS_SETS[SYNTHETIC_CLASS_SET_OF_VERSION[ARM_VERSION]])} classes)",
            rule,
            old + ours,
            old + "random",
        )
        for rule, ours in (("per_piece", "ppl"), ("nearest_k", "ppl_nearest_k"))
    ]
    if not any(by_id.get(ours) is not None and by_id[ours].gap for _, _, ours, _ in cells):
        return []
    lines = [
        "## PPL's rule x the domains",
        "",
        f"LabOR PPL at {plan.points} points per image by the paper's rule (`per_piece`) and by the earlier "
        f"one (`nearest_k`), on the configured domains and on version {ARM_VERSION}'s, each against random "
        f"points at the same count on the same domains, {on_seeds(plan.arm_seeds)}: whether a "
        f"difference follows the rule (the implementation) or the domains (the regime). Version "
        f"{ARM_VERSION}'s references: source only {fmt(references[reference_name('source', ARM_VERSION)])}, "
        f"the oracle {fmt(references[reference_name('oracle', ARM_VERSION)])}.",
        "",
        "| domains | PPL rule | PPL gap closed | random points' gap closed | margin vs random [plain 95% CI] | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for domains, rule, ours_id, rival_id in cells:
        ours, rival = by_id.get(ours_id), by_id.get(rival_id)
        if ours is None:
            continue
        margin = paired_margin(ours, rival).text() if rival is not None and rival.gap else "-"
        rival_gap = fmt(rival.gap, 2) if rival is not None else "n/a"
        lines.append(f"| {domains} | `{rule}` | {fmt(ours.gap, 2)} | {rival_gap} | {margin} | {len(ours.seeds)} |")
    return lines + [""]


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


def prepare_sweep(cfg: ExperimentConfig, measure_mask: bool, say: Callable[[str], None]) -> float | None:
    """Train (or find) one sweep's references: the source model, the warm-up and the oracle; with
    ``measure_mask``, also measure what LabOR SPL's whole mask buys with the warmed-up selector (recorded in
    ``MATCH_FILE``) and return that pool fraction, the budget of its random rival (else None). The sweep
    then finds all of them in its caches."""
    from orchestrator.round.start_models import ensure_oracle_reference, ensure_source_model, ensure_warmup_model

    source, source_metrics = ensure_source_model(cfg, progress=say)
    warmed, _ = ensure_warmup_model(cfg, source, source_metrics, progress=say)
    matched = None
    if measure_mask:
        matched = matched_fraction_of(cfg)
        if matched is None:
            measured = whole_mask_fraction(cfg, warmed)
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(cfg.output_dir) / MATCH_FILE, json.dumps(measured))
            say(
                f"LabOR SPL's whole mask holds {measured['pixels']} pixels ({100 * measured['fraction']:.3g}% of "
                f"the pool): the budget of its random rival"
            )
            matched = measured["fraction"]
    if cfg.sweep.oracle_reference:
        ensure_oracle_reference(cfg, source, progress=say, source_metrics=source_metrics)
    return matched


class ReferenceLanes:
    """Every sweep's references (``prepare_sweep``) in background threads that start at once, each lane
    taking the next sweep of the plan when it is free: while one sweep's trials run, the next sweeps'
    references train beside them.

    Why: a sweep's references are three Train jobs of one CPU each, one after another, and take longer
    than the sweep's trials (about 300 s against 180 s on 2 CPUs), so a single lane keeps every later
    sweep waiting with a CPU idle; two lanes supply references faster than the trials use them, and the
    machine stays busy. Ray is started with one logical CPU more per lane than the machine has (each lane's
    Train job), and each sweep runs as many trials at once as the machine has CPUs. The threads are
    daemons: a benchmark that stops (Ctrl-C, an error) does not wait for them, and the caches count only
    once complete.
    """

    def __init__(self, jobs: list[tuple[tuple, Callable[[], float | None]]], lanes: int = REFERENCE_LANES):
        self._futures: dict[tuple, Future] = {key: Future() for key, _ in jobs}
        self._jobs = iter(jobs)
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"quality-references-{lane}", daemon=True)
            for lane in range(1, max(1, lanes) + 1)
        ]
        for thread in self._threads:
            thread.start()

    def _next(self) -> tuple[tuple, Callable[[], float | None]] | None:
        with self._lock:  # the plan's order: the sweep that runs next gets its references first
            return next(self._jobs, None)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, job = item
            try:
                self._futures[key].set_result(job())
            except BaseException as err:  # handed to the sweep that waits for it
                self._futures[key].set_exception(err)

    def result(self, key: tuple) -> float | None:
        """The references' outcome for ``key`` once they are ready (their error, raised here)."""
        return self._futures[key].result()


def machine_cpus() -> int:
    """CPUs this process may run on (its affinity, as a container or ``taskset`` limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seed 0, the headline pairs only (about 8 minutes)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds of the headline pairs, the first of 0-7 (default: 8, quick: 1)"
    )
    parser.add_argument(
        "--other-seeds",
        type=int,
        default=None,
        help="seeds of RIPU points, RIPU regions and entropy, the first ones (default: 1, quick: 0)",
    )
    parser.add_argument(
        "--arm-seeds",
        type=int,
        default=None,
        help="seeds of the arm (PPL's rule x the domains' version), the first ones (default: 1, quick: 0)",
    )
    parser.add_argument("--tzeng", action="store_true", help="also Tzeng et al.'s ablation, on the first seed")
    parser.add_argument("--output-dir", default="runs/benchmarks", help="sweeps go here (default runs/benchmarks)")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where BENCHMARKS.md and the image go")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: as the sweep's)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--reference-lanes",
        type=int,
        default=REFERENCE_LANES,
        metavar="N",
        help=f"sweeps whose references (source model, warm-up, oracle) train at once in the background, "
        f"beside the trials (default {REFERENCE_LANES}: one sweep's references take longer than its trials)",
    )
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
    if (
        (args.seeds is not None and not 1 <= args.seeds <= len(EVALUATION_SEEDS))
        or (args.other_seeds is not None and args.other_seeds < 0)
        or (args.arm_seeds is not None and args.arm_seeds < 0)
        or args.reference_lanes < 1
    ):
        print(
            f"error: --seeds must be 1-{len(EVALUATION_SEEDS)} (the evaluation seeds "
            f"{seed_list(EVALUATION_SEEDS)}), --other-seeds and --arm-seeds >= 0, --reference-lanes >= 1",
            file=sys.stderr,
        )
        return 2
    seeds = plan.seeds if args.seeds is None else EVALUATION_SEEDS[: args.seeds]
    others = plan.other_seeds if args.other_seeds is None else EVALUATION_SEEDS[: args.other_seeds]
    arm = plan.arm_seeds if args.arm_seeds is None else EVALUATION_SEEDS[: args.arm_seeds]
    plan = replace(
        plan,
        seeds=seeds,
        other_seeds=tuple(s for s in others if s in seeds),
        arm_seeds=tuple(s for s in arm if s in seeds),
        tzeng=args.tzeng,
    )
    output_dir = Path(args.output_dir).resolve() / ("quick" if args.quick else "full")
    sweeps = plan_sweeps(plan)
    try:
        bases = {
            (seed, version): base_config(plan, seed, output_dir, args.overrides, version) for seed, version in sweeps
        }
        for seed, version in sweeps:  # every case of every sweep valid, before anything runs
            sweep_config(plan, seed, output_dir, args.overrides, 0.01, version)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configs = {seed: bases[seed, None] for seed in plan.seeds}
    arm_configs = {seed: bases[seed, ARM_VERSION] for seed in plan.arm_seeds}
    if arm_configs and configs[plan.seeds[0]].data.synthetic.version == ARM_VERSION:
        print(
            f"error: the arm compares the configured domains with version {ARM_VERSION}'s, and they are version "
            f"{ARM_VERSION}; run it on other domains or with --arm-seeds 0",
            file=sys.stderr,
        )
        return 2

    from orchestrator.tracking.mlflow_runs import TrackingError, check_tracking_uri, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri, configs[plan.seeds[0]].tracking.uri)
    try:
        check_tracking_uri(tracking_uri)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        from trainers.data import DatasetError, check_domains

        try:
            check_domains(configs[plan.seeds[0]].data, progress=print)
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    timing = output_dir / RUN_RECORD
    started = time.perf_counter()
    if not args.report_only:
        from orchestrator.sweep.driver import run_sweep

        print(f"[quality] plan: {plan_text(plan)}", flush=True)
        print(
            f"[quality] {estimate(plan, lanes=args.reference_lanes).text()}; the timing holds only with nothing else running "
            f"(load average now {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        output_dir.mkdir(parents=True, exist_ok=True)
        timing.write_text(
            json.dumps(
                {"started": time.time(), "estimated_minutes": estimate(plan, lanes=args.reference_lanes).minutes[1]}
            )
        )
        from orchestrator.cluster.ray_connection import start_ray

        trials_at_once = args.num_cpus or machine_cpus()
        start_ray(None, trials_at_once + args.reference_lanes, args.quiet)  # + each lane's Train job

        def lane_progress(seed: int, version: int | None) -> Callable[[str], None]:
            where = f"seed {seed}" + ("" if version is None else f", domains version {version}")
            return (lambda msg: None) if args.quiet else (lambda msg: print(f"[quality] {where}: {msg}", flush=True))

        lanes = ReferenceLanes(
            [
                (
                    (seed, version),
                    partial(prepare_sweep, bases[seed, version], version is None, lane_progress(seed, version)),
                )
                for seed, version in sweeps
            ],
            args.reference_lanes,
        )
        for number, (seed, version) in enumerate(sweeps, start=1):
            seed_started = time.perf_counter()
            # The whole-mask rival's budget is measured on the configured domains only (the arm has no SPL row).
            matched = lanes.result((seed, version))
            cfg = with_overrides(
                sweep_config(plan, seed, output_dir, args.overrides, matched, version),
                {"sweep.max_concurrent": trials_at_once},
            )
            rows = sweep_rows(plan, seed, version, matched)
            where = f"seed {seed}" + ("" if version is None else f", domains version {version}")
            print(
                f"[quality] {where} ({number}/{len(sweeps)}): {len(rows)} trials, {cfg.adapt.total_steps} "
                f"adaptation steps each after a {cfg.warmup.steps}-step warm-up, into {cfg.output_dir} "
                f"(waited {time.perf_counter() - seed_started:.0f} s for its references)",
                flush=True,
            )
            sweep_dir = Path(cfg.output_dir) / cfg.sweep.name
            resume = (sweep_dir / "sweep.json").is_file()  # an interrupted benchmark continues
            code = run_sweep(
                cfg, tracking_uri, num_cpus=args.num_cpus, quiet=args.quiet, resume=resume, dashboard=False
            )  # no dashboard process taking CPU from the timed run
            if code not in (0,):
                print(
                    f"[quality] {where}: the sweep exited with {code}; rows of failed trials show n/a",
                    file=sys.stderr,
                )
            print(
                f"[quality] {where} done in {(time.perf_counter() - seed_started) / 60:.1f} min "
                f"({(time.perf_counter() - started) / 60:.1f} min in all)",
                flush=True,
            )
        timing.write_text(json.dumps({**json.loads(timing.read_text()), "finished": time.time()}))
    minutes = run_minutes(output_dir)

    try:
        measured, references = collect(plan, configs, arm_configs)
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
    checks = goal_checks(measured, references)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    stem = "quality-quick" if args.quick else "quality"
    image = docs / f"{stem}-budget-curve.png"
    write_budget_curve(plan, measured, references, image)
    command = "python -m benchmarks.quality" + (" --quick" if args.quick else "")
    text = render_markdown(
        plan,
        args.quick,
        measured,
        references,
        checks,
        configs[plan.seeds[0]],
        minutes,
        image.name,
        command,
        run_record(output_dir).get("estimated_minutes"),
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


def run_record(output_dir: Path) -> dict:
    """What the run that produced the sweeps under ``output_dir`` recorded: its start, its estimate, its end."""
    record = output_dir / RUN_RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def run_minutes(output_dir: Path) -> float:
    """Wall time of the benchmark run that produced the sweeps under ``output_dir``: from its own
    record, else from the files it wrote (first written to last trial result); NaN if unknown."""
    times = run_record(output_dir)
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
