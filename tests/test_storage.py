"""Cluster-wide storage (orchestrator/cluster/storage.py): the same helpers on a local folder and on S3 (moto)."""

import os
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import run_cli
from experiment_config import ConfigError, load_config
from orchestrator.cluster.storage import Storage, check_storage, local_checkpoint, open_storage

BUCKET = "activeda-test"


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("storage.uri", "activeda-test/runs", "must be s3://bucket/prefix"),
        ("storage.uri", "gs://activeda-test/runs", "must be s3://bucket/prefix"),
        ("storage.uri", "s3://", "must be s3://bucket/prefix"),
        ("storage.uri", "s3://Upper_Case/runs", "must be s3://bucket/prefix"),
        ("storage.uri", "s3://bucket/runs?endpoint_override=x", "must be s3://bucket/prefix"),
        ("storage.endpoint", "127.0.0.1:9000", "must be http(s)://host[:port]"),
        ("storage.region", "moon", "must be a region name"),
    ],
)
def test_malformed_storage_keys_are_refused_naming_the_key(key, value, problem):
    others = {"storage.uri": f"s3://{BUCKET}/runs"} if key != "storage.uri" else {}
    with pytest.raises(ConfigError) as err:
        load_config(None, {**others, key: value})
    assert str(err.value).startswith(f"config key '{key}': {problem}")
    assert "\n" not in str(err.value)


def test_endpoint_without_uri_is_refused():
    with pytest.raises(ConfigError, match=r"^config key 'storage.endpoint': is set but storage.uri is empty"):
        load_config(None, {"storage.endpoint": "http://127.0.0.1:9000"})


def test_well_formed_uris_are_accepted():
    for uri in (f"s3://{BUCKET}", f"s3://{BUCKET}/", f"s3://{BUCKET}/team/runs", "s3://my.bucket-1/a/b/c"):
        assert load_config(None, {"storage.uri": uri}).storage.uri == uri


def _cfg(tmp_path, endpoint="", prefix="runs", bucket=BUCKET):
    pairs = {"output_dir": str(tmp_path / "out")}
    if endpoint:
        pairs |= {"storage.uri": f"s3://{bucket}/{prefix}", "storage.endpoint": endpoint}
    return load_config(None, pairs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_check_storage_accepts_a_writable_bucket_and_leaves_nothing(s3_server, tmp_path):
    check_storage(_cfg(tmp_path, s3_server, prefix="checked"))
    fs = open_storage(_cfg(tmp_path, s3_server)).filesystem
    assert fs.get_file_info(pafs.FileSelector(f"{BUCKET}/checked", allow_not_found=True, recursive=True)) == []


def test_check_storage_names_a_missing_bucket(s3_server, tmp_path):
    with pytest.raises(ConfigError) as err:
        check_storage(_cfg(tmp_path, s3_server, bucket="no-such-bucket"))
    assert str(err.value).startswith("config key 'storage.uri': bucket 'no-such-bucket' does not exist")


def test_check_storage_names_an_unreachable_endpoint(s3_server, tmp_path):
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(ConfigError) as err:
        check_storage(_cfg(tmp_path, endpoint))
    assert str(err.value).startswith(f"config key 'storage.endpoint': cannot reach 's3://{BUCKET}/runs' at {endpoint}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args, line",
    [
        (["--set", "storage.uri=bucket-without-scheme"], "config key 'storage.uri': must be s3://bucket/prefix"),
        (
            ["--set", "storage.uri=s3://no-such-bucket/runs"],
            "config key 'storage.uri': bucket 'no-such-bucket' does not exist",
        ),
    ],
)
def test_sweep_refuses_bad_storage_in_one_line_before_anything(s3_server, tmp_path, args, line):
    result = run_cli(
        "orchestrator.sweep", "--smoke", "--set", f"storage.endpoint={s3_server}", *args, cwd=tmp_path, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and line in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(params=["local", "s3"])
def cfg(request, tmp_path):
    if request.param == "local":
        return _cfg(tmp_path)
    return _cfg(tmp_path, request.getfixturevalue("s3_server"), prefix=f"unit-{tmp_path.name}")


@pytest.fixture
def storage(cfg):
    return open_storage(cfg)


def test_locations_mirror_paths_under_output_dir(storage, tmp_path):
    path = tmp_path / "out" / "smoke" / "trials" / "t1" / "labels"
    location = storage.location(path)
    if storage.remote:
        assert location == f"{storage.uri}/smoke/trials/t1/labels"
        assert storage.fs_path(location) == location[len("s3://") :]
    else:
        assert location == str(path)
    with pytest.raises(ValueError):
        storage.location(tmp_path / "elsewhere")


def test_text_files_round_trip(storage, tmp_path):
    location = storage.location(tmp_path / "out" / "a" / "b.json")
    assert storage.read_text(location) is None and not storage.exists(location)
    storage.write_text(location, '{"x": 1}')
    storage.write_text(location, '{"x": 2}')
    assert storage.read_text(location) == '{"x": 2}' and storage.exists(location)


def test_push_publishes_finished_files_and_pull_fetches_only_what_the_node_lacks(storage, tmp_path):
    labels = tmp_path / "out" / "smoke" / "trials" / "t1" / "labels"
    labels.mkdir(parents=True)
    for r in (1, 2):
        (labels / f"round-000{r}.parquet").write_bytes(bytes([r]) * 100)
    (labels / ".round-0003.parquet.tmp-1").write_bytes(b"half")  # an unfinished write is never published
    storage.push_folder(labels, "round-*.parquet")
    published = ["round-0001.parquet", "round-0002.parquet"]
    # Locally the cluster-wide location is this very folder, unfinished file included.
    expected = published if storage.remote else [".round-0003.parquet.tmp-1", *published]
    assert storage.listdir(storage.location(labels)) == expected
    assert storage.pull(labels / "round-0002.parquet")  # the node has it: kept as it is
    assert (labels / "round-0002.parquet").read_bytes() == bytes([2]) * 100
    assert not storage.pull(labels / "missing.json") and not (labels / "missing.json").exists()

    (labels / "round-0001.parquet").unlink()  # lost on this node
    fetched = storage.pull_folder(labels, "round-*.parquet")
    if storage.remote:  # the cluster-wide copy brings it back; what the node has is not fetched again
        assert fetched == ["round-0001.parquet"]
        assert (labels / "round-0001.parquet").read_bytes() == bytes([1]) * 100
    else:  # the node's folder is the storage itself: the file is gone everywhere, there is nothing to fetch
        assert fetched == []
        assert storage.listdir(storage.location(labels)) == [".round-0003.parquet.tmp-1", "round-0002.parquet"]


def test_push_and_pull_give_a_new_node_the_files_it_lacks(s3_server, tmp_path):
    storage = open_storage(_cfg(tmp_path, s3_server, prefix=f"unit-{tmp_path.name}"))
    labels = tmp_path / "out" / "smoke" / "trials" / "t1" / "labels"
    labels.mkdir(parents=True)
    for r in (1, 2):
        (labels / f"round-000{r}.parquet").write_bytes(bytes([r]) * 100)
    (labels / ".round-0003.parquet.tmp-1").write_bytes(b"half")  # an unfinished write is never published
    storage.push_folder(labels, "round-*.parquet")
    assert storage.listdir(storage.location(labels)) == ["round-0001.parquet", "round-0002.parquet"]
    for path in labels.iterdir():  # the node is gone; another one starts the trial
        path.unlink()
    assert storage.pull_folder(labels, "round-*.parquet") == ["round-0001.parquet", "round-0002.parquet"]
    assert (labels / "round-0002.parquet").read_bytes() == bytes([2]) * 100
    assert sorted(p.name for p in labels.iterdir()) == ["round-0001.parquet", "round-0002.parquet"]

    record = labels.parent / "progress.json"
    record.write_text('{"round": 2}')
    storage.push(record)
    record.unlink()
    assert storage.pull(record) and record.read_text() == '{"round": 2}'
    assert not storage.pull(labels.parent / "never-written.json")


def _checkpoint_dir(storage, tmp_path, name="ckpt") -> str:
    """A folder holding one file, at a location of this storage (as Ray Train leaves a checkpoint)."""
    local = tmp_path / "out" / "ray" / name
    local.mkdir(parents=True)
    (local / "state.pt").write_bytes(b"weights" * 10)
    if storage.remote:
        storage.upload_file(local / "state.pt", storage.location(local / "state.pt"))
    return storage.location(local)


@pytest.mark.parametrize("crash_on", ["metrics.json", "config.json"])  # the marker, or a file before it
def test_publish_entry_writes_the_marker_last(storage, cfg, tmp_path, monkeypatch, crash_on):
    source = _checkpoint_dir(storage, tmp_path)
    entry = tmp_path / "out" / "source-models" / "abc"
    marker = storage.join(storage.location(entry), "metrics.json")

    def node_lost(*args, **kwargs):
        raise OSError("node lost")

    real_storage_write, real_path_write = Storage.write_text, Path.write_text
    with monkeypatch.context() as patch:  # the node dies while writing `crash_on`, on S3 or locally
        patch.setattr(
            Storage,
            "write_text",
            lambda self, location, text: (
                node_lost() if location.endswith(crash_on) else real_storage_write(self, location, text)
            ),
        )
        patch.setattr(
            Path,
            "write_text",
            lambda self, *a, **k: node_lost() if self.name == crash_on else real_path_write(self, *a, **k),
        )
        with pytest.raises(OSError, match="node lost"):  # the marker comes first in `files`, yet is written last
            storage.publish_entry(
                entry, {"checkpoint": source}, {"metrics.json": "{}", "config.json": "{}"}, marker="metrics.json"
            )
    assert storage.read_text(marker) is None  # readers see no entry
    if storage.remote:  # although the checkpoint was copied
        assert storage.exists(storage.join(storage.location(entry), "checkpoint", "state.pt"))
    else:  # nothing at all: the entry is assembled aside and renamed into place
        assert not entry.exists()

    published = storage.publish_entry(
        entry, {"checkpoint": source}, {"metrics.json": '{"miou": 1}', "config.json": "{}"}, marker="metrics.json"
    )
    assert published == storage.location(entry)
    assert storage.read_text(marker) == '{"miou": 1}'
    assert storage.read_text(storage.join(published, "config.json")) == "{}"
    with local_checkpoint(storage.join(published, "checkpoint"), cfg.to_dict()) as folder:
        assert open(os.path.join(folder, "state.pt"), "rb").read() == b"weights" * 10
        fetched = folder
    if storage.remote:
        assert not os.path.exists(fetched)  # the download is temporary


def test_a_trial_on_a_node_without_its_folder_takes_its_labels_from_its_tune_checkpoint(tmp_path, monkeypatch):
    """storage.uri empty and output_dir not shared: the Tune checkpoint is the only copy of the labels."""
    import json

    import numpy as np
    import ray.tune

    from orchestrator.labels.store import LabeledPixels, LabelStore
    from orchestrator.sweep import trainable

    checkpoint = tmp_path / "tune-checkpoint"
    LabelStore(checkpoint / "labels").append_round(
        1, "labor_ppl", [LabeledPixels(0, np.array([1, 2]), np.array([3, 4]), np.array([0, 1]), 32, 64, 2.0)]
    )
    (checkpoint / trainable.PROGRESS_FILE).write_text(
        json.dumps(
            {
                "progress": {"round": 1, "model_checkpoint": "/elsewhere/round-001", "trial_id": "t1"},
                "metrics": {"round": 1},
            }
        )
    )

    class Context:
        def get_trial_id(self):
            return "t1"

        def get_trial_name(self):
            return "tune_trial_t1"

    seen = {}

    def run_experiment(cfg, trial_dir, *args, resume=None, **kwargs):
        seen.update(resume=resume, rounds=LabelStore(trial_dir / "labels").rounds())

    monkeypatch.setattr(ray.tune, "get_context", Context)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint.from_directory(str(checkpoint)))
    monkeypatch.setattr(trainable, "run_experiment", run_experiment)
    base = load_config(None, {"output_dir": str(tmp_path / "out"), "selection.rounds": 2}, smoke=True).to_dict()
    base["sweep"]["search_space"] = {}
    trainable.tune_trial({}, base, "/elsewhere/source", {}, sweep_dir=str(tmp_path / "out" / "smoke"))
    assert seen["resume"].round == 1 and seen["resume"].trial_id == "t1"
    assert seen["rounds"] == [1]  # round 1's labels, not bought again in a new round 1


def _progress_record(round_index: int, trial_id: str = "t1") -> dict:
    return {
        "progress": {"round": round_index, "model_checkpoint": f"/ray/round-{round_index:03d}", "trial_id": trial_id},
        "metrics": {"round": round_index, "target/miou": round_index / 10},
    }


@pytest.mark.parametrize(
    "where, node_round, storage_round, checkpoint_round",
    [
        # rounds 1-2 ran on this node, round 3 on another, and Tune restores the trial here from round 3
        ("local", 2, None, 3),  # output_dir not shared: only the Tune checkpoint knows round 3
        ("s3", 2, 3, 3),
        # ... from round 2 (the driver died before Tune saved its state): only storage.uri knows round 3
        ("s3", 2, 3, 2),
    ],
)
def test_a_finished_trial_restored_on_a_node_with_a_stale_record_reports_its_last_round(
    tmp_path, monkeypatch, request, where, node_round, storage_round, checkpoint_round
):
    import json

    import numpy as np
    import ray.tune

    from orchestrator.labels.store import LabeledPixels, LabelStore
    from orchestrator.sweep import trainable

    cfg = _cfg(tmp_path, request.getfixturevalue("s3_server") if where == "s3" else "", prefix=f"unit-{tmp_path.name}")
    trial_dir = tmp_path / "out" / "smoke" / "trials" / "t1"
    checkpoint = tmp_path / "tune-checkpoint"
    for r in range(1, checkpoint_round + 1):
        LabelStore(checkpoint / "labels").append_round(
            r, "labor_ppl", [LabeledPixels(0, np.array([r]), np.array([r]), np.array([0]), 32, 64, 1.0)]
        )
    (checkpoint / trainable.PROGRESS_FILE).write_text(json.dumps(_progress_record(checkpoint_round)))
    trial_dir.mkdir(parents=True)
    (trial_dir / trainable.PROGRESS_FILE).write_text(json.dumps(_progress_record(node_round)))
    if storage_round is not None:
        storage = open_storage(cfg)
        storage.write_text(
            storage.location(trial_dir / trainable.PROGRESS_FILE), json.dumps(_progress_record(storage_round))
        )

    class Context:
        def get_trial_id(self):
            return "t1"

        def get_trial_name(self):
            return "tune_trial_t1"

    reported = []

    def run_experiment(*args, resume=None, **kwargs):
        reported.append(("trained after round", resume.round))

    monkeypatch.setattr(ray.tune, "get_context", Context)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint.from_directory(str(checkpoint)))
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    monkeypatch.setattr(trainable, "run_experiment", run_experiment)
    base = cfg.to_dict() | {"selection": {**cfg.to_dict()["selection"], "rounds": 3}}
    trainable.tune_trial({}, base, "/ray/source", {}, sweep_dir=str(tmp_path / "out" / "smoke"))
    assert reported == [{"round": 3, "target/miou": 0.3}]  # round 3's result, nothing trained again
    assert json.loads((trial_dir / trainable.PROGRESS_FILE).read_text()) == _progress_record(3)


def test_a_label_reader_on_a_node_without_the_rounds_fetches_them_from_storage(s3_server, tmp_path):
    import numpy as np

    from orchestrator.labels.store import LabeledPixels, LabelStore, storage_settings

    cfg = _cfg(tmp_path, s3_server, prefix=f"unit-{tmp_path.name}")
    store = LabelStore(tmp_path / "out" / "smoke" / "trials" / "t1" / "labels")
    store.append_round(
        1,
        "labor_ppl",
        [LabeledPixels(4, np.array([1], np.int32), np.array([2], np.int32), np.array([7], np.uint8), 8, 8, 1.0)],
    )
    open_storage(cfg).push_folder(store.root, "round-*.parquet")
    reader = store.reader(storage=storage_settings(cfg))
    (store.root / "round-0001.parquet").unlink()  # a Train worker on another node: the folder is empty
    assert [a.tolist() for a in reader.read([4])[4]] == [[1], [2], [7]]
    assert (store.root / "round-0001.parquet").is_file()  # fetched once, read locally from then on
