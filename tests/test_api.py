"""The Python API: configs built like the command line builds them, and a sweep folder loaded as
DataFrames (a real sweep is loaded in test_sweep_cli.py::test_smoke_sweep_logs_every_trial_to_mlflow)."""

import json

import pytest

from orchestrator import api


def test_config_merges_files_applies_overrides_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("adapt:\n  steps: 5\n")
    cfg = api.config("a.yaml", overrides={"selection.rounds": 2, "output_dir": "out"})
    assert (cfg.adapt.steps, cfg.selection.rounds, cfg.output_dir) == (5, 2, str(tmp_path / "out"))
    assert api.config(smoke=True).sweep.name == "smoke"
    with pytest.raises(api.ConfigError, match="config key 'adapt.steps': must be >= 1"):
        api.config(overrides=["adapt.steps=0"])


def _write_sweep(folder, cfg):
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"parent_run_id": "p", "config": cfg.to_dict()}))
    for trial, points, mious in (("a_00000", 2, [0.2, 0.3, 0.35]), ("a_00001", 5, [0.2, 0.4, 0.45])):
        lines = []
        for rnd, miou in enumerate(mious):
            lines.append(
                {
                    "round": rnd,
                    "target/miou": miou,
                    "target/iou/road": miou + 0.1,
                    "target/iou/car": miou / 2,
                    "budget/labeled_pixels": points * 8 * rnd,
                    "budget/labeled_fraction": points * rnd / 100,
                    "budget/clicks": points * 8.0 * rnd,
                    "trial_id": trial,
                    "config": {"selection.points_per_image": points},
                }
            )
        lines.append(lines[-1])  # a round reported twice (a resumed trial) counts once
        (folder / "tune" / f"tune_trial_{trial}").mkdir(parents=True)
        (folder / "tune" / f"tune_trial_{trial}" / "result.json").write_text("\n".join(map(json.dumps, lines)) + "\n")


def test_load_sweep_gives_trials_rounds_and_class_iou(tmp_path):
    cfg = api.config(smoke=True, overrides={"output_dir": str(tmp_path / "runs"), "selection.rounds": 2})
    _write_sweep(tmp_path / "runs" / "smoke", cfg)
    results = api.load_sweep(tmp_path / "runs" / "smoke")
    assert len(results.rounds) == 6 and results.rounds["round"].tolist() == [0, 1, 2, 0, 1, 2]
    trials = results.trials.set_index("trial_id")
    assert trials.loc["a_00001", "miou"] == 0.45 and trials.loc["a_00001", "rounds"] == 2
    assert trials.loc["a_00001", "gain"] == pytest.approx(0.25)
    assert trials.loc["a_00000", "selection.points_per_image"] == 2
    assert results.source_only == 0.2 and results.oracle is None  # smoke sweeps skip the oracle
    assert results.class_iou.set_index("trial_id").loc["a_00000", "road"] == pytest.approx(0.45)
    with pytest.raises(api.ConfigError, match="is not a sweep folder"):
        api.load_sweep(tmp_path)


def test_load_sweep_names_each_level_for_what_it_is(tmp_path):
    from orchestrator.round.start_models import oracle_cache_key, source_cache_key, warmup_cache_key

    cfg = api.config(
        smoke=True,
        overrides={"output_dir": str(tmp_path / "runs"), "warmup.steps": 3, "sweep.oracle_reference": True},
    )
    _write_sweep(tmp_path / "runs" / "smoke", cfg)
    for folder, key, miou in (
        ("source-models", source_cache_key(cfg), 0.128),
        ("warmup-models", warmup_cache_key(cfg), 0.2),  # every trial's round 0 here
        ("oracle-references", oracle_cache_key(cfg), 0.6),
    ):
        (tmp_path / "runs" / folder / key).mkdir(parents=True)
        (tmp_path / "runs" / folder / key / "metrics.json").write_text(json.dumps({"target/miou": miou}))
    results = api.load_sweep(tmp_path / "runs" / "smoke")
    assert (results.source_only, results.warmup, results.oracle) == (0.128, 0.2, 0.6)
    assert results.rounds.loc[results.rounds["round"] == 0, "start"].unique().tolist() == ["warmup"]
