"""The quality benchmark's plan, its reading of finished sweeps, its goal checks and its report.

The sweeps themselves are the product's own path (tested elsewhere); here a finished sweep is laid
out on disk by hand, with known figures, and the benchmark must find every trial's row and compute
gap closed, mean and spread exactly.
"""

import json
import statistics

import pytest

from benchmarks import quality
from benchmarks.quality import FULL, QUICK, Plan, collect, goal_checks, plan_rows, render_markdown, sweep_config
from orchestrator.config import with_overrides
from orchestrator.experiment import ORACLE_CACHE_SECTIONS, PROGRESS_FILE, source_cache_key

SMALL_DATA = ["data.height=32", "data.width=64", "data.synthetic.source_images=8",
              "data.synthetic.target_train_images=8", "data.synthetic.target_val_images=4"]


def test_full_plan_runs_every_selector_on_every_seed_and_the_ablation_on_one():
    rows = {seed: plan_rows(FULL, seed) for seed in FULL.seeds}
    assert [len(rows[s]) for s in FULL.seeds] == [22, 16, 16]
    for seed_rows in rows.values():
        cases = [json.dumps(r.keys, sort_keys=True) for r in seed_rows]
        assert len(cases) == len(set(cases))  # a trial is never run twice for one seed
        main = {(r.keys["selection.selector"], r.budget) for r in seed_rows
                if r.table == "main" and r.keys["selection.selector"] != "none"}
        assert main == {(s, f"{b} pts/img") for s in quality.POINT_SELECTORS for b in FULL.point_budgets} | \
            {(s, "2.2%") for s in quality.REGION_SELECTORS} | \
            {(s, "10 pts/img") for s in ("random", "labor_ppl")}
        assert {(r.label, r.budget) for r in seed_rows if r.table == "rounds"} == \
            {("random", "2 x 20 pts/img"), ("labor_ppl", "2 x 20 pts/img"),
             ("random_regions", "2 x 1.1%"), ("labor_spl", "2 x 1.1%")}  # every seed
    assert {r.table for r in rows[0]} == {"main", "confusion", "temperature", "semi", "rounds"}
    assert {r.table for r in rows[1]} == {"main", "rounds"}
    assert sum(r.keys["selection.selector"] == "none" for r in rows[1]) == 2  # unsupervised rows: every seed
    assert not any("selection.region_spread" in r.keys for r in rows[2])  # made way for the two-round regions


def test_sweeps_start_the_longest_trials_first(tmp_path):
    cases = sweep_config(FULL, 1, tmp_path, []).sweep.search_space["cases"]["grid"]
    rounds = [case.get("selection.rounds", 1) for case in cases]
    assert rounds == sorted(rounds, reverse=True) and rounds[:4] == [2, 2, 2, 2]
    assert sorted(json.dumps(c, sort_keys=True) for c in cases) == \
        sorted(json.dumps(r.case(), sort_keys=True) for r in plan_rows(FULL, 1))  # the same trials, reordered


def test_every_case_is_a_valid_config(tmp_path):
    for plan in (FULL, QUICK):
        for seed in plan.seeds:
            cfg = sweep_config(plan, seed, tmp_path, [])  # validates every case of the cases axis
            assert cfg.seed == seed and cfg.output_dir == str(tmp_path / f"seed-{seed}")
            assert len(cfg.sweep.search_space["cases"]["grid"]) == len(plan_rows(plan, seed))


def _finished_sweep(plan, seed, root, data_cache, mious, source, oracle, unfinished=()):
    """Lay out what a finished benchmark sweep leaves on disk, with the given final mIoUs per row label."""
    cfg = sweep_config(plan, seed, root, [*SMALL_DATA, f"data.cache_dir={data_cache}"])
    out = root / f"seed-{seed}"
    for folder, metrics in ((out / "source-models" / source_cache_key(cfg), source),
                            (out / "oracle-references" / cfg.hash(*ORACLE_CACHE_SECTIONS), oracle)):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    for number, row in enumerate(plan_rows(plan, seed)):
        if (row.label, row.budget) not in mious:
            continue
        trial = out / "quality" / "trials" / f"trial{number:03d}"
        trial.mkdir(parents=True)
        (trial / "config.json").write_text(json.dumps(with_overrides(cfg, {"cases": row.case()}).to_dict()))
        metrics = {"target/miou": mious[(row.label, row.budget)], "budget/labeled_fraction": 0.01,
                   "budget/clicks": 80.0, "target/iou/pole": 0.1, "target/iou/traffic_sign": 0.2,
                   "target/iou/person": 0.3}
        rounds = row.keys.get("selection.rounds", 1) - ((row.label, row.budget) in unfinished)
        (trial / PROGRESS_FILE).write_text(json.dumps({"progress": {"round": rounds, "model_checkpoint": "x",
                                                                     "trial_id": trial.name},
                                                       "metrics": metrics}))
    return cfg


PLAN = Plan(seeds=(0, 1), point_budgets=(40,), pixel_budgets=(0.022,), point_selectors=("random", "labor_ppl"),
            region_selectors=("random_regions", "labor_spl"), ablation_seeds=(0,), confusion_weights=(0.0,),
            temperatures=(8.0,))


def test_collect_computes_gap_closed_per_seed_and_checks_the_goals(tmp_path, data_cache):
    source = {"target/miou": 0.1, "target/iou/pole": 0.0, "target/iou/traffic_sign": 0.0, "target/iou/person": 0.0}
    oracle = {"target/miou": 0.5, "target/iou/pole": 0.3, "target/iou/traffic_sign": 0.3, "target/iou/person": 0.3}
    per_seed = {
        0: {("labor_ppl", "40 pts/img"): 0.46, ("random", "40 pts/img"): 0.38, ("labor_spl", "2.2%"): 0.44,
            ("random_regions", "2.2%"): 0.43, ("confusion weight 0", "10 pts/img"): 0.30},
        1: {("labor_ppl", "40 pts/img"): 0.45, ("random", "40 pts/img"): 0.41, ("labor_spl", "2.2%"): 0.47,
            ("random_regions", "2.2%"): 0.46},
    }
    configs = {seed: _finished_sweep(PLAN, seed, tmp_path, data_cache, per_seed[seed], source, oracle)
               for seed in PLAN.seeds}
    measured, references = collect(PLAN, configs)
    by_key = {(m.row.label, m.row.budget): m for m in measured}

    ppl = by_key[("labor_ppl", "40 pts/img")]
    assert ppl.gap == pytest.approx([0.9, 0.875])  # (0.46 - 0.1) / 0.4, (0.45 - 0.1) / 0.4
    assert statistics.stdev(ppl.gap) == pytest.approx(0.0176777, abs=1e-6)
    assert ppl.clicks_per_image == [10.0, 10.0]  # 80 clicks over the 8 pool images
    assert ppl.withheld_miou == pytest.approx([0.2, 0.2])
    assert by_key[("confusion weight 0", "10 pts/img")].miou == [0.30]  # ablation: seed 0 only
    assert references["source"] == [0.1, 0.1] and references["oracle_withheld"] == pytest.approx([0.3, 0.3])

    checks = {c.text.split(" (")[0].split(" by ")[0]: c.met for c in goal_checks(PLAN, measured)}
    assert checks == {
        "labor_ppl at 40 pts/img closes 0.89 of the gap": True,   # mean 0.8875 >= 0.85
        "labor_ppl beats random at 40 pts/img": True,             # +0.15 > spread 0.053 (random's)
        "labor_spl at 2.2% closes 0.89 of the gap": False,        # mean 0.8875 < 0.90
        "labor_spl beats random_regions at 2.2%": False,          # +0.025 < spread 0.053
    }

    text = render_markdown(PLAN, False, measured, references, goal_checks(PLAN, measured), configs[0], 12.0,
                           "curve.png", "python -m benchmarks.quality")
    assert "| labor_ppl | 40 pts/img | 1% | 10.0 | 0.455 ± 0.007 | 0.89 ± 0.02 |" in text
    assert "| random | 40 pts/img | 1% | 10.0 | 0.395 ± 0.021 | 0.74 ± 0.05 |" in text
    assert "| 0 | 0.300 | 0.50 |" in text  # the confusion-weight table, one seed: no spread
    assert "- MISSED: labor_spl at 2.2% closes 0.89 of the gap (goal >= 0.90)" in text
    # The margin per seed, paired: seed 0 (0.46 - 0.38) / 0.4, seed 1 (0.45 - 0.41) / 0.4.
    assert ppl.seeds == [0, 1]
    assert "labor_ppl beats random at 40 pts/img by +0.15 of the gap (goal: more than the seed spread, 0.05; " \
           "per seed +0.20, +0.10)" in text
    assert "![budget curve](curve.png)" in text


def test_budget_curve_is_drawn(tmp_path, data_cache):
    source = {"target/miou": 0.1}
    oracle = {"target/miou": 0.5}
    configs = {0: _finished_sweep(PLAN, 0, tmp_path, data_cache, {("labor_ppl", "40 pts/img"): 0.4,
                                                                 ("labor_spl", "2.2%"): 0.45}, source, oracle)}
    measured, references = collect(Plan(**{**PLAN.__dict__, "seeds": (0,)}), configs)
    image = tmp_path / "curve.png"
    quality.write_budget_curve(PLAN, measured, references, image)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000


@pytest.mark.parametrize("module", ["quality", "speed", "selection_speed", "train_overhead", "ablation",
                                    "calibrate_domains", "protocol", "chaos"])
def test_every_benchmark_refuses_a_bad_key_in_one_line_before_running(module, capsys):
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    assert main(["--set", "adapt.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: config key 'adapt.lrr': unknown key")


def test_quality_refuses_a_bad_seed_count(capsys):
    assert quality.main(["--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1"


def test_quality_refuses_remote_storage(capsys):
    assert quality.main(["--set", "storage.uri=s3://bucket/prefix"]) == 2
    assert capsys.readouterr().err.strip() == ("error: config key 'storage.uri': the quality benchmark reads its "
                                               "sweeps' results from output_dir on this machine; run it without "
                                               "storage.uri")


@pytest.mark.parametrize("module, argv, line", [
    ("speed", ["--images", "0"], "error: --images must be >= 1 and --source-steps >= 0"),
    ("speed", ["--source-steps", "-1"], "error: --images must be >= 1 and --source-steps >= 0"),
    ("speed", ["--steps", "0"], "error: --memory-images and --steps must be >= 1"),
    ("speed", ["--set", "storage.uri=s3://bucket/prefix"],
     "error: config key 'storage.uri': the speed benchmark reads its sweep's results from a local folder; run it "
     "without storage.uri"),
    ("selection_speed", ["--images", "0"], "error: --images must be >= 1 and --source-steps >= 0"),
    ("train_overhead", ["--steps", "0"], "error: --steps must be >= 1"),
    ("chaos", ["--rounds", "0"], "error: --trials and --rounds must be >= 1, --kills >= 0, --timeout-min > 0"),
    ("chaos", ["--set", "storage.uri=s3://bucket/prefix"],
     "error: config key 'storage.uri': the chaos benchmark reads both runs' results from local folders; run it "
     "without storage.uri"),
])
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
    assert quality.main(["--report-only", "--output-dir", str(tmp_path), "--docs", str(tmp_path / "docs"),
                         "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no finished benchmark sweep under '{tmp_path / 'full'}'") and "\n" not in err
    assert not (tmp_path / "docs").exists()


def test_gap_closed_is_undefined_when_the_oracle_is_not_above_source_only(tmp_path, data_cache, capsys):
    configs = {0: _finished_sweep(PLAN, 0, tmp_path, data_cache, {("labor_ppl", "40 pts/img"): 0.4},
                                  {"target/miou": 0.5}, {"target/miou": 0.5})}
    measured, _ = collect(Plan(**{**PLAN.__dict__, "seeds": (0,)}), configs)
    ppl = next(m for m in measured if m.row.label == "labor_ppl")
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


def test_one_seed_cannot_judge_a_margin_against_random(tmp_path, data_cache):
    one_seed = Plan(**{**PLAN.__dict__, "seeds": (0,)})
    configs = {0: _finished_sweep(one_seed, 0, tmp_path, data_cache, {("labor_ppl", "40 pts/img"): 0.46,
                                                                     ("random", "40 pts/img"): 0.38},
                                  {"target/miou": 0.1}, {"target/miou": 0.5})}
    measured, _ = collect(one_seed, configs)
    checks = goal_checks(one_seed, measured)
    assert [c.met for c in checks] == [True, None]
    assert checks[1].text == "labor_ppl beats random at 40 pts/img by +0.20 of the gap (one seed: no spread to judge " \
                             "the margin by)"


def test_two_round_rows_are_read_at_their_own_last_round_and_set_beside_one_round(tmp_path, data_cache):
    plan = Plan(**{**PLAN.__dict__, "seeds": (0,), "point_budgets": (40,), "two_round_points": 20})
    rows = [(r.table, r.label, r.budget, r.keys.get("selection.rounds")) for r in plan_rows(plan, 0)]
    assert ("rounds", "labor_ppl", "2 x 20 pts/img", 2) in rows and ("rounds", "random", "2 x 20 pts/img", 2) in rows
    mious = {("labor_ppl", "40 pts/img"): 0.40, ("random", "40 pts/img"): 0.42,
             ("labor_ppl", "2 x 20 pts/img"): 0.46, ("random", "2 x 20 pts/img"): 0.30}
    configs = {0: _finished_sweep(plan, 0, tmp_path, data_cache, mious, {"target/miou": 0.1}, {"target/miou": 0.5},
                                  unfinished={("random", "2 x 20 pts/img")})}
    measured, references = collect(plan, configs)
    by_key = {(m.row.label, m.row.budget): m for m in measured}
    assert by_key[("labor_ppl", "2 x 20 pts/img")].gap == pytest.approx([0.9])  # finished its round 2
    assert by_key[("random", "2 x 20 pts/img")].miou == []  # stopped after round 1 of 2: not a result
    checks = {c.text.split(" (")[0]: c.met for c in goal_checks(plan, measured)}
    assert checks["labor_ppl at 2 x 20 pts/img closes 0.90 of the gap"] is True  # LabOR's own setting, checked too
    drawn = quality.write_budget_curve(plan, measured, references, tmp_path / "curve.png")
    assert "labor_ppl, 2 x 20 (2 rounds)" in drawn and "labor_ppl" in drawn  # beside its one-round line
    assert not any(label.startswith("random, 2 x") for label in drawn)  # unfinished: nothing to draw
    text = render_markdown(plan, False, measured, references, [], configs[0], 1.0, "c.png", "cmd")
    assert "## LabOR with a selector trained on the target: two rounds" in text
    assert "| labor_ppl | 2 x 20 pts/img | 1% | 10.0 | 0.460 | 0.90 | 0.75 |" in text  # beside one round of 40 points
    assert "| random | 2 x 20 pts/img | n/a | n/a | n/a | n/a | 0.80 |" in text


def test_two_round_regions_are_checked_against_spl_goal_and_set_beside_one_round_of_their_total(tmp_path, data_cache):
    plan = Plan(**{**PLAN.__dict__, "seeds": (0, 1), "two_round_pixel_budget": 0.011})
    rows = {(r.table, r.label, r.budget): r.keys for r in plan_rows(plan, 0)}
    assert rows[("rounds", "labor_spl", "2 x 1.1%")] == {"selection.selector": "labor_spl",
                                                       "selection.budget_fraction": 0.011, "selection.rounds": 2}
    assert ("rounds", "random_regions", "2 x 1.1%") in rows
    per_seed = [{("labor_spl", "2.2%"): 0.400, ("random_regions", "2.2%"): 0.44,
                 ("labor_spl", "2 x 1.1%"): 0.484, ("random_regions", "2 x 1.1%"): 0.420},
                {("labor_spl", "2.2%"): 0.424, ("random_regions", "2.2%"): 0.46,
                 ("labor_spl", "2 x 1.1%"): 0.468, ("random_regions", "2 x 1.1%"): 0.436}]
    configs = {seed: _finished_sweep(plan, seed, tmp_path, data_cache, mious, {"target/miou": 0.1},
                                     {"target/miou": 0.5}) for seed, mious in enumerate(per_seed)}
    measured, references = collect(plan, configs)
    checks = [(c.text, c.met) for c in goal_checks(plan, measured)]
    # gap closed: SPL in two rounds 0.96, 0.92 (mean 0.94, spread 0.028); random squares 0.80, 0.84 (0.82)
    assert ("labor_spl at 2 x 1.1% closes 0.94 of the gap (goal >= 0.90)", True) in checks
    assert ("labor_spl beats random_regions at 2 x 1.1% by +0.12 of the gap (goal: more than the seed spread, "
            "0.03; per seed +0.16, +0.08)", True) in checks
    assert ("labor_spl at 2.2% closes 0.78 of the gap (goal >= 0.90)", False) in checks  # one round: its own goal
    text = render_markdown(plan, False, measured, references, [], configs[0], 1.0, "c.png", "cmd")
    assert "| labor_spl | 2 x 1.1% | 1% | 10.0 | 0.476 ± 0.011 | 0.94 ± 0.03 | 0.78 ± 0.04 |" in text  # one round of 2.2%
    drawn = quality.write_budget_curve(plan, measured, references, tmp_path / "curve.png")
    assert "labor_spl, 2 x 1.1% (2 rounds)" in drawn and "random_regions, 2 x 1.1% (2 rounds)" in drawn


def test_the_report_names_the_extra_budgets_of_each_kind():
    both = Plan(seeds=(0,), point_budgets=(40,), pixel_budgets=(0.022,), curve_point_budgets=(10,),
                curve_pixel_budgets=(0.01,))
    assert quality._curve_note(both, "points") == " (random, labor_ppl also at 10)"
    assert quality._curve_note(both, "regions") == " (random_regions, labor_spl also at 1%)"
    assert quality._curve_note(QUICK, "points") == ""
    assert both.budgets_of("labor_spl") == [0.01, 0.022] and both.budgets_of("entropy") == [40]


def test_an_undefined_figure_on_any_seed_makes_the_mean_undefined_not_a_crash():
    from benchmarks.quality import fmt, mean_spread

    nan = float("nan")
    assert all(x != x for x in mean_spread([0.5, nan, 0.7]))
    assert fmt([nan, nan]) == "n/a" and fmt([0.5, 0.7]) == "0.600 ± 0.141"


def test_paired_margins_compare_only_the_seeds_both_rows_ran():
    from benchmarks.quality import Measured, Row, paired_margins

    row = Row("main", "x", "1 pts/img", {})
    ours = Measured(row, seeds=[0, 1, 2], gap=[0.9, 0.8, 0.7])
    rival = Measured(row, seeds=[2, 0], gap=[0.75, 0.5])  # seed 1's rival trial failed
    assert paired_margins(ours, rival) == "per seed +0.40, -0.05"
    assert paired_margins(ours, Measured(row, seeds=[5], gap=[0.1])) == "no seed in common"


def test_a_trial_spread_by_score_is_not_mixed_into_the_default_spl_row(tmp_path, data_cache):
    plan = Plan(**{**PLAN.__dict__, "seeds": (0,)})
    configs = {0: _finished_sweep(plan, 0, tmp_path, data_cache, {("labor_spl", "2.2%"): 0.42},
                                  {"target/miou": 0.1}, {"target/miou": 0.5})}
    # A stray finished trial of the same selector and budget, but spread by score (e.g. from an
    # earlier run in the same folder): it belongs to no row of this plan.
    cfg, stray = configs[0], tmp_path / "seed-0" / "quality" / "trials" / "stray"
    stray.mkdir(parents=True)
    case = {"selection.selector": "labor_spl", "selection.budget_fraction": 0.022, "selection.region_spread": "score"}
    (stray / "config.json").write_text(json.dumps(with_overrides(cfg, {"cases": case}).to_dict()))
    (stray / PROGRESS_FILE).write_text(json.dumps({"progress": {"round": 1, "model_checkpoint": "x", "trial_id": "s"},
                                                   "metrics": {"target/miou": 0.30, "budget/labeled_fraction": 0.022,
                                                               "budget/clicks": 80.0}}))
    measured, references = collect(plan, configs)
    by_key = {(m.row.label, m.row.budget): m for m in measured}
    assert by_key[("labor_spl", "2.2%")].miou == [0.42]  # share, the default spread, only
    checks = {c.text.split(" (")[0]: c.met for c in goal_checks(plan, measured)}
    assert checks["labor_spl at 2.2% closes 0.80 of the gap"] is False  # the goal reads the default row
    text = render_markdown(plan, False, measured, references, [], configs[0], 1.0, "c.png", "cmd")
    assert "`selection.region_spread=share`" in text
