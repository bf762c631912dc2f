"""``--dry-run``: the plan of a sweep or a run (trials, rounds, steps, images, estimated device-hours
from measured step times) without starting Ray or writing anything."""

import pytest

from conftest import ROOT
from experiment_config import load_config
from orchestrator.sweep import command
from orchestrator.sweep.plan import MEASURED, Measured, format_plan, make_plan, price

PAPER = ROOT / "configs"


def h200_seconds(kind: str) -> float:
    """The measured H200 figure of ``kind`` for DeepLab-V2 (measured at the paper configs' 640x1280;
    steps of 2 + 2 images)."""
    (figure,) = [f for f in MEASURED if f.kind == kind and f.device == "gpu" and not f.rule]
    assert (figure.height, figure.width) == (640, 1280) and figure.model == "deeplabv2_resnet101"
    return figure.seconds


def test_every_measured_figure_names_where_it_came_from():
    for figure in MEASURED:
        assert "commit " in figure.source and "2026-" in figure.source, figure
        assert figure.seconds > 0 and figure.what


def test_a_price_scales_the_nearest_figure_in_pixels_and_images():
    table = (Measured("adapt_step", "m", "gpu", 100, 100, 2, 1.0, "a step", "somewhere, commit x"),)
    assert price("adapt_step", "m", "gpu", 200, 100, 2, table=table).seconds == pytest.approx(2.0)
    assert price("adapt_step", "m", "gpu", 100, 100, 1, table=table).seconds == pytest.approx(0.5)
    stand_in = price("source_step", "m", "gpu", 100, 100, 2, table=table)
    assert stand_in.seconds == pytest.approx(1.0) and "none measured, priced as an adaptation step" in stand_in.basis
    missing = price("adapt_step", "m", "cpu", 100, 100, 2, table=table)
    assert missing.seconds is None and "no measured adaptation step (G and S) of m on a CPU" in missing.basis


def test_the_labor_ppl_run_plan_counts_every_step_and_image():
    cfg = load_config(PAPER / "gta5_to_cityscapes_labor_ppl.yaml")
    plan = make_plan(cfg)
    rows = {row.name: row for row in plan.rows}
    assert plan.trials == 1 and plan.rounds == [1]
    assert (rows["source model"].steps, rows["source model"].source_images) == (20_000, 40_000)
    assert rows["source model"].target_images == 0
    # The warm-up at AdaptSegNet's batch of 1 + 1: G's 10,000 steps, then S's 10,000 on the frozen G.
    assert (rows["warm-up G (label-free)"].steps, rows["warm-up G (label-free)"].target_images) == (10_000, 10_000)
    assert rows["warm-up S (G's labels)"].steps == 10_000
    # S's phase is priced as a step that trains G and S, at 1 + 1 images: half the measured 2 + 2.
    assert rows["warm-up S (G's labels)"].hours == pytest.approx(10_000 * h200_seconds("adapt_step") / 2 / 3600)
    assert (rows["round adaptation"].steps, rows["round adaptation"].source_images) == (30_000, 60_000)
    assert rows["ranking"].ranked == 2975 and rows["evaluation"].evaluated == 3 * 500
    # 2 images a worker, one worker: the measured batch and size. One round: the last, S left out.
    assert rows["source model"].hours == pytest.approx(20_000 * h200_seconds("source_step") / 3600)
    last_round_step = h200_seconds("adapt_step_without_s")
    assert rows["round adaptation"].hours == pytest.approx(30_000 * last_round_step / 3600)
    assert "oracle reference" not in rows
    evaluation = 500 * h200_seconds("eval_image")
    assert plan.oracle_off_hours == pytest.approx((30_000 * last_round_step + evaluation) / 3600)
    assert plan.hours == pytest.approx(sum(row.hours for row in plan.rows))


def test_the_grid_shares_the_source_model_and_the_warm_up():
    plan = make_plan(load_config(PAPER / "gta5_to_cityscapes.yaml"))
    rows = {row.name: row for row in plan.rows}
    assert plan.trials == 6 and "3 cases x 2 selection.points_per_image" in plan.trial_note
    assert rows["source model"].jobs == 1 and rows["warm-up G (label-free)"].jobs == 1
    assert rows["round adaptation"].jobs == 6 and rows["ranking"].ranked == 6 * 2975


def test_the_oracle_reference_turned_on_is_one_job_of_a_whole_trial():
    cfg = load_config(PAPER / "gta5_to_cityscapes.yaml", {"sweep.oracle_reference": True})
    rows = {row.name: row for row in make_plan(cfg).rows}
    assert rows["oracle reference"].jobs == 1 and rows["oracle reference"].steps == 30_000


def test_a_sampled_axis_is_priced_at_its_dearest_value():
    cfg = load_config(
        PAPER / "gta5_to_cityscapes_labor_ppl.yaml",
        {
            "sweep.search_space": {"selection.rounds": {"randint": [1, 4]}},
            "sweep.num_samples": 2,
            "adapt.total_steps": 0,
            "adapt.steps": 100,
        },
    )
    plan = make_plan(cfg)
    assert plan.trials == 2 and plan.rounds == [3, 3] and "priced at their dearest value" in plan.trial_note
    assert {row.name: row for row in plan.rows}["round adaptation"].steps == 2 * 3 * 100


def test_a_model_never_measured_gets_no_invented_figure():
    plan = make_plan(load_config(None))  # small_segnet on the CPU: nothing measured
    assert plan.hours is None
    text = format_plan(plan, load_config(None), "python -m orchestrator.sweep")
    assert "no measured adaptation step (G and S) of small_segnet on a CPU: left out" in text
    assert text.splitlines()[-1].strip()  # the basis closes the plan


def test_dry_run_prints_the_plan_without_starting_ray_or_writing(tmp_path, monkeypatch, capsys):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run started Ray")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(tmp_path)
    code = command.main(["--config", str(PAPER / "gta5_to_cityscapes_labor_spl.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not ray.is_initialized()
    assert "the plan of 'gta5-to-cityscapes-labor-spl' (nothing started, nothing written)" in out
    assert "oracle reference: off (sweep.oracle_reference: false); on, it adds one adaptation of 30,000 steps" in out
    assert "GPU-h" in out and "2026-12-04, commit a22b766" in out
    assert list(tmp_path.iterdir()) == []


def test_run_dry_run_plans_one_trial_of_the_configs_own_values(tmp_path, monkeypatch, capsys):
    from orchestrator import run

    monkeypatch.chdir(tmp_path)
    assert run.main(["--config", str(PAPER / "gta5_to_cityscapes.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trials: 1 (one run: the config's own values)" in out and "oracle reference" not in out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_refuses_a_deeplab_config_without_weights_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = command.main(
        ["--config", str(PAPER / "synthia_to_cityscapes_labor_ppl.yaml"), "--set", "model.pretrained=", "--dry-run"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key 'model.pretrained': is '' and no source.checkpoint")
    assert list(tmp_path.iterdir()) == []
