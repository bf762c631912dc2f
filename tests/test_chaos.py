"""Sweeps under repeated SIGKILLs (``benchmarks.chaos``), checked against the same sweep without faults.

- The small chaos case (``make test``): 2 trials x 2 rounds while a ranking actor, a Ray Train worker
  and the MLflow server are each killed once, when the sweep's progress says their moment has come
  (``benchmarks.chaos.due``), against the session's fault-free sweep. The driver is not killed here: a
  new driver costs a Ray start and a Tune restore, and ``test_mlflow_outage.py`` (a driver killed in
  an outage, resumed) and the Ctrl-C test in ``test_sweep_paths.py`` (interrupted, resumed) compare
  that path with the same fault-free sweep.
- The chaos benchmark's own small run, end to end (``python -m benchmarks.chaos --small``, marked
  slow: ``make test-slow``); the full run is ``python -m benchmarks.chaos``.

Both assert every planned kill landed, nothing lost or bought twice, and every trial equal to the
fault-free run at every round: its labels pixel for pixel, its MLflow metrics bit for bit.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.chaos import (
    LOSS_COUNTS,
    VICTIMS,
    FaultLog,
    Plan,
    PlannedKill,
    SweepProgress,
    SweepRun,
    compare,
    due,
    faulty_run,
    goal_met,
    label_differences,
    plan_kills,
    run_with_faults,
)
from conftest import assert_same_as_fault_free, fault_plan, run_cli, seed_source_models
from orchestrator.labels.store import LabeledPixels, LabelStore

# --- the comparison and the kill plan, on hand-made folders (no Ray) ---------------------------------


def write_round(labels_dir: Path, round_index: int, pixels: dict[int, list[tuple[int, int, int]]]) -> None:
    LabelStore(labels_dir).append_round(
        round_index,
        "labor_ppl",
        [
            LabeledPixels(
                i,
                np.array([p[0] for p in px]),
                np.array([p[1] for p in px]),
                np.array([p[2] for p in px]),
                4,
                4,
                len(px),
            )
            for i, px in pixels.items()
        ],
    )


ROUND_1 = {0: [(0, 0, 1), (1, 2, 3)], 1: [(3, 3, 0)]}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        (
            {0: [(0, 0, 1), (1, 2, 4)]},
            ["round 1 image 0: 2 pixels, the reference 2; 2 (y, x, class) in one and not the other"],
        ),  # a class
        (
            {0: [(0, 0, 1), (2, 1, 3)]},
            ["round 1 image 0: 2 pixels, the reference 2; 2 (y, x, class) in one and not the other"],
        ),  # a place
        (
            {1: [(3, 3, 0), (3, 3, 0)]},
            ["round 1 image 1: 2 pixels, the reference 1; 0 (y, x, class) in one and not the other"],
        ),  # twice
    ],
    ids=["same", "a-class-differs", "a-pixel-moved", "a-pixel-twice"],
)
def test_labels_are_compared_pixel_for_pixel_at_every_round(tmp_path, change, expected):
    """The same images with the same number of pixels are not the same labels: a class or a place
    that differs is a difference (the comparison once looked at image ids and pixel counts only)."""
    write_round(tmp_path / "ref", 1, ROUND_1)
    write_round(tmp_path / "ref", 2, {0: [(2, 2, 2)]})
    write_round(tmp_path / "got", 1, {**ROUND_1, **change})
    assert label_differences(tmp_path / "ref", tmp_path / "got") == ["round 2: missing", *expected]


def fake_sweep(root: Path, trials: dict[str, tuple[int, dict]], store: Path) -> SweepRun:
    """A sweep folder whose trials (id -> (points_per_image, round -> labels)) bought those labels."""
    for trial, (points, rounds) in trials.items():
        folder = root / "trials" / trial
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"selection": {"points_per_image": points}}))
        for round_index, pixels in rounds.items():
            write_round(folder / "labels", round_index, pixels)
    return SweepRun(root, store)


def test_a_label_mismatch_fails_the_comparison(tmp_path, monkeypatch):
    import benchmarks.chaos as chaos

    monkeypatch.setattr(
        chaos, "trial_metrics", lambda store, name: ({}, {"parents": 1, "trial_runs": {2: 1}, "unfinished": 0})
    )
    plan = Plan(1, 1, 0, 0, tmp_path)
    reference = fake_sweep(tmp_path / "ref" / "reference", {"a": (2, {1: ROUND_1})}, tmp_path / "ref.db")
    same = fake_sweep(tmp_path / "same" / "faulty", {"b": (2, {1: ROUND_1})}, tmp_path / "same.db")
    moved = fake_sweep(tmp_path / "moved" / "faulty", {"c": (2, {1: {**ROUND_1, 1: [(3, 2, 0)]}})}, tmp_path / "m.db")
    result = compare(plan, FaultLog(), reference, same)
    assert result["labels_differ"] == 0 and result["trials"][2]["differences"] == []
    result = compare(plan, FaultLog(), reference, moved)
    assert result["labels_differ"] == 1 and not result["trials"][2]["all_rounds_equal"]
    assert not goal_met(FaultLog(), result)


def test_the_kill_plan_has_each_kind_once_spread_over_the_rounds():
    kills = plan_kills(Plan(2, 2, 4, 0, Path("/unused")))
    assert sorted(k.kind for k in kills) == sorted(VICTIMS)
    assert [k.round for k in kills] == [1, 1, 2, 2]
    kills = plan_kills(Plan(6, 3, 20, 0, Path("/unused")))
    assert len(kills) == 20 and {k.kind for k in kills} == set(VICTIMS) and {k.round for k in kills} == {1, 2, 3}
    kinds = ("ranking_actor", "train_worker", "mlflow_server")
    kills = plan_kills(Plan(2, 2, 3, 0, Path("/unused"), kinds=kinds))
    assert sorted(k.kind for k in kills) == sorted(kinds) and [k.round for k in kills] == [1, 1, 2]
    assert {k.kind for k in plan_kills(Plan(2, 2, 9, 0, Path("/unused"), kinds=kinds))} == set(kinds)


class Server:
    up = True


def test_kills_are_due_by_the_sweeps_progress_not_the_clock():
    plan = Plan(2, 2, 4, 0, Path("/unused"))
    ranking, training, driver, server = (
        PlannedKill(kind, 2) for kind in ("ranking_actor", "train_worker", "driver", "mlflow_server")
    )
    # Trial a reported round 1 and ranks round 2; trial b trains round 1.
    state = SweepProgress(bought={"a": {1}, "b": {1}}, finished={"a": 1, "b": 0})
    assert due(ranking, plan, state, Server, 0, 0)
    assert not due(training, plan, state, Server, 0, 0)  # no trial trains round 2 yet
    state = SweepProgress(bought={"a": {1, 2}, "b": {1}}, finished={"a": 1, "b": 0})
    assert due(training, plan, state, Server, 0, 0) and due(server, plan, state, Server, 0, 0)
    assert not due(ranking, plan, state, Server, 0, 0)  # round 2 is bought: its ranking is over
    # The driver and the server wait for a step of the sweep since the last kill (and the driver's start).
    assert not due(driver, plan, state, Server, 0, state.steps) and not due(server, plan, state, Server, 0, state.steps)
    assert not due(driver, plan, state, Server, state.steps, 0) and due(driver, plan, state, Server, 0, 0)
    # Every trial done: nothing is due any more.
    done = SweepProgress(bought={"a": {1, 2}, "b": {1, 2}}, finished={"a": 2, "b": 2})
    assert not any(due(k, plan, done, Server, 0, 0) for k in (ranking, training, driver, server))


def test_progress_is_read_from_the_sweep_folder(tmp_path):
    write_round(tmp_path / "trials" / "a" / "labels", 1, ROUND_1)
    (tmp_path / "trials" / "a" / "progress.json").write_text(json.dumps({"progress": {"round": 1}}))
    (tmp_path / "trials" / "b").mkdir()  # started, nothing reported yet
    state = SweepProgress.read(tmp_path)
    assert state.bought == {"a": {1}, "b": set()} and state.finished == {"a": 1} and state.steps == 2


# --- sweeps under SIGKILLs ------------------------------------------------------------------------


@pytest.mark.integration
def test_a_small_chaos_case_loses_nothing_and_ends_where_the_fault_free_sweep_does(
    tmp_path, fault_free_sweep, smoke_source_models, data_cache
):
    kinds = ("ranking_actor", "train_worker", "mlflow_server")
    plan = fault_plan(tmp_path, data_cache, kills=len(kinds), kinds=kinds)
    seed_source_models(smoke_source_models, tmp_path / "runs")
    faults, _, _ = run_with_faults(plan)
    events = "\n".join(faults.events)
    assert faults.not_landed == [], events
    assert faults.kills == {**dict.fromkeys(VICTIMS, 0), **dict.fromkeys(kinds, 1)}, events  # each kind once
    assert faults.driver_starts == 1, events
    assert faults.unexpected_exits == [], events
    assert faults.left_running == 0 and faults.outbox_unsent_after_replay == 0, events
    result = assert_same_as_fault_free(plan, fault_free_sweep, faulty_run(plan), events, faults)
    assert goal_met(faults, result)


@pytest.mark.slow
@pytest.mark.integration
def test_the_chaos_benchmark_small_run_meets_its_goal(tmp_path):
    result = run_cli(
        "benchmarks.chaos",
        "--small",
        "--workdir",
        str(tmp_path / "chaos"),
        "--timeout-min",
        "30",
        cwd=tmp_path,
        timeout=3600,
    )
    outcome = json.loads((tmp_path / "chaos" / "result.json").read_text())
    events = "\n".join(outcome["events"])
    assert outcome["kills_not_landed"] == [], events
    assert outcome["kills"] == dict.fromkeys(VICTIMS, 1), events
    for count in LOSS_COUNTS:
        assert outcome[count] == 0, (count, events)
    assert len(outcome["trials"]) == 2, outcome["trials"]
    for key, row in outcome["trials"].items():
        assert row["all_rounds_equal"], (key, row["differences"][:10], events)
    assert outcome["goal_met"] and result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
