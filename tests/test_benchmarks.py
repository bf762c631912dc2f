"""The quality benchmark's plan, its reading of finished sweeps, its goal checks and its report.

The sweeps themselves are the product's own path (tested elsewhere); here a finished sweep is laid
out on disk by hand, with known figures, and the benchmark must find every trial's row and compute
gap closed, mean and spread exactly.
"""

import json
import statistics

import pytest

from benchmarks import quality
from benchmarks.quality import (
    FULL,
    QUICK,
    Plan,
    base_config,
    collect,
    goal_checks,
    plan_rows,
    render_markdown,
    sweep_config,
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


def test_full_plan_runs_the_headline_pairs_on_every_seed_and_the_other_rows_on_two():
    assert len(FULL.seeds) >= quality.MIN_SEEDS_TO_JUDGE and FULL.other_seeds == (0, 1)
    for seed in FULL.seeds:
        rows = plan_rows(FULL, seed, matched_fraction=0.013)
        cases = [json.dumps(r.keys, sort_keys=True) for r in rows]
        assert len(cases) == len(set(cases))  # a trial is never run twice for one seed
        ids = {r.id for r in rows}
        assert {"ppl", "random", "spl_mask", "random_mask"} <= ids
        assert ({"spl", "random_squares", "ripu_points", "ripu_regions", "entropy", "ppl@10", "random@10"} <= ids) is (
            seed in FULL.other_seeds
        )
    rows = {r.id: r for r in plan_rows(FULL, 0, matched_fraction=0.013)}
    assert rows["ppl"].keys == {"selection.rule": "labor_ppl", "selection.points_per_image": 40}
    assert rows["spl_mask"].keys == {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask"}
    assert rows["random_mask"].keys == {"selection.rule": "random_regions", "selection.budget_fraction": 0.013}
    # RIPU in its own procedure: the same total budget over 5 rounds (8 points, 0.44% per round).
    assert rows["ripu_points"].keys == {
        "selection.rule": "region_impurity",
        "selection.points_per_image": 8,
        "selection.rounds": 5,
    }
    assert rows["ripu_regions"].keys["selection.budget_fraction"] == pytest.approx(0.0044)
    assert {r.id: r.rival for r in rows.values() if r.rival} == {
        "ppl": "random",
        "spl_mask": "random_mask",
        "spl": "random_squares",
        "ripu_points": "random",
        "ripu_regions": "random_squares",
        "entropy": "random",
        "ppl@10": "random@10",
    }
    assert [r.id for r in rows.values() if r.goal] == ["ppl", "spl_mask"]
    assert "random_mask" not in {r.id for r in plan_rows(FULL, 0)}  # its budget is unknown until measured
    assert {r.table for r in plan_rows(Plan(**{**FULL.__dict__, "tzeng": True}), 0)} == {
        "main",
        "confusion",
        "temperature",
        "semi",
    }


def test_sweeps_start_the_longest_trials_first_and_train_equal_steps(tmp_path):
    cfg = sweep_config(FULL, 1, tmp_path, [], matched_fraction=0.013)
    cases = cfg.sweep.search_space["cases"]["grid"]
    rounds = [case.get("selection.rounds", 1) for case in cases]
    assert rounds == sorted(rounds, reverse=True) and rounds[:2] == [5, 5]
    assert sorted(json.dumps(c, sort_keys=True) for c in cases) == sorted(
        json.dumps(r.case(), sort_keys=True) for r in plan_rows(FULL, 1, 0.013)
    )  # the same trials, reordered
    assert cfg.adapt.total_steps == FULL.total_steps and cfg.warmup.steps > 0


def test_every_case_is_a_valid_config(tmp_path):
    for plan in (FULL, QUICK):
        for seed in plan.seeds:
            cfg = sweep_config(plan, seed, tmp_path, [], 0.02)  # validates every case of the cases axis
            assert cfg.seed == seed and cfg.output_dir == str(tmp_path / f"seed-{seed}")
            assert len(cfg.sweep.search_space["cases"]["grid"]) == len(plan_rows(plan, seed, 0.02))


def _finished_sweep(plan, seed, root, data_cache, mious, source, oracle, warmup=None, matched=0.013, unfinished=()):
    """Lay out what a finished benchmark sweep leaves on disk, with the given final mIoUs per row id."""
    cfg = base_config(plan, seed, root, [*SMALL_DATA, f"data.cache_dir={data_cache}"])
    out = root / f"seed-{seed}"
    for folder, metrics in (
        (out / "source-models" / source_cache_key(cfg), source),
        (out / "warmup-models" / warmup_cache_key(cfg), warmup or source),
        (out / "oracle-references" / oracle_cache_key(cfg), oracle),
    ):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if matched is not None:
        (out / quality.MATCH_FILE).write_text(json.dumps({"pixels": 10, "fraction": matched}))
    for number, row in enumerate(plan_rows(plan, seed, matched)):
        if row.id not in mious:
            continue
        trial = out / "quality" / "trials" / f"trial{number:03d}"
        trial.mkdir(parents=True)
        (trial / "config.json").write_text(json.dumps(with_overrides(cfg, {"cases": row.case()}).to_dict()))
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


PLAN = Plan(seeds=(0, 1, 2, 3, 4), other_seeds=(0, 1), curve_points=())
SOURCE, ORACLE = {"target/miou": 0.1}, {"target/miou": 0.5}


def test_collect_computes_gap_closed_and_paired_margins_with_t_intervals(tmp_path, data_cache):
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
    assert by_id["ripu_points"].seeds == [0, 1] and by_id["spl"].miou == []  # other rows: two seeds, if run
    assert references["warmup_gap"] == pytest.approx([0.25] * 5) and references["source"] == [0.1] * 5

    margin = quality.paired_margin(by_id["ppl"], by_id["random"])
    mean, sd = statistics.fmean(ppl_lead), statistics.stdev(ppl_lead)
    half = 2.7764451 * sd / 5**0.5  # Student's t, 4 degrees of freedom, 97.5%
    assert margin.mean == pytest.approx(mean) and (margin.low, margin.high) == pytest.approx((mean - half, mean + half))
    assert margin.verdict() is True
    spl = quality.paired_margin(by_id["spl_mask"], by_id["random_mask"])
    assert spl.low < 0 < spl.high and spl.verdict() is False  # the interval straddles 0: not beaten
    assert quality.paired_margin(by_id["ripu_points"], by_id["random"]).verdict() is None  # 2 seeds: not judged

    checks = [(c.text, c.met) for c in goal_checks(measured)]
    assert checks[0] == ("LabOR PPL (40 pts/img) closes 0.92 of the gap (goal >= 0.90; 5 seed(s))", True)
    assert checks[1][1] is True and checks[1][0].startswith(
        f"LabOR PPL (40 pts/img) beats random points: paired margin +0.12 [{mean - half:+.2f}, {mean + half:+.2f}] "
        f"of the gap (95% interval over 5 seeds; per seed +0.10, +0.20, +0.15, +0.05, +0.10)"
    )
    assert checks[2] == ("LabOR SPL, whole mask (whole mask) closes 0.92 of the gap (goal >= 0.90; 5 seed(s))", True)
    assert checks[3][1] is False

    text = render_markdown(
        PLAN,
        False,
        measured,
        references,
        goal_checks(measured),
        configs[0],
        12.0,
        "curve.png",
        "python -m benchmarks.quality",
    )
    assert (
        f"| **LabOR PPL** | warm-up, 1 round | 40 pts/img | 1% | 10.0 | 0.468 ± 0.023 | 0.92 ± 0.06 | "
        f"+0.12 [{mean - half:+.2f}, {mean + half:+.2f}] | 5 |" in text
    )
    assert (
        "| RIPU points | warm-up, 5 rounds | 5 x 8 pts/img | 1% | 10.0 | 0.400 ± 0.000 | 0.75 ± 0.00 | "
        "-0.05 [-0.05, -0.05] | 2 |" in text
    )
    assert "| warm-up alone | 300 label-free steps | 0 | 0% | 0 | 0.200 ± 0.000 | 0.25 ± 0.00 | - | 5 |" in text
    assert "| random points | warm-up, 1 round | 40 pts/img | 1% | 10.0 | 0.420 ± 0.000 | 0.80 ± 0.00 | - | 5 |" in text
    assert "- met: LabOR PPL (40 pts/img) closes 0.92" in text and "- MISSED: LabOR SPL, whole mask" in text
    assert "Total optimizer steps of every trial (source + warm-up + rounds): 1000." in text
    assert "![budget curve](curve.png)" in text


def test_a_margin_needs_five_seeds_to_be_judged(tmp_path, data_cache):
    two = Plan(seeds=(0, 1), curve_points=())
    configs = {
        seed: _finished_sweep(
            two, seed, tmp_path, data_cache, {"ppl": 0.46 + 0.01 * seed, "random": 0.38}, SOURCE, ORACLE
        )
        for seed in two.seeds
    }
    measured, _ = collect(two, configs)
    checks = goal_checks(measured)
    assert [c.met for c in checks] == [True, None]
    assert "95% interval over 2 seeds; at least 5 seeds are needed to judge" in checks[1].text
    one = {0: configs[0]}
    measured, _ = collect(Plan(seeds=(0,), curve_points=()), one)
    assert "+0.20 (1 seed)" in goal_checks(measured)[1].text and goal_checks(measured)[1].met is None


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


def test_quality_refuses_a_bad_seed_count(capsys):
    assert quality.main(["--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1 and --other-seeds >= 0"


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
    assert (
        quality.main(
            [
                "--report-only",
                "--output-dir",
                str(tmp_path),
                "--docs",
                str(tmp_path / "docs"),
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 2
    )
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
    assert [c.text for c in goal_checks(measured)] == [
        "LabOR SPL, whole mask (whole mask) closes 0.75 of the gap (goal >= 0.90; 1 seed(s))"
    ]


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


def test_a_trial_spread_by_score_is_not_mixed_into_the_default_spl_row(tmp_path, data_cache):
    plan = Plan(seeds=(0,), other_seeds=(0,), curve_points=())
    configs = {0: _finished_sweep(plan, 0, tmp_path, data_cache, {"spl": 0.42}, SOURCE, ORACLE)}
    # A stray finished trial of the same selector and budget, but spread by score (e.g. from an
    # earlier run in the same folder): it belongs to no row of this plan.
    cfg, stray = configs[0], tmp_path / "seed-0" / "quality" / "trials" / "stray"
    stray.mkdir(parents=True)
    case = {"selection.rule": "labor_spl", "selection.budget_fraction": 0.022, "selection.region_spread": "score"}
    (stray / "config.json").write_text(json.dumps(with_overrides(cfg, {"cases": case}).to_dict()))
    (stray / PROGRESS_FILE).write_text(
        json.dumps(
            {
                "progress": {"round": 1, "model_checkpoint": "x", "trial_id": "s"},
                "metrics": {"target/miou": 0.30, "budget/labeled_fraction": 0.022, "budget/clicks": 80.0},
            }
        )
    )
    measured, references = collect(plan, configs)
    assert next(m for m in measured if m.row.id == "spl").miou == [0.42]  # share, the default spread, only
    text = render_markdown(plan, False, measured, references, [], configs[0], 1.0, "c.png", "cmd")
    assert "`selection.region_spread=share`" in text
