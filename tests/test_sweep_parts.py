"""Pieces of the sweep that need no Ray run: param spaces, schedulers, budget labels, resume checks."""

import json

import pytest
from ray import tune

from experiment_config import ConfigError, ExperimentConfig, with_overrides
from orchestrator.sweep.state import SWEEP_STATE, load_sweep_state
from orchestrator.sweep.summary import budget_label
from orchestrator.sweep.tune_setup import build_param_space, build_scheduler, parameter_columns


def test_param_space_kinds():
    space = build_param_space(
        {
            "adapt.lr": {"loguniform": [1e-4, 1e-2]},
            "seed": {"randint": [0, 5]},
            "selection.rule": {"choice": ["random", "labor_ppl"]},
            "selection.points_per_image": {"grid": [5, 10]},
        }
    )
    assert isinstance(space["adapt.lr"], tune.search.sample.Float)
    assert isinstance(space["seed"], tune.search.sample.Integer)
    assert isinstance(space["selection.rule"], tune.search.sample.Categorical)
    assert space["selection.points_per_image"] == {"grid_search": [5, 10]}


def test_schedulers():
    assert build_scheduler(ExperimentConfig()) is None
    asha = build_scheduler(with_overrides(ExperimentConfig(), {"sweep.scheduler": "asha", "selection.rounds": 3}))
    assert isinstance(asha, tune.schedulers.ASHAScheduler)
    pbt = build_scheduler(
        with_overrides(
            ExperimentConfig(),
            {"sweep.scheduler": "pbt", "sweep.search_space": {"adapt.confusion_weight": {"uniform": [0.0, 1.0]}}},
        )
    )
    assert isinstance(pbt, tune.schedulers.PopulationBasedTraining)
    with pytest.raises(ConfigError, match="sweep.scheduler.*pbt mutates"):
        with_overrides(ExperimentConfig(), {"sweep.scheduler": "pbt"})


def test_budget_labels():
    assert budget_label(ExperimentConfig()) == "10 points/image/round"
    cfg = with_overrides(ExperimentConfig(), {"selection.rule": "labor_spl", "selection.budget_fraction": 0.022})
    assert budget_label(cfg) == "2.2% of pixels/round"
    assert budget_label(with_overrides(ExperimentConfig(), {"selection.rule": "none"})) == "no labels"


CASES = {
    "cases": {
        "grid": [
            {"selection.rule": "labor_spl", "selection.budget_fraction": 0.022},
            {"selection.rule": "random", "selection.points_per_image": 40},
            {"selection.rule": "none", "adapt.confusion_weight": 0.0},
        ]
    }
}


def test_cases_axis_sets_several_keys_per_trial():
    cfg = with_overrides(ExperimentConfig(), {"sweep.search_space": CASES})
    space = build_param_space(cfg.sweep.search_space)
    assert space["cases"] == {"grid_search": CASES["cases"]["grid"]}
    spl = with_overrides(cfg, {"cases": CASES["cases"]["grid"][0]})
    assert (spl.selection.rule, spl.selection.budget_fraction) == ("labor_spl", 0.022)
    unsupervised = with_overrides(cfg, {"cases": CASES["cases"]["grid"][2], "seed": 3})
    assert (unsupervised.selection.rule, unsupervised.adapt.confusion_weight, unsupervised.seed) == ("none", 0.0, 3)
    # Only keys every case sets: Tune's best-trial line looks each column up in the trial's config.
    assert parameter_columns({"seed": {"grid": [1, 2]}, **CASES}) == ["seed", "cases/selection.rule"]
    assert parameter_columns({"cases": {"grid": [{"seed": 1}, {"adapt.lr": 0.1}]}}) == ["cases"]


def test_tunes_best_trial_line_finds_every_column_of_every_case():
    """Tune's progress table prints the best trial's value of each column; a column that some case
    lacks crashed the sweep (a KeyError in the reporter) before columns were limited to common keys."""
    from types import SimpleNamespace

    from ray.tune.progress_reporter import _best_trial_str

    columns = parameter_columns({"seed": {"grid": [1, 2]}, **CASES})
    for case in CASES["cases"]["grid"]:
        trial = SimpleNamespace(trial_id="t1", last_result={"target/miou": 0.5, "config": {"cases": case, "seed": 1}})
        assert f"'cases/selection.rule': '{case['selection.rule']}'" in _best_trial_str(trial, "target/miou", columns)


@pytest.mark.parametrize(
    "space, problem",
    [
        ({"cases": {"uniform": [0, 1]}}, "must be {grid: [cases]}"),
        ({"cases": {"grid": []}}, "non-empty list of cases"),
        ({"cases": {"grid": [{}]}}, "case 1 must be a non-empty mapping"),
        ({"cases": {"grid": [{"selection.selectr": "random"}]}}, "case 1: 'selection.selectr' is not a tunable"),
        ({"cases": {"grid": [{"sweep.name": "x"}]}}, "is not a tunable"),
        (
            {"cases": {"grid": [{"selection.points_per_image": 5}, {"selection.rule": "labor_spl"}]}},
            "case 2 is invalid: selection.budget_fraction",
        ),
        ({"cases": {"grid": [{"seed": 1}]}, "seed": {"grid": [1, 2]}}, "'seed' is also its own search-space axis"),
        (
            {
                "cases": {"grid": [{"selection.rule": "labor_spl", "selection.budget_fraction": 0.3}]},
                "selection.rounds": {"grid": [2, 5]},
            },
            "case 1 with selection.rounds=5 is invalid: selection.budget_fraction: 0.3 x 5 rounds",
        ),
    ],
)
def test_bad_cases_are_refused_naming_the_case(space, problem):
    with pytest.raises(ConfigError, match="sweep.search_space.cases") as err:
        with_overrides(ExperimentConfig(), {"sweep.search_space": space})
    assert problem in str(err.value)


def test_resume_refuses_changed_settings_but_not_resources(tmp_path):
    cfg = ExperimentConfig()
    (tmp_path / SWEEP_STATE).write_text(json.dumps({"parent_run_id": "x", "config": cfg.to_dict()}))
    assert load_sweep_state(tmp_path, with_overrides(cfg, {"ranking.num_actors": 1}))["parent_run_id"] == "x"
    with pytest.raises(ConfigError, match=r"different settings \(adapt.lr\)"):
        load_sweep_state(tmp_path, with_overrides(cfg, {"adapt.lr": 0.5}))


@pytest.mark.parametrize(
    "selector, scheduler, rounds, trains",
    [
        ("labor_ppl", "fifo", 3, [True, True, False]),  # S ranks rounds 2 and 3; nothing ranks after round 3
        ("labor_spl", "asha", 2, [True, False]),
        ("random", "fifo", 3, [False, False, False]),  # random, entropy, ... rank with G: S is never read
        ("entropy", "pbt", 3, [True, True, False]),  # PBT may switch the selector to LabOR between rounds
        ("none", "fifo", 2, [False, False]),
    ],
)
def test_selector_trains_only_when_a_later_round_ranks_with_it(selector, scheduler, rounds, trains):
    from orchestrator.round.loop import selector_network_trains

    cfg = with_overrides(
        ExperimentConfig(),
        {
            "selection.rule": selector,
            "sweep.scheduler": scheduler,
            "selection.rounds": rounds,
            "selection.budget_fraction": 0.01,
            "sweep.search_space": {"adapt.confusion_weight": {"choice": [0.1, 1.0]}},
        },
    )
    assert [selector_network_trains(cfg, r) for r in range(1, rounds + 1)] == trains


def test_a_trial_is_finished_at_its_own_number_of_rounds():
    from types import SimpleNamespace

    from orchestrator.sweep.summary import summarize

    cfg = with_overrides(ExperimentConfig(), {"selection.rounds": 1})
    done_in_two = SimpleNamespace(
        error=None, config={"cases": {"selection.rounds": 2}}, metrics={"round": 2, "trial_id": "a", "target/miou": 0.5}
    )
    stopped_at_one_of_two = SimpleNamespace(
        error=None, config={"selection.rounds": 2}, metrics={"round": 1, "trial_id": "b", "target/miou": 0.4}
    )
    done_in_one = SimpleNamespace(error=None, config={}, metrics={"round": 1, "trial_id": "c", "target/miou": 0.3})
    status = {
        row["trial"]: row["status"] for row in summarize([done_in_two, stopped_at_one_of_two, done_in_one], cfg, {})
    }
    assert status == {"a": "ok", "b": "failed: incomplete", "c": "ok"}
    # The same short trial, stopped by ASHA after that round: a result; stopped at another round: still not.
    status = {row["trial"]: row["status"] for row in summarize([stopped_at_one_of_two], cfg, {}, {"b": 1})}
    assert status == {"b": "stopped by asha after round 1"}
    assert summarize([stopped_at_one_of_two], cfg, {}, {"b": 0})[0]["status"] == "failed: incomplete"


def test_asha_writes_down_the_trials_it_stops_early(tmp_path):
    import pickle
    from types import SimpleNamespace

    from orchestrator.sweep.tune_setup import read_early_stops

    cfg = with_overrides(ExperimentConfig(), {"sweep.scheduler": "asha", "selection.rounds": 3})
    asha = pickle.loads(pickle.dumps(build_scheduler(cfg, tmp_path / "early-stops.jsonl")))  # Tune pickles it
    asha.set_search_properties("target/miou", "max")
    trials = [SimpleNamespace(trial_id=name) for name in "abcd"]
    for trial in trials:
        asha.on_trial_add(None, trial)
    actions = [
        asha.on_trial_result(None, t, {"round": 1, "target/miou": m}) for t, m in zip(trials, (0.4, 0.3, 0.2, 0.1))
    ]
    assert actions[0] == "CONTINUE" and "STOP" in actions
    assert read_early_stops(tmp_path) == {t.trial_id: 1 for t, a in zip(trials, actions) if a == "STOP"}
    asha.on_trial_result(None, trials[0], {"round": 3, "target/miou": 0.5})  # its last round: not early
    assert "a" not in read_early_stops(tmp_path)


def test_the_summary_shows_each_trial_its_own_kind_of_budget():
    from types import SimpleNamespace

    from orchestrator.sweep.summary import format_table, summarize

    cfg = with_overrides(ExperimentConfig(), {"selection.points_per_image": 40})
    region_trial = SimpleNamespace(
        error=None,
        config={"cases": {"selection.rule": "labor_spl", "selection.budget_fraction": 0.022}},
        metrics={"round": 1, "trial_id": "r", "target/miou": 0.4},
    )
    point_trial = SimpleNamespace(error=None, config={}, metrics={"round": 1, "trial_id": "p", "target/miou": 0.3})
    rows = summarize([region_trial, point_trial], cfg, {})
    assert {row["trial"]: row["budget"] for row in rows} == {"r": "2.2% of pixels/round", "p": "40 points/image/round"}
    table = format_table(rows, {"target/miou": 0.1})
    assert "labor_spl               2.2% of pixels/round" in table  # not the unused points_per_image


@pytest.mark.parametrize(
    "space",
    [
        {"selection.rounds": {"grid": [1, 2]}},
        {
            "cases": {"choice": [{"selection.rounds": 2}, {"selection.points_per_image": 5}]},
            "adapt.confusion_weight": {"uniform": [0.0, 1.0]},
        },
    ],
)
@pytest.mark.parametrize("scheduler", ["asha", "pbt"])
def test_round_by_round_schedulers_refuse_trials_of_different_lengths(space, scheduler):
    with pytest.raises(ConfigError, match=f"sweep.scheduler.*{scheduler} compares trials round by round"):
        with_overrides(ExperimentConfig(), {"sweep.scheduler": scheduler, "sweep.search_space": space})
    with_overrides(ExperimentConfig(), {"sweep.scheduler": "fifo", "sweep.search_space": space})  # fine without


def test_the_progress_table_survives_a_restored_trial_without_its_config():
    from ray.tune import CLIReporter
    from ray.tune.experiment import Trial

    from orchestrator.sweep.tune_setup import SweepReporter

    # After --resume, a restored trial's last result may lack its config; Tune's own table then raises.
    trial = Trial("__fake", config={"selection.points_per_image": 2}, stub=True)
    trial.run_metadata.last_result = {"target/miou": 0.5, "round": 1}
    options = dict(
        metric_columns={"round": "round"},
        parameter_columns=["selection.points_per_image"],
        metric="target/miou",
        mode="max",
    )
    with pytest.raises(KeyError):
        CLIReporter(**options).report([trial], False)
    SweepReporter(**options).report([trial], False)  # that table is skipped; the sweep goes on


def test_a_sweep_is_restored_only_from_a_readable_experiment_state_and_never_starts_its_trials_anew(tmp_path):
    import pickle

    from orchestrator.cluster.storage import Storage
    from orchestrator.sweep.state import restorable_tune_state
    from orchestrator.sweep.tune_setup import TuneStateKeeper

    storage, sweep_dir, said = Storage(tmp_path), tmp_path / "smoke", []
    tune_dir = sweep_dir / "tune"
    state, searcher = tune_dir / "experiment_state-2026.json", tune_dir / "basic-variant-state-2026.json"
    assert not restorable_tune_state(storage, sweep_dir, said.append)  # nothing saved, no trial: start afresh
    tune_dir.mkdir(parents=True)
    (tune_dir / "tuner.pkl").write_bytes(b"x")  # what Tune writes first: a driver killed now left only this
    assert not restorable_tune_state(storage, sweep_dir, said.append)
    (sweep_dir / "trials" / "t1").mkdir(parents=True)
    (sweep_dir / "trials" / "t1" / "progress.json").write_text("{}")  # ... but a trial had started
    with pytest.raises(ConfigError, match="it saved no experiment state.*would buy their labels again"):
        restorable_tune_state(storage, sweep_dir, said.append)

    state.write_text('{"trial_data": ["t1"]}')
    searcher.write_bytes(pickle.dumps({"searcher": 1}))  # Tune's searcher state is a pickle, despite its name
    assert restorable_tune_state(storage, sweep_dir, said.append) and said == []
    keeper = TuneStateKeeper({"output_dir": str(tmp_path)}, str(tune_dir), str(sweep_dir / "tune-state-backup"))
    keeper.on_trial_result(0, [], None, {})  # a readable state is kept
    state.write_text('{"trial_data": ["t1"], "cut off on a full di')
    keeper.on_trial_result(0, [], None, {})  # a damaged one is not: the kept copy stays
    assert restorable_tune_state(storage, sweep_dir, said.append)
    assert state.read_text() == '{"trial_data": ["t1"]}' and "restored the last readable copy" in said[0]

    searcher.write_bytes(pickle.dumps({"searcher": 1})[:-3])  # a pickle cut off is as damaged
    (sweep_dir / "tune-state-backup" / state.name).unlink()
    with pytest.raises(ConfigError, match=r"its experiment state \('experiment_state-2026.json'\) is damaged"):
        restorable_tune_state(storage, sweep_dir, said.append)


def test_a_full_read_only_or_unwritable_output_folder_is_named(tmp_path, monkeypatch):
    import errno
    import os
    from types import SimpleNamespace

    from orchestrator.sweep.failures import output_storage_problem, storage_problem

    cfg = with_overrides(ExperimentConfig(), {"output_dir": str(tmp_path / "runs")})
    assert output_storage_problem(cfg) is None  # a folder that does not exist yet: its parent is checked
    free = SimpleNamespace(f_flag=0, f_bavail=1 << 20, f_frsize=4096)
    for stat, problem in (
        (dict(f_bavail=10), "No space left on device"),
        (dict(f_flag=os.ST_RDONLY), "Read-only file system"),
    ):
        monkeypatch.setattr(os, "statvfs", lambda path, stat=stat: SimpleNamespace(**{**vars(free), **stat}))
        assert output_storage_problem(cfg) == problem
    # Deep in Ray's text or as the OSError itself.
    assert storage_problem(OSError(errno.EDQUOT, "Disk quota exceeded")) == "Disk quota exceeded"
    assert storage_problem(RuntimeError("...[Errno 28] No space left on device ...")) == "No space left on device"
    assert storage_problem(RuntimeError("a bug")) is None


def test_the_kept_state_comes_from_tunes_driver_staging_folder(tmp_path):
    from types import SimpleNamespace

    from orchestrator.sweep.tune_setup import TuneStateKeeper

    # Tune writes its state to a staging folder first and copies it to the sweep folder only now and then.
    staging, backup = tmp_path / "staging", tmp_path / "sweep" / "tune-state-backup"
    staging.mkdir()
    (staging / "experiment_state-1.json").write_text('{"trial_data": []}')
    trial = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))
    TuneStateKeeper({"output_dir": str(tmp_path)}, str(tmp_path / "sweep" / "tune"), str(backup)).on_trial_result(
        0, [], trial, {}
    )
    assert (backup / "experiment_state-1.json").read_text() == '{"trial_data": []}'
