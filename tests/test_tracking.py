"""MLflow tracking: non-finite metrics dropped, and an outage buffered instead of stopping the sweep."""

import json
import math
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.mlflow_runs import SweepTracking, TrackingError, finite_metrics, resolve_tracking_uri
from orchestrator.tracking.trial_logger import MlflowTrialLogger, replay_unsent


def test_non_finite_metrics_are_dropped(caplog):
    assert finite_metrics({"a": 1, "b": math.nan, "c": math.inf, "d": "text", "e": True}, "t") == {"a": 1.0}
    assert "not logging non-finite metrics b, c" in caplog.text


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, "") == f"sqlite:///{tmp_path}/mlflow.db"


def test_outage_is_buffered_then_flushed_and_leftovers_are_kept(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s")
    parent = client.create_run(experiment).info.run_id
    logger = MlflowTrialLogger(
        uri, "s", parent, lambda cfg: ({"p": 1}, {"rule": "x"}), unsent_path=str(tmp_path / "unsent.jsonl")
    )
    trial = SimpleNamespace(trial_id="t1", config={}, __str__=lambda self: "t1")
    logger.on_trial_start(0, [], trial)
    logger.on_trial_result(0, [], trial, {"round": 0, "target/miou": 0.1})

    # The server goes away: results keep coming, nothing raises, everything waits in order.
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    logger.on_trial_result(0, [], trial, {"round": 1, "target/miou": 0.2})
    logger.on_trial_result(0, [], trial, {"round": 2, "target/miou": 0.3})
    assert len(logger._outbox) == 2
    monkeypatch.undo()  # it comes back
    logger.on_trial_complete(0, [], trial)
    run_id = logger._runs["t1"]
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "target/miou"))
    assert steps == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert client.get_run(run_id).info.status == "FINISHED"

    # A second outage that outlasts the sweep: the leftovers go to the unsent file.
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    logger.on_trial_result(0, [], trial, {"round": 3, "target/miou": 0.4})
    logger.on_experiment_end([])
    lines = [json.loads(line) for line in (tmp_path / "unsent.jsonl").read_text().splitlines()]
    assert lines[0]["action"] == "metrics" and lines[0]["data"][0]["target/miou"] == 0.4


def test_a_restarted_trial_continues_its_own_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("s")).info.run_id
    trial = SimpleNamespace(trial_id="t1", config={})
    first = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}))
    first.on_trial_start(0, [], trial)
    again = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}))  # as after Tuner.restore
    again.on_trial_start(0, [], trial)
    assert again._runs["t1"] == first._runs["t1"]
    assert len(client.search_runs([client.get_experiment_by_name("s").experiment_id])) == 2  # parent + 1 trial


def test_a_run_created_just_before_an_outage_gets_its_params_once_it_is_over(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    logger = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({"p": 1}, {}))
    trial = SimpleNamespace(trial_id="t1", config={})
    # The run is created, then the server goes away before the params are logged.
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    logger.on_trial_start(0, [], trial)
    assert len(logger._outbox) == 1
    monkeypatch.undo()
    logger.on_trial_result(0, [], trial, {"round": 0, "target/miou": 0.1})
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`activeda.kind` = 'trial'")
    assert len(runs) == 1 and runs[0].data.params == {"p": "1"} and runs[0].data.metrics == {"target/miou": 0.1}


def go_away(monkeypatch):
    """Every MLflow call the driver makes fails, as while the tracking server is down."""

    def down(*args, **kwargs):
        raise ConnectionError("down")

    for name in (
        "get_experiment_by_name",
        "create_run",
        "search_runs",
        "log_batch",
        "get_metric_history",
        "set_terminated",
        "update_run",
        "log_artifact",
        "log_artifacts",
    ):
        monkeypatch.setattr(MlflowClient, name, down)


def test_unsent_operations_are_replayed_in_order_once_the_store_is_back(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    tracking = SweepTracking(uri, "s")
    parent = tracking.start_parent("sweep", {}, {})
    folders = {"t1": tmp_path / "sweep" / "trials" / "t1", "t2": tmp_path / "sweep" / "trials" / "t2"}
    (folders["t1"] / "labels").mkdir(parents=True)
    (folders["t1"] / "labels" / "round-0001.parquet").write_bytes(b"PAR1")
    unsent = tmp_path / "sweep" / "mlflow-unsent.jsonl"
    logger = MlflowTrialLogger(
        uri,
        "s",
        parent,
        lambda cfg: ({"p": cfg["p"]}, {"rule": "x"}),
        trial_dir=folders.get,
        unsent_path=str(unsent),
    )
    first, second = SimpleNamespace(trial_id="t1", config={"p": 1}), SimpleNamespace(trial_id="t2", config={"p": 2})
    logger.on_trial_start(0, [], first)
    logger.on_trial_result(0, [], first, {"round": 0, "target/miou": 0.1})

    go_away(monkeypatch)  # for the rest of the sweep: a trial's later rounds and a whole second trial
    logger.on_trial_result(0, [], first, {"round": 1, "target/miou": 0.2})
    logger.on_trial_start(0, [], second)
    logger.on_trial_result(0, [], second, {"round": 0, "target/miou": 0.3})
    logger.on_trial_complete(0, [], first)
    logger.on_trial_result(0, [], second, {"round": 1, "target/miou": 0.4})
    logger.on_trial_complete(0, [], second)
    logger.on_experiment_end([])
    tracking.finish_sweep(parent, "FINISHED", None, str(unsent))
    assert logger._outbox == []  # in the file now, not also waiting to be sent again
    actions = [(r["action"], r.get("trial_id")) for r in map(json.loads, unsent.read_text().splitlines())]
    assert actions == [
        ("metrics", "t1"),
        ("create", "t2"),
        ("metrics", "t2"),
        ("end", "t1"),
        ("metrics", "t2"),
        ("end", "t2"),
        ("sweep-end", None),
    ]

    monkeypatch.undo()  # the server is back
    assert replay_unsent(unsent, uri) == (7, 0)
    assert not unsent.exists()
    runs = {
        r.data.tags["activeda.trial_id"]: r
        for r in client.search_runs([tracking.experiment_id], "tags.`activeda.kind` = 'trial'")
    }
    assert sorted(runs) == ["t1", "t2"] and runs["t2"].data.params == {"p": "2"}
    for trial_id, values in (("t1", [0.1, 0.2]), ("t2", [0.3, 0.4])):
        history = sorted(
            (m.step, m.value) for m in client.get_metric_history(runs[trial_id].info.run_id, "target/miou")
        )
        assert history == list(enumerate(values))
        assert runs[trial_id].info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(runs["t1"].info.run_id, "labels")] == ["labels/round-0001.parquet"]
    assert client.get_run(parent).info.status == "FINISHED"


def test_replay_keeps_what_it_could_not_send_and_never_logs_twice(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    unsent = tmp_path / "mlflow-unsent.jsonl"
    record = {"experiment": "s", "parent_run_id": parent, "trial_id": "t1", "trial": "t1", "trial_dir": None}
    lines = [
        dict(record, action="create", data=[{}, {}]),
        dict(record, action="metrics", data=[{"target/miou": 0.5}, 1]),
        dict(record, action="end", data=["FINISHED"]),
    ]
    unsent.write_text("".join(json.dumps(r) + "\n" for r in lines))

    monkeypatch.setattr(MlflowClient, "set_terminated", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    assert replay_unsent(unsent, uri) == (2, 1)
    assert [json.loads(line)["action"] for line in unsent.read_text().splitlines()] == ["end"]
    monkeypatch.undo()

    unsent.write_text("".join(json.dumps(r) + "\n" for r in lines))  # everything again, as after a lost rename
    assert replay_unsent(unsent, uri) == (3, 0)
    run = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`activeda.kind` = 'trial'")
    assert len(run) == 1 and run[0].info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run[0].info.run_id, "target/miou")] == [(1, 0.5)]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"action": "metrics"}\n', "line 1 is not an activeda unsent-metrics record"),  # written before v2: no sweep
        ('\n{"action": "metrics", "experiment": "s", "parent_run_id": "p"}\nnot json\n', "line 3 is not"),
        ('{"action": "delete", "experiment": "s", "parent_run_id": "p"}\n', "line 1 is not"),
        # Replay uploads a trial's folder as artifacts: never one outside the sweep's own folder.
        (
            '{"action": "end", "experiment": "s", "parent_run_id": "p", "trial_dir": "/home"}\n',
            "line 1: 'trial_dir' '/home' is outside the sweep folder",
        ),
        (
            '{"action": "sweep-end", "experiment": "s", "parent_run_id": "p", "report": "../../x"}\n',
            "line 1: 'report' '../../x' is outside the sweep folder",
        ),
    ],
)
def test_replay_refuses_a_file_it_cannot_read_and_leaves_it(tmp_path, content, message):
    unsent = tmp_path / "mlflow-unsent.jsonl"
    unsent.write_text(content)
    with pytest.raises(TrackingError, match=message):
        replay_unsent(unsent, f"sqlite:///{tmp_path}/m.db")
    assert unsent.read_text() == content and not (tmp_path / "m.db").exists()


def test_replay_cli_is_one_line(tmp_path):
    from conftest import run_cli

    result = run_cli(
        "orchestrator.tracking",
        "replay",
        str(tmp_path / "missing.jsonl"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: unsent-metrics file '{tmp_path / 'missing.jsonl'}' does not exist"


def test_replay_never_logs_a_round_twice_even_when_its_miou_was_dropped(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    unsent = tmp_path / "mlflow-unsent.jsonl"
    record = {"experiment": "s", "parent_run_id": parent, "trial_id": "t1", "trial": "t1", "trial_dir": None}
    lines = [
        dict(record, action="create", data=[{}, {}]),
        dict(record, action="metrics", data=[{"target/miou": math.nan, "budget/clicks": 5.0}, 1]),
    ]
    for _ in range(2):  # the same file twice, as after a lost rename
        unsent.write_text("".join(json.dumps(r) + "\n" for r in lines))
        assert replay_unsent(unsent, uri) == (2, 0)
    run_id = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`activeda.kind` = 'trial'")[
        0
    ].info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "budget/clicks")] == [(1, 5.0)]
    assert client.get_metric_history(run_id, "target/miou") == []


def test_replay_refuses_a_file_that_is_not_utf8_in_one_line_and_leaves_it(tmp_path):
    from conftest import run_cli

    unsent = tmp_path / "mlflow-unsent.jsonl"
    content = (
        b'{"action": "end", "experiment": "s", "parent_run_id": "p", "trial_id": "t1", "data": ["FINISHED"]}\n'
        b'{"action": "end", "experiment": "s", "parent_run_id": "p", "trial_id": "t\xff"}\n'
    )
    unsent.write_bytes(content)
    message = f"'{unsent}' line 2 is not an activeda unsent-metrics record (not UTF-8 text)"
    with pytest.raises(TrackingError) as err:
        replay_unsent(unsent, f"sqlite:///{tmp_path}/m.db")
    assert str(err.value) == message
    result = run_cli(
        "orchestrator.tracking", "replay", str(unsent), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path
    )
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}", result.stderr
    assert unsent.read_bytes() == content and not (tmp_path / "m.db").exists()


def one_param(trial_config):  # module level: a logger pickled by Tune must be able to pickle it
    return {"p": 1}, {}


def test_a_driver_killed_during_an_outage_loses_nothing_and_sends_everything_once(tmp_path, monkeypatch):
    import pickle

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    unsent = tmp_path / "sweep" / "mlflow-unsent.jsonl"
    params = one_param
    first = MlflowTrialLogger(uri, "s", parent, params, unsent_path=str(unsent))
    trial = SimpleNamespace(trial_id="t1", config={})
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, {"round": 0, "target/miou": 0.1})
    assert not unsent.exists()  # everything sent: nothing kept

    go_away(monkeypatch)
    first.on_trial_result(0, [], trial, {"round": 1, "target/miou": 0.2})
    first.on_trial_result(0, [], trial, {"round": 2, "target/miou": 0.3})
    # On disk as each was queued, not only when the sweep ends.
    assert [r["data"][1] for r in map(json.loads, unsent.read_text().splitlines())] == [1, 2]
    restored = pickle.loads(pickle.dumps(first))  # what Tuner.restore would hand back
    assert restored._outbox == []
    # The driver is killed (SIGKILL: no experiment end, no flush) in the middle of appending a third.
    with open(unsent, "a") as handle:
        handle.write('{"id": "x", "action": "metrics", "trial_id": "t1", "da')
    monkeypatch.undo()  # MLflow is back

    resumed = MlflowTrialLogger(uri, "s", parent, params, unsent_path=str(unsent))  # the resumed driver's
    resumed.on_trial_start(0, [], trial)  # its first event sends what the file holds, then goes on
    resumed.on_trial_result(0, [], trial, {"round": 3, "target/miou": 0.4})
    run_id = resumed._runs["t1"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "target/miou")) == [
        (0, 0.1),
        (1, 0.2),
        (2, 0.3),
        (3, 0.4),
    ]
    assert not unsent.exists()
    assert len(client.search_runs([client.get_experiment_by_name("s").experiment_id])) == 2  # parent + t1

    # A send whose "sent" line the kill prevented is sent again, and still arrives once.
    record = restored._record(("metrics", "t1", "t1", {"target/miou": 0.4}, 3))
    unsent.write_text(json.dumps(record) + "\n")
    MlflowTrialLogger(uri, "s", parent, params, unsent_path=str(unsent)).on_trial_complete(0, [], trial)
    assert [m.step for m in client.get_metric_history(run_id, "target/miou")].count(3) == 1
    assert client.get_run(run_id).info.status == "FINISHED" and not unsent.exists()


def test_the_outbox_keeps_another_sweeps_leftovers(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    unsent = tmp_path / "mlflow-unsent.jsonl"
    foreign = {
        "id": "f1",
        "action": "end",
        "experiment": "s",
        "parent_run_id": "an-older-sweep",
        "trial_id": "t9",
        "trial": "t9",
        "data": ["FINISHED"],
        "trial_dir": None,
    }
    unsent.write_text(json.dumps(foreign) + "\n")
    logger = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}), unsent_path=str(unsent))
    logger.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={}))
    assert [json.loads(line) for line in unsent.read_text().splitlines()] == [foreign]


def test_a_round_done_again_differently_is_logged_and_a_resent_one_is_not(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    logger = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}))
    trial = SimpleNamespace(trial_id="t1", config={})
    logger.on_trial_start(0, [], trial)
    logger.on_trial_result(0, [], trial, {"round": 1, "target/miou": 0.3})
    logger.on_trial_result(0, [], trial, {"round": 1, "target/miou": 0.3})  # resent (a resumed driver)
    logger.on_trial_result(0, [], trial, {"round": 1, "target/miou": 0.5})  # redone by a PBT clone
    history = sorted(m.value for m in client.get_metric_history(logger._runs["t1"], "target/miou"))
    assert history == [0.3, 0.5]


def test_a_full_disk_does_not_stop_tracking(tmp_path, monkeypatch, caplog):
    import errno

    import orchestrator.tracking.trial_logger as tracking

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    parent = SweepTracking(uri, "s").start_parent("sweep", {}, {})
    logger = MlflowTrialLogger(uri, "s", parent, lambda cfg: ({}, {}), unsent_path=str(tmp_path / "unsent.jsonl"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tracking, "append_unsent", full)
    trial = SimpleNamespace(trial_id="t1", config={})
    logger.on_trial_start(0, [], trial)
    logger.on_trial_result(0, [], trial, {"round": 0, "target/miou": 0.1})
    assert [m.value for m in client.get_metric_history(logger._runs["t1"], "target/miou")] == [0.1]
    assert caplog.text.count("cannot write the MLflow outbox") == 1
