"""The quality benchmark's plan, its reading of finished sweeps, its goal checks and its report.

The sweeps themselves are the product's own path (tested elsewhere); here a finished sweep is laid
out on disk by hand, with known figures, and the benchmark must find every trial's row and compute
gap closed, mean and spread exactly.
"""

import json
import statistics
import time
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.calibrate_domains import CALIBRATION_SEEDS
from benchmarks.quality import (
    ARM_VERSION,
    FULL,
    QUICK,
    CostFigures,
    Plan,
    base_config,
    collect,
    estimate,
    goal_checks,
    headline_comparisons,
    holm,
    makespan,
    pipeline_end,
    plan_rows,
    plan_sweeps,
    render_markdown,
    sweep_config,
    sweep_rows,
)
from experiment_config import with_overrides
from orchestrator.round.start_models import oracle_cache_key, source_cache_key, warmup_cache_key
from orchestrator.sweep.trainable import PROGRESS_FILE

SMALL_DATA = [
    "data.height=32",
    "data.width=64",
    "data.synthetic.source_images=8",
    "data.synthetic.target_train_images=8",
    "data.synthetic.target_val_images=4",
]


def test_full_plan_runs_the_headline_pairs_on_the_eight_evaluation_seeds_and_never_a_calibration_seed(tmp_path):
    assert FULL.seeds == (0, 1, 2, 3, 4, 5, 6, 7) and QUICK.seeds == (0,)
    assert FULL.other_seeds == (0,) and FULL.arm_seeds == (0,)  # the first seed, chosen before any result
    assert QUICK.other_seeds == () and QUICK.arm_seeds == ()
    for plan in (FULL, QUICK):
        used = {*plan.seeds, *plan.other_seeds, *plan.arm_seeds}
        assert used <= set(plan.seeds) and not used & set(CALIBRATION_SEEDS)
        for seed, version in plan_sweeps(plan):
            cfg = base_config(plan, seed, tmp_path, [], version)
            # Each seed draws its own domains, not seed 0's, and none is a calibration seed.
            assert cfg.seed == seed and cfg.data.synthetic.seed == seed and seed not in CALIBRATION_SEEDS
    for seed in FULL.seeds:
        rows = plan_rows(FULL, seed, matched_fraction=0.013)
        for version in {row.domain_version for row in rows}:  # a trial is never run twice in one sweep
            cases = [json.dumps(r.keys, sort_keys=True) for r in rows if r.domain_version == version]
            assert len(cases) == len(set(cases))
        ids = {r.id for r in rows}
        assert {"ppl", "random", "spl_mask", "random_mask"} <= ids
        assert ({"ripu_points", "ripu_regions", "entropy"} <= ids) is (seed in FULL.other_seeds)
        assert ({"ppl_nearest_k", "v1/ppl", "v1/ppl_nearest_k", "v1/random"} <= ids) is (seed in FULL.arm_seeds)
    rows = {r.id: r for r in plan_rows(FULL, 0, matched_fraction=0.013)}
    # The headline PPL row: the paper's rule, set explicitly, at the default config's 10 points per image.
    assert rows["ppl"].keys == {
        "selection.rule": "labor_ppl",
        "selection.points_per_image": 10,
        "selection.ppl_rule": "per_piece",
    }
    assert rows["random"].keys == {"selection.rule": "random", "selection.points_per_image": 10}
    assert rows["spl_mask"].keys == {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask"}
    assert rows["random_mask"].keys == {"selection.rule": "random_regions", "selection.budget_fraction": 0.013}
    # RIPU in its own procedure: the same total budget over 5 rounds (2 points, 0.44% per round).
    assert rows["ripu_points"].keys == {
        "selection.rule": "region_impurity",
        "selection.points_per_image": 2,
        "selection.rounds": 5,
    }
    assert rows["ripu_regions"].keys["selection.budget_fraction"] == pytest.approx(0.0044)
    assert {r.id: r.rival for r in rows.values() if r.rival} == {
        "ppl": "random",
        "spl_mask": "random_mask",
        "ripu_points": "random",
        "entropy": "random",
        "ppl_nearest_k": "random",
        "v1/ppl": "v1/random",
        "v1/ppl_nearest_k": "v1/random",
    }
    assert [r.id for r in rows.values() if r.goal] == ["ppl", "spl_mask"]
    assert "random_mask" not in {r.id for r in plan_rows(FULL, 0)}  # its budget is unknown until measured
    assert {r.table for r in plan_rows(Plan(**{**FULL.__dict__, "tzeng": True}), 0)} == {
        "main",
        "arm",
        "confusion",
        "temperature",
        "semi",
    }


def test_the_arm_crosses_ppls_two_rules_with_two_domain_versions_without_running_a_cell_twice(tmp_path):
    rows = plan_rows(FULL, 0, matched_fraction=0.013)
    ppl = [r for r in rows if r.keys.get("selection.rule") == "labor_ppl"]
    cells = {(r.domain_version, r.keys["selection.ppl_rule"]): r.id for r in ppl}
    # Four cells: on the configured domains (version 4) the paper's rule is the headline row itself.
    assert cells == {
        (None, "per_piece"): "ppl",
        (None, "nearest_k"): "ppl_nearest_k",
        (ARM_VERSION, "per_piece"): "v1/ppl",
        (ARM_VERSION, "nearest_k"): "v1/ppl_nearest_k",
    }
    assert all(r.keys["selection.points_per_image"] == 10 for r in ppl)
    v4 = sweep_config(FULL, 0, tmp_path, [], 0.013)
    v4_cases = v4.sweep.search_space["cases"]["grid"]
    assert v4.data.synthetic.version == 4 and v4.data.class_set == "synthetic_v2"
    per_piece = [
        c
        for c in v4_cases
        if c["selection.rule"] == "labor_ppl" and c.get("selection.ppl_rule", "per_piece") == "per_piece"
    ]
    assert per_piece == [plan_rows(FULL, 0, 0.013)[0].keys]  # one trial: the headline row is the arm's cell
    assert sum(c == {"selection.rule": "random", "selection.points_per_image": 10} for c in v4_cases) == 1
    v1 = sweep_config(FULL, 0, tmp_path, [], None, ARM_VERSION)
    assert v1.data.synthetic.version == 1 and v1.data.class_set == "synthetic"  # the loader's pairing
    assert v1.output_dir == str(tmp_path / "seed-0-v1") and v4.output_dir == str(tmp_path / "seed-0")
    assert sorted(json.dumps(c, sort_keys=True) for c in v1.sweep.search_space["cases"]["grid"]) == sorted(
        json.dumps(c, sort_keys=True)
        for c in (
            {"selection.rule": "labor_ppl", "selection.points_per_image": 10, "selection.ppl_rule": "per_piece"},
            {"selection.rule": "labor_ppl", "selection.points_per_image": 10, "selection.ppl_rule": "nearest_k"},
            {"selection.rule": "random", "selection.points_per_image": 10},
        )
    )
    assert plan_sweeps(FULL) == [(seed, None) for seed in range(8)] + [(0, ARM_VERSION)]
    assert [r.id for r in sweep_rows(FULL, 1, ARM_VERSION)] == []  # the arm on its seeds only


def test_sweeps_start_the_longest_trials_first_and_train_equal_steps(tmp_path):
    cfg = sweep_config(FULL, 0, tmp_path, [], matched_fraction=0.013)
    cases = cfg.sweep.search_space["cases"]["grid"]
    rounds = [case.get("selection.rounds", 1) for case in cases]
    assert rounds == sorted(rounds, reverse=True) and rounds[:2] == [5, 5]
    assert sorted(json.dumps(c, sort_keys=True) for c in cases) == sorted(
        json.dumps(r.case(), sort_keys=True) for r in sweep_rows(FULL, 0, None, 0.013)
    )  # the same trials, reordered
    assert cfg.adapt.total_steps == FULL.total_steps and cfg.warmup.steps > 0


def test_every_case_of_every_sweep_is_a_valid_config(tmp_path):
    for plan in (FULL, QUICK, Plan(seeds=FULL.seeds, other_seeds=FULL.seeds, arm_seeds=FULL.seeds, tzeng=True)):
        for seed, version in plan_sweeps(plan):
            # Loading validates every case of the cases axis; a bad combination (e.g. version 1's domains in
            # version 4's class set) would raise ConfigError here.
            cfg = sweep_config(plan, seed, tmp_path, [], 0.02, version)
            folder = f"seed-{seed}" if version is None else f"seed-{seed}-v{version}"
            assert cfg.seed == seed and cfg.output_dir == str(tmp_path / folder)
            assert len(cfg.sweep.search_space["cases"]["grid"]) == len(sweep_rows(plan, seed, version, 0.02))


def test_holm_rejects_neither_when_the_smaller_p_misses_its_halved_level():
    # Plain 0.05 would reject both; Holm tests 0.03 at 0.05 / 2 = 0.025, fails, and stops.
    steps = holm([0.04, 0.03])
    assert [s.rejected for s in steps] == [False, False]
    assert [s.step for s in steps] == [2, 1] and [s.level for s in steps] == pytest.approx([0.05, 0.025])
    assert [s.adjusted for s in steps] == pytest.approx([0.06, 0.06])  # max(2 x 0.03, 0.04); 2 x 0.03


def test_holm_rejects_both_when_each_step_passes():
    steps = holm([0.01, 0.04])
    assert [s.rejected for s in steps] == [True, True]  # 0.01 <= 0.025, then 0.04 <= 0.05
    assert [s.adjusted for s in steps] == pytest.approx([0.02, 0.04])  # 2 x 0.01; max(0.02, 1 x 0.04)
    one = holm([0.01, 0.2])  # the second fails its step: only the first is rejected
    assert [s.rejected for s in one] == [True, False] and [s.adjusted for s in one] == pytest.approx([0.02, 0.2])
    # A comparison that cannot be judged stays in the family: the other is still tested at 0.025.
    nan = float("nan")
    undecided = holm([nan, 0.03])
    assert [s.rejected for s in undecided] == [False, False] and undecided[1].adjusted == pytest.approx(0.06)
    assert undecided[0].adjusted != undecided[0].adjusted and undecided[0].step == 2
    assert holm([0.6, 0.7])[0].adjusted == 1.0  # capped at 1


def test_the_plans_estimated_durations_follow_the_cost_figures():
    assert makespan([150, 150, 60, 60, 60, 60, 60, 60], 2) == 330
    assert makespan([60, 60, 60], 2) == 120
    # References one sweep after another in the background lane; a sweep's trials wait for its references
    # and for the sweep before it.
    assert pipeline_end([300, 300, 300], [500, 100, 100]) == 300 + 500 + 100 + 100
    assert pipeline_end([300, 300, 300], [100, 100, 100]) == 900 + 100
    # Two lanes: the second sweep's references train beside the first's, the third's after the first's.
    assert pipeline_end([300, 300, 300], [100, 100, 100], lanes=2) == 600 + 100
    assert pipeline_end([300, 300, 300], [500, 100, 100], lanes=2) == 300 + 500 + 100 + 100
    quick = estimate(QUICK)  # one sweep: its references alone, then 4 one-round trials two at a time
    assert (quick.sweeps, quick.trials) == (1, 4)
    assert quick.minutes == pytest.approx(((294 + 180) / 60,) * 3)
    assert max(quick.minutes) <= 10
    full = estimate(FULL)
    # Seed 0's 2 RIPU + 6 one-round trials (580 s), 7 seeds of 4 one-round trials (180 s each), version 1's
    # 3 (180 s). Two lanes: sweeps 1 and 2's references side by side alone (294 s), the 7 others' beside
    # trials, so lane 1 (sweeps 1, 3, 5, 7, 9) ends after 294 + 4 x refs and the run one sweep's trials later.
    assert (full.sweeps, full.trials) == (9, 7 * 4 + 8 + 3)
    assert full.minutes == pytest.approx(tuple(max(3298, 294 + 4 * refs + 180) / 60 for refs in (700, 730, 760)))
    assert "estimated 56.6 min on 2 CPUs at the default config (55-59" in full.text()
    # With the CPU time of all the work spread over 2 CPUs (9 x 294 s of references, 37 x 90 + 2 x 310 s of
    # trials) above the lanes' pace, the machine sets the estimate.
    busy = estimate(FULL, CostFigures(references=(100.0, 100.0)))
    assert busy.minutes == pytest.approx(((9 * 294 + 37 * 90 + 2 * 310) / 2 / 60,) * 3)
    # One lane: every sweep after the first waits for its references; the last ends its trials after them.
    one_lane = estimate(FULL, lanes=1)
    assert one_lane.minutes == pytest.approx(tuple((294 + 8 * refs + 180) / 60 for refs in (700, 730, 760)))


def _finished_sweep(
    plan,
    seed,
    root,
    data_cache,
    mious,
    source,
    oracle,
    warmup=None,
    matched=0.013,
    unfinished=(),
    domain_version=None,
):
    """Lay out what a finished benchmark sweep leaves on disk, with the given final mIoUs per row id."""
    cfg = base_config(plan, seed, root, [*SMALL_DATA, f"data.cache_dir={data_cache}"], domain_version)
    out = Path(cfg.output_dir)
    for folder, metrics in (
        (out / "source-models" / source_cache_key(cfg), source),
        (out / "warmup-models" / warmup_cache_key(cfg), warmup or source),
        (out / "oracle-references" / oracle_cache_key(cfg), oracle),
    ):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if matched is not None:
        (out / quality.MATCH_FILE).write_text(json.dumps({"pixels": 10, "fraction": matched}))
    for number, row in enumerate(sweep_rows(plan, seed, domain_version, matched)):
        if row.id not in mious:
            continue
        trial = out / "quality" / "trials" / f"trial{number:03d}"
        trial.mkdir(parents=True)
        # As the benchmark runs it: trials at once set from the machine, which does not change what a trial is.
        saved = with_overrides(cfg, {"cases": row.case(), "sweep.max_concurrent": 2})
        (trial / "config.json").write_text(json.dumps(saved.to_dict()))
        metrics = {
            "target/miou": mious[row.id],
            "budget/labeled_fraction": 0.01,
            "budget/clicks": 80.0,
            "target/iou/pole": 0.1,
            "target/iou/traffic_sign": 0.2,
            "target/iou/person": 0.3,
            "train/global_step": 1000,
        }
        rounds = row.keys.get("selection.rounds", 1) - (row.id in unfinished)
        (trial / PROGRESS_FILE).write_text(
            json.dumps(
                {"progress": {"round": rounds, "model_checkpoint": "x", "trial_id": trial.name}, "metrics": metrics}
            )
        )
    return cfg


PLAN = Plan(seeds=(0, 1, 2, 3, 4), other_seeds=(0, 1))
SOURCE, ORACLE = {"target/miou": 0.1}, {"target/miou": 0.5}


def _one_sided_t_p(values):
    """The one-sided paired t-test's p-value from its formula: t = mean / (sd / sqrt(n)), n - 1 degrees."""
    from scipy import stats

    t = statistics.fmean(values) / (statistics.stdev(values) / len(values) ** 0.5)
    return float(stats.t.sf(t, len(values) - 1))


def test_collect_computes_gap_closed_and_paired_margins_and_holm_judges_the_headline(tmp_path, data_cache):
    # Gap closed = (mIoU - 0.1) / 0.4. PPL leads random by 0.10, 0.20, 0.15, 0.05, 0.10 of the gap;
    # SPL's whole mask leads its matched random squares by 0.10, -0.10, 0.05, 0.00, 0.05.
    ppl_lead, spl_lead = [0.10, 0.20, 0.15, 0.05, 0.10], [0.10, -0.10, 0.05, 0.00, 0.05]
    configs = {}
    for seed in PLAN.seeds:
        mious = {
            "ppl": 0.1 + 0.4 * (0.8 + ppl_lead[seed]),
            "random": 0.1 + 0.4 * 0.8,
            "spl_mask": 0.1 + 0.4 * (0.9 + spl_lead[seed]),
            "random_mask": 0.1 + 0.4 * 0.9,
        }
        if seed in PLAN.other_seeds:
            mious.update({"ripu_points": 0.40, "entropy": 0.30})
        configs[seed] = _finished_sweep(
            PLAN, seed, tmp_path, data_cache, mious, SOURCE, ORACLE, warmup={"target/miou": 0.2}
        )
    measured, references = collect(PLAN, configs)
    by_id = {m.row.id: m for m in measured}
    assert by_id["ppl"].gap == pytest.approx([0.9, 1.0, 0.95, 0.85, 0.9]) and by_id["ppl"].seeds == [0, 1, 2, 3, 4]
    assert by_id["ppl"].clicks_per_image == [10.0] * 5  # 80 clicks over the 8 pool images
    assert by_id["ripu_points"].seeds == [0, 1] and by_id["ripu_regions"].miou == []  # other rows: two seeds, if run
    assert references["warmup_gap"] == pytest.approx([0.25] * 5) and references["source"] == [0.1] * 5

    margin = quality.paired_margin(by_id["ppl"], by_id["random"])
    mean, sd = statistics.fmean(ppl_lead), statistics.stdev(ppl_lead)
    half = 2.7764451 * sd / 5**0.5  # Student's t, 4 degrees of freedom, 97.5%
    assert margin.mean == pytest.approx(mean) and (margin.low, margin.high) == pytest.approx((mean - half, mean + half))
    spl = quality.paired_margin(by_id["spl_mask"], by_id["random_mask"])
    assert spl.low < 0 < spl.high  # the interval straddles 0

    # Holm: PPL's p (about 0.005) is the smaller, tested at 0.025 and rejected; SPL's (about 0.29) at 0.05, not.
    ppl_p, spl_p = _one_sided_t_p(ppl_lead), _one_sided_t_p(spl_lead)
    assert ppl_p < 0.025 and spl_p > 0.05
    ppl_c, spl_c = headline_comparisons(measured)
    assert (ppl_c.holm.p_value, spl_c.holm.p_value) == pytest.approx((ppl_p, spl_p))
    assert (ppl_c.holm.adjusted, spl_c.holm.adjusted) == pytest.approx((2 * ppl_p, spl_p))
    assert (ppl_c.holm.step, ppl_c.holm.level, spl_c.holm.step, spl_c.holm.level) == (1, 0.025, 2, 0.05)
    assert (ppl_c.beats, spl_c.beats) == (True, False)
    assert ppl_c.verdict() == "beats random" and spl_c.verdict() == "does not beat random"
    assert ppl_c.text() == (
        f"LabOR PPL (10 pts/img) against random points: beats random. Paired margin +0.12 of the gap, 95% "
        f"interval [{mean - half:+.2f}, {mean + half:+.2f}] over 5 seed(s) (per seed +0.10, +0.20, +0.15, +0.05, "
        f"+0.10). One-sided paired t-test p = {ppl_p:.3g}, Holm-adjusted p = {2 * ppl_p:.3g} (Holm step 1 of 2, "
        f"its p compared with 0.025)."
    )

    checks = [(c.text, c.met) for c in goal_checks(measured, references)]
    assert checks.pop(0) == (
        "the label-free warm-up beats source-only: gap closed +0.25 [+0.25, +0.25] over 5 seed(s)",
        True,
    )
    assert checks[0] == (
        f"LabOR PPL (10 pts/img) beats random points: beats random (Holm-adjusted p = {2 * ppl_p:.3g})",
        True,
    )
    assert checks[1] == (
        f"LabOR SPL, whole mask (whole mask) beats random squares at SPL's cost: does not beat random "
        f"(Holm-adjusted p = {spl_p:.3g})",
        False,
    )
    assert len(checks) == 2

    text = render_markdown(
        PLAN,
        False,
        measured,
        references,
        goal_checks(measured, references),
        configs[0],
        12.0,
        "curve.png",
        "python -m benchmarks.quality",
    )
    assert (
        f"| **LabOR PPL** | warm-up, 1 round | 10 pts/img | 1% | 10.0 | 0.468 ± 0.023 | 0.92 ± 0.06 | "
        f"+0.12 [{mean - half:+.2f}, {mean + half:+.2f}] | 5 |" in text
    )
    assert (
        "| RIPU points | warm-up, 5 rounds | 5 x 2 pts/img | 1% | 10.0 | 0.400 ± 0.000 | 0.75 ± 0.00 | "
        "-0.05 [-0.05, -0.05] | 2 |" in text
    )
    assert "| warm-up alone | 300 label-free steps | 0 | 0% | 0 | 0.200 ± 0.000 | 0.25 ± 0.00 | - | 5 |" in text
    assert "| random points | warm-up, 1 round | 10 pts/img | 1% | 10.0 | 0.420 ± 0.000 | 0.80 ± 0.00 | - | 5 |" in text
    assert "margin vs random [plain 95% CI] |" in text  # the other rows' intervals are unadjusted, and say so
    assert "## Expected outcomes" in text and "- met: the label-free warm-up beats source-only" in text
    assert "- met: LabOR PPL (10 pts/img) beats random points" in text and "- MISSED: LabOR SPL, whole mask" in text
    # The plan, Holm's procedure and both verdicts, whichever way they fall.
    assert (
        "The plan, fixed before any result: headline pairs (LabOR PPL by the paper's rule and random points at 10 "
        "per image; LabOR SPL's whole mask and random squares of the same pixels) on seeds 0-4; RIPU points, RIPU "
        "regions and entropy on seeds 0, 1; the arm, PPL's rule (per_piece, nearest_k) x the domains (the "
        "configured ones, version 1), on no seed." in text
    )
    assert "## Verdicts\n\nHolm's procedure over the 2 headline comparisons" in text
    assert f"- {ppl_c.text()}" in text and f"- {spl_c.text()}" in text
    assert "against random squares at SPL's cost: does not beat random." in text
    assert "Total optimizer steps of every trial (source + warm-up + rounds): 1000." in text
    assert "![budget curve](curve.png)" in text


def test_the_arms_cells_are_measured_on_their_own_domains_and_seeds(tmp_path, data_cache):
    plan = Plan(seeds=(0, 1), arm_seeds=(0,))
    configs, arm_configs = {}, {}
    for seed in plan.seeds:
        mious = {"ppl": 0.42 + 0.02 * seed, "random": 0.38}
        if seed in plan.arm_seeds:
            mious["ppl_nearest_k"] = 0.34
        configs[seed] = _finished_sweep(plan, seed, tmp_path, data_cache, mious, SOURCE, ORACLE)
    # Version 1's sweep has its own references: gap closed = (mIoU - 0.2) / 0.4.
    arm_configs[0] = _finished_sweep(
        plan,
        0,
        tmp_path,
        data_cache,
        {"v1/ppl": 0.46, "v1/ppl_nearest_k": 0.50, "v1/random": 0.40},
        {"target/miou": 0.2},
        {"target/miou": 0.6},
        matched=None,
        domain_version=ARM_VERSION,
    )
    measured, references = collect(plan, configs, arm_configs)
    by_id = {m.row.id: m for m in measured}
    assert by_id["ppl"].seeds == [0, 1] and by_id["ppl_nearest_k"].gap == pytest.approx([0.6])
    assert by_id["v1/ppl"].gap == pytest.approx([0.65]) and by_id["v1/random"].gap == pytest.approx([0.5])
    assert by_id["v1/ppl_nearest_k"].gap == pytest.approx([0.75])
    assert references["v1/source"] == [0.2] and references["v1/oracle"] == [0.6] and references["source"] == [0.1] * 2
    text = render_markdown(
        plan,
        False,
        measured,
        references,
        goal_checks(measured),
        configs[0],
        1.0,
        "c.png",
        "cmd",
        estimated_minutes=41.2,
    )
    assert "the sweeps took 1 minutes (estimated beforehand at 41)" in text  # what the run printed, not today's
    # The configured domains' cells over the arm's seed only (seed 1's PPL trial is left out of the arm).
    assert "| version 4 (13 classes) | `per_piece` | 0.80 | 0.70 | +0.10 (1 seed) | 1 |" in text
    assert "| version 4 (13 classes) | `nearest_k` | 0.60 | 0.70 | -0.10 (1 seed) | 1 |" in text
    assert "| version 1 (9 classes) | `per_piece` | 0.65 | 0.50 | +0.15 (1 seed) | 1 |" in text
    assert "| version 1 (9 classes) | `nearest_k` | 0.75 | 0.50 | +0.25 (1 seed) | 1 |" in text
    assert "Version 1's references: source only 0.200, the oracle 0.600." in text
    assert "LabOR PPL, nearest_k rule" not in text.split("## PPL's rule x the domains")[0]  # not in the main table


def test_a_headline_comparison_needs_five_seeds_to_be_judged(tmp_path, data_cache):
    two = Plan(seeds=(0, 1))
    configs = {
        seed: _finished_sweep(
            two, seed, tmp_path, data_cache, {"ppl": 0.46 + 0.01 * seed, "random": 0.38}, SOURCE, ORACLE
        )
        for seed in two.seeds
    }
    measured, _ = collect(two, configs)
    checks = goal_checks(measured)
    assert [c.met for c in checks] == [None]
    assert (
        checks[0].text
        == "LabOR PPL (10 pts/img) beats random points: cannot be judged: fewer than 5 seeds (2 ran both)"
    )
    ppl, spl = headline_comparisons(measured)
    assert ppl.beats is None and "95% interval [" in ppl.text() and "over 2 seed(s)" in ppl.text()
    assert "Holm" not in ppl.text()  # no p-value, no step: nothing was tested
    assert spl.verdict() == "cannot be judged: fewer than 5 seeds (0 ran both)"  # no rival ran: still in the family
    one = {0: configs[0]}
    measured, _ = collect(Plan(seeds=(0,)), one)
    assert "Paired margin +0.20 of the gap over 1 seed(s) (per seed +0.20)." in headline_comparisons(measured)[0].text()
    assert goal_checks(measured)[0].met is None


def test_budget_curve_is_drawn(tmp_path, data_cache):
    one = Plan(seeds=(0,), other_seeds=(0,), curve_points=())
    configs = {
        0: _finished_sweep(
            one,
            0,
            tmp_path,
            data_cache,
            {"ppl": 0.4, "spl_mask": 0.45, "ripu_regions": 0.3},
            SOURCE,
            ORACLE,
            warmup={"target/miou": 0.2},
        )
    }
    measured, references = collect(one, configs)
    image = tmp_path / "curve.png"
    drawn = quality.write_budget_curve(one, measured, references, image)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000
    assert drawn == [
        "LabOR PPL (warm-up, 1 round)",
        "LabOR SPL, whole mask (warm-up, 1 round)",
        "RIPU regions (warm-up, 5 rounds)",
    ]


@pytest.mark.parametrize(
    "module",
    ["quality", "speed", "selection_speed", "train_overhead", "ablation", "calibrate_domains", "protocol", "chaos"],
)
def test_every_benchmark_refuses_a_bad_key_in_one_line_before_running(module, capsys):
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    assert main(["--set", "adapt.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: config key 'adapt.lrr': unknown key")


def _nothing_runs(tmp_path):
    """Arguments that keep ``quality.main`` from training anything should the refusal under test be broken:
    it would then only look for finished sweeps in an empty folder (and fail the test, not start a run)."""
    return [
        "--report-only",
        "--output-dir",
        str(tmp_path),
        "--docs",
        str(tmp_path / "docs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]


@pytest.mark.parametrize(
    "argv",
    [["--seeds", "0"], ["--seeds", "9"], ["--other-seeds", "-1"], ["--arm-seeds", "-1"], ["--reference-lanes", "0"]],
)
def test_quality_refuses_a_bad_seed_or_lane_count(argv, tmp_path, capsys):
    # Nine seeds would add a seed beyond the evaluation seeds 0-7, fixed before any result.
    assert quality.main([*argv, *_nothing_runs(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --seeds must be 1-8 (the evaluation seeds 0-7), --other-seeds and --arm-seeds >= 0, "
        "--reference-lanes >= 1"
    )


def test_quality_refuses_an_arm_whose_two_domains_are_the_same(tmp_path, capsys):
    argv = ["--set", "data.synthetic.version=1", "--set", "data.class_set=synthetic", *_nothing_runs(tmp_path)]
    assert quality.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: the arm compares the configured domains with version 1's, and they are version 1; run it on "
        "other domains or with --arm-seeds 0"
    )


def test_quality_refuses_remote_storage(capsys):
    assert quality.main(["--set", "storage.uri=s3://bucket/prefix"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: config key 'storage.uri': the quality benchmark reads its "
        "sweeps' results from output_dir on this machine; run it without "
        "storage.uri"
    )


@pytest.mark.parametrize(
    "module, argv, line",
    [
        ("speed", ["--images", "0"], "error: --images must be >= 1 and --source-steps >= 0"),
        ("speed", ["--source-steps", "-1"], "error: --images must be >= 1 and --source-steps >= 0"),
        ("speed", ["--steps", "0"], "error: --memory-images and --steps must be >= 1"),
        (
            "speed",
            ["--set", "storage.uri=s3://bucket/prefix"],
            "error: config key 'storage.uri': the speed benchmark reads its sweep's results from a local folder; run it "
            "without storage.uri",
        ),
        ("selection_speed", ["--images", "0"], "error: --images must be >= 1 and --source-steps >= 0"),
        ("train_overhead", ["--steps", "0"], "error: --steps must be >= 1"),
        ("chaos", ["--rounds", "0"], "error: --trials and --rounds must be >= 1, --kills >= 0, --timeout-min > 0"),
        (
            "chaos",
            ["--set", "storage.uri=s3://bucket/prefix"],
            "error: config key 'storage.uri': the chaos benchmark reads both runs' results from local folders; run it "
            "without storage.uri",
        ),
    ],
)
def test_speed_benchmarks_refuse_bad_arguments_in_one_line(module, argv, line, capsys):
    import importlib

    assert importlib.import_module(f"benchmarks.{module}").main(argv) == 2
    assert capsys.readouterr().err.strip() == line


def test_a_goal_that_cannot_be_measured_is_neither_met_nor_missed():
    from benchmarks.common import Goal
    from benchmarks.selection_speed import selection_goals

    goals = selection_goals({"select_over_forward": 1.1, "speedup_2_vs_1": float("nan")})
    assert [g.verdict for g in goals] == ["ok", "n/a"]
    assert goals[1].text == "2 actors / 1 actor = not measurable (too few images per actor)"
    assert Goal("x", "< 1", 2.0, False).verdict == "MISSED"


def test_report_only_without_finished_sweeps_is_one_line(tmp_path, capsys):
    assert quality.main(_nothing_runs(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no finished benchmark sweep under '{tmp_path / 'full'}'") and "\n" not in err
    assert not (tmp_path / "docs").exists()


def test_gap_closed_is_undefined_when_the_oracle_is_not_above_source_only(tmp_path, data_cache, capsys):
    one = Plan(seeds=(0,), curve_points=())
    configs = {
        0: _finished_sweep(one, 0, tmp_path, data_cache, {"ppl": 0.4}, {"target/miou": 0.5}, {"target/miou": 0.5})
    }
    measured, _ = collect(one, configs)
    ppl = next(m for m in measured if m.row.id == "ppl")
    assert ppl.miou == [0.4] and len(ppl.gap) == 1 and ppl.gap[0] != ppl.gap[0]  # NaN, not a huge number
    assert "gap closed is undefined for this seed" in capsys.readouterr().err


def test_mlflow_away_at_the_end_costs_a_warning_not_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
    report, image = tmp_path / "BENCHMARKS.md", tmp_path / "curve.png"
    report.write_text("# report")
    image.write_bytes(b"png")
    quality._log_to_mlflow("http://127.0.0.1:9", report, image, [], PLAN)  # nothing listens on port 9
    assert "could not log to MLflow" in capsys.readouterr().err
    assert report.read_text() == "# report"


def test_a_multi_round_trial_counts_only_once_its_last_round_is_done(tmp_path, data_cache):
    plan = Plan(seeds=(0,), other_seeds=(0,), curve_points=())
    configs = {
        0: _finished_sweep(
            plan,
            0,
            tmp_path,
            data_cache,
            {"ripu_points": 0.4, "ripu_regions": 0.45},
            SOURCE,
            ORACLE,
            unfinished={"ripu_regions"},
        )
    }
    measured, _ = collect(plan, configs)
    by_id = {m.row.id: m for m in measured}
    assert by_id["ripu_points"].gap == pytest.approx([0.75])  # finished its 5th round
    assert by_id["ripu_regions"].miou == []  # stopped after round 4 of 5: not a result


def test_without_a_whole_mask_measured_spl_has_no_random_rival_row(tmp_path, data_cache):
    one = Plan(seeds=(0,), curve_points=())
    assert "random_mask" not in {r.id for r in plan_rows(one, 0, 0.0)}  # an empty mask: nothing to match
    configs = {0: _finished_sweep(one, 0, tmp_path, data_cache, {"spl_mask": 0.4}, SOURCE, ORACLE, matched=None)}
    measured, _ = collect(one, configs)
    assert goal_checks(measured) == []  # no rival ran beside it: nothing to judge


def test_an_undefined_figure_on_any_seed_makes_the_mean_undefined_not_a_crash():
    from benchmarks.quality import fmt, mean_spread

    nan = float("nan")
    assert all(x != x for x in mean_spread([0.5, nan, 0.7]))
    assert fmt([nan, nan]) == "n/a" and fmt([0.5, 0.7]) == "0.600 ± 0.141"


def test_paired_margins_compare_only_the_seeds_both_rows_ran():
    from benchmarks.quality import Measured, Row, paired_margin

    row = Row("x", "x", "p", "1 pts/img", {})
    ours = Measured(row, seeds=[0, 1, 2], gap=[0.9, 0.8, 0.7])
    rival = Measured(row, seeds=[2, 0], gap=[0.75, 0.5])  # seed 1's rival trial failed
    assert paired_margin(ours, rival).values == pytest.approx((0.4, -0.05))
    assert paired_margin(ours, Measured(row, seeds=[5], gap=[0.1])).text() == "n/a"


def test_a_trial_spread_by_score_is_not_mixed_into_the_default_ripu_regions_row(tmp_path, data_cache):
    plan = Plan(seeds=(0,), other_seeds=(0,))
    configs = {0: _finished_sweep(plan, 0, tmp_path, data_cache, {"ripu_regions": 0.42}, SOURCE, ORACLE)}
    # A stray finished trial of the same selector, budget and rounds, but spread by score (e.g. from an
    # earlier run in the same folder): it belongs to no row of this plan.
    cfg, stray = configs[0], tmp_path / "seed-0" / "quality" / "trials" / "stray"
    stray.mkdir(parents=True)
    ripu = next(r for r in plan_rows(plan, 0) if r.id == "ripu_regions")
    case = {**ripu.keys, "selection.region_spread": "score"}
    (stray / "config.json").write_text(json.dumps(with_overrides(cfg, {"cases": case}).to_dict()))
    (stray / PROGRESS_FILE).write_text(
        json.dumps(
            {
                "progress": {"round": 5, "model_checkpoint": "x", "trial_id": "s"},
                "metrics": {"target/miou": 0.30, "budget/labeled_fraction": 0.022, "budget/clicks": 80.0},
            }
        )
    )
    measured, references = collect(plan, configs)
    assert next(m for m in measured if m.row.id == "ripu_regions").miou == [0.42]  # share, the default spread, only
    text = render_markdown(plan, False, measured, references, [], configs[0], 1.0, "c.png", "cmd")
    assert "`selection.region_spread=share`" in text


def _reference_jobs(started, release):
    def job(key, fails=False):
        def run():
            started.append(key)
            release.wait(10)
            if fails:
                raise RuntimeError(f"references of {key} failed")
            return 0.1 * key

        return run

    return [((1,), job(1)), ((2,), job(2, fails=True)), ((3,), job(3))]


def _wait_until(condition):
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_one_reference_lane_prepares_sweeps_in_order_in_the_background_and_hands_each_its_error():
    import threading

    started, release = [], threading.Event()
    lanes = quality.ReferenceLanes(_reference_jobs(started, release), lanes=1)
    _wait_until(lambda: started)
    time.sleep(0.1)
    assert started == [1]  # one sweep's references at a time, in the plan's order, without waiting for the caller
    release.set()
    assert lanes.result((1,)) == pytest.approx(0.1)
    with pytest.raises(RuntimeError, match="references of 2 failed"):
        lanes.result((2,))
    assert lanes.result((3,)) == pytest.approx(0.3)  # a failed sweep does not stop the next one's references
    assert started == [1, 2, 3]


def test_two_reference_lanes_prepare_the_next_two_sweeps_at_once_in_the_plans_order():
    import threading

    started, release = [], threading.Event()
    lanes = quality.ReferenceLanes(_reference_jobs(started, release), lanes=2)
    _wait_until(lambda: len(started) >= 2)
    time.sleep(0.1)
    assert sorted(started) == [1, 2]  # the first two sweeps at once; the third waits for a free lane
    release.set()
    assert lanes.result((3,)) == pytest.approx(0.3)
    assert lanes.result((1,)) == pytest.approx(0.1)
    with pytest.raises(RuntimeError, match="references of 2 failed"):
        lanes.result((2,))
    assert sorted(started) == [1, 2, 3]


def test_the_warmup_beats_source_only_only_when_its_whole_interval_is_above_zero():
    def warmup_check(gaps):
        (check,) = goal_checks([], {"warmup_gap": gaps})
        return check

    assert warmup_check([0.10, 0.15, 0.12]).met is True
    assert warmup_check([-0.10, -0.05, 0.0]).met is False  # a warm-up that hurt
    assert warmup_check([0.30, -0.20, 0.05]).met is False  # ahead on average, but the interval straddles 0
    assert warmup_check([0.2]).met is None and "over 1 seed(s)" in warmup_check([0.2]).text
    assert goal_checks([], {"warmup_gap": []}) == []  # no warm-up ran


def test_the_run_record_keeps_the_runs_time_and_the_estimate_it_printed(tmp_path):
    (tmp_path / quality.RUN_RECORD).write_text(
        json.dumps({"started": 0.0, "finished": 600.0, "estimated_minutes": 52.5})
    )
    assert quality.run_minutes(tmp_path) == 10.0
    assert quality.run_record(tmp_path)["estimated_minutes"] == 52.5
    assert quality.run_record(tmp_path / "none") == {}
