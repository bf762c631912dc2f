"""The sweep's command line: help, bad input refused at once, and the smoke sweep end to end."""

import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import run_cli
from trainers.data.segmentation_pairs import read_image_size


def test_help_documents_options_and_config_keys(tmp_path):
    result = run_cli("orchestrator.sweep", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for text in (
        "--config",
        "--set",
        "--smoke",
        "--tracking-uri",
        "--address",
        "--num-samples",
        "selection.points_per_image",
        "adapt.target_ce_weight",
        "train.use_gpu",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(
    "args, key",
    [
        (["--set", "selection.rule=labor_pp"], "config key 'selection.rule': unknown rule 'labor_pp'"),
        (["--set", "adapt.steps=0"], "config key 'adapt.steps': must be >= 1"),
        (["--set", "data.source.format=kitti"], "config key 'data.source.format': unknown format 'kitti'"),
        (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["--tracking-uri", "sqlite:////nonexistent/dir/m.db"], "folder '/nonexistent/dir' does not exist"),
        (["--tracking-uri", "http://127.0.0.1:9/"], "MLflow server 'http://127.0.0.1:9/' cannot be reached"),
        # Names from the command line never become a path outside output_dir or the dataset root.
        (["--name", "../escape"], "config key 'sweep.name': must be a plain folder name"),
        (["--set", "sweep.name=/tmp/elsewhere"], "config key 'sweep.name': must be a plain folder name"),
        (["--set", "data.target.pool_split=../../etc"], "config key 'data.target.pool_split': unknown split"),
        (["--output-dir", "/dev/null/runs"], "config key 'output_dir': '/dev/null' is not a folder"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, key):
    result = run_cli("orchestrator.sweep", "--smoke", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def _real_layout_roots(tmp_path):
    from trainers.data.synthetic import write_synthetic_domains

    return write_synthetic_domains(
        tmp_path / "domains", 32, 64, source_images=2, target_train_images=2, target_val_images=1
    )


@pytest.mark.parametrize(
    "damage, key",
    [
        ("missing_root", "dataset root"),
        ("empty_root", "does not exist"),
        ("missing_label", "has no label"),
        ("corrupt_image", "cannot read image"),
        ("label_links_out", "outside the dataset root"),
        ("city_links_out", "outside the dataset root"),
        # Headers alone pass these: the pixel data must be decoded and the ids mapped up front.
        ("truncated_image", "cannot read image"),
        ("truncated_label", "cannot read label"),
        ("undefined_label_ids", "has ids not in the Cityscapes id table (defined: 0..33): 200"),
    ],
)
def test_bad_data_is_one_line_before_anything_runs(tmp_path, damage, key):
    source, target = _real_layout_roots(tmp_path)
    pool_labels = target / "gtFine" / "train" / "synthtown"
    if damage == "missing_root":
        source = tmp_path / "nowhere"
    elif damage == "empty_root":
        source = tmp_path / "empty"
        source.mkdir()
    elif damage == "missing_label":
        next((source / "labels").iterdir()).unlink()
    elif damage == "label_links_out":  # a valid label, but one that lives outside the dataset root
        label = next((source / "labels").iterdir())
        label.rename(tmp_path / "outside.png")
        label.symlink_to(tmp_path / "outside.png")
    elif damage == "city_links_out":
        city = target / "leftImg8bit" / "train" / "synthtown"
        city.rename(tmp_path / "elsewhere")
        city.symlink_to(tmp_path / "elsewhere")
    elif damage in ("truncated_image", "truncated_label"):
        folder = target / "leftImg8bit" / "train" / "synthtown" if damage == "truncated_image" else pool_labels
        path = sorted(folder.iterdir())[-1]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # a valid header, half the pixel data
        assert read_image_size(str(path)) == (32, 64)  # the header still reads
    elif damage == "undefined_label_ids":
        path = sorted(pool_labels.glob("*_labelIds.png"))[-1]
        ids = np.array(Image.open(path))
        ids[0, 0] = 200  # not a Cityscapes id
        Image.fromarray(ids).save(path)
    else:
        next((target / "leftImg8bit" / "train" / "synthtown").iterdir()).write_bytes(b"not a png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_cli(
        "orchestrator.sweep",
        "--smoke",
        "--set",
        f"data.source.root={source}",
        "--set",
        f"data.target.root={target}",
        cwd=run_dir,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and key in lines[0], result.stderr
    assert list(run_dir.iterdir()) == []


@pytest.mark.integration
def test_gpu_request_without_gpus_fails_before_training(tmp_path):
    # The Ray the sweep starts sees no GPU even on a machine that has one (Ray counts the devices
    # CUDA_VISIBLE_DEVICES names): this test is about a cluster without GPUs.
    result = run_cli(
        "orchestrator.sweep",
        "--smoke",
        "--set",
        "train.use_gpu=true",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        cwd=tmp_path,
        timeout=180,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2
    assert "config key 'train.use_gpu': is true but the Ray cluster has CPU=" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


def test_the_source_model_training_shows_its_progress(smoke_source_models):
    """The session's source model was trained as the smoke sweep trains it (Ray Train, one worker):
    its progress reached the driver, at least the last step."""
    output = (smoke_source_models.parent / "training.log").read_text()
    assert "[source model] step 20/20 (100%) | loss: " in output, output[-3000:]
    assert re.search(r"source model: target mIoU [0-9.]+", output), output[-3000:]


@pytest.mark.integration
def test_smoke_sweep_logs_every_trial_to_mlflow(fault_free_sweep):
    """The smoke sweep as the fault tests run it without faults (2 trials, points_per_image 2 and 3,
    2 rounds, a sqlite store): what it printed, logged to MLflow and wrote, and the API's view of it."""
    sweep_dir, store = fault_free_sweep.sweep_dir, fault_free_sweep.store
    output = (store.parent / "sweep.log").read_text()
    assert "source-only target mIoU" in output
    assert "2 trial(s), 0 failed" in output
    # Training progress from the first Train worker of each job (at least its last step).
    for round_index in (1, 2):
        assert re.search(
            rf"round {round_index}\] step 10/10 \(100%\) \| loss: .*source_ce [0-9.]+.* \| [0-9.]+ images/s \| 0 s left",
            output,
        ), output[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(fault_free_sweep.name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("activeda.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("activeda.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert "source_only/target/miou" in parents[0].data.metrics
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["selection.points_per_image"] for r in children) == ["2", "3"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["selection.rule"] == "labor_ppl"
        assert run.data.tags["rule"] == "labor_ppl"
        history = client.get_metric_history(run.info.run_id, "target/miou")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
        assert all(0.0 <= m.value <= 1.0 for m in history)
        pixels = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "budget/labeled_pixels")}
        points = int(run.data.params["selection.points_per_image"])
        assert pixels == {0: 0.0, 1: float(points * 8), 2: float(2 * points * 8)}  # 8 images in the smoke pool
        assert client.get_metric_history(run.info.run_id, "target/iou/road")

    # Artifacts: per trial the config, label store and per-round overlays; per sweep the report.
    def artifact_sizes(run_id, path=None):
        out = {}
        for item in client.list_artifacts(run_id, path):
            out.update(artifact_sizes(run_id, item.path) if item.is_dir else {item.path: item.file_size})
        return out

    for run in children:
        files = artifact_sizes(run.info.run_id)
        assert files["config.json"] > 0
        for index in (1, 2):
            assert files[f"labels/round-{index:04d}.parquet"] > 0 and files[f"rounds/round-{index:03d}/iou.csv"] > 0
            assert any(
                p.startswith(f"rounds/round-{index:03d}/selected-") and p.endswith(".png") and size > 1000
                for p, size in files.items()
            )
    report = artifact_sizes(parents[0].info.run_id)
    for name in ("report.html", "method_curves.png", "budget_curve.html", "summary.csv", "summary.parquet"):
        assert report[f"report/{name}"] > 0

    # Each trial's label store holds exactly the budget it reports.
    import pyarrow.parquet as pq

    for round_file in ("round-0001.parquet", "round-0002.parquet"):
        stores = sorted((sweep_dir / "trials").glob(f"*/labels/{round_file}"))
        assert len(stores) == 2
        assert sorted(pq.read_table(p)["num_pixels"].to_pylist()[0] for p in stores) == [2, 3]

    # Provenance: the commit and the user on every run, the final checkpoint on each trial's.
    for run in [*parents, *children]:
        assert len(run.data.tags["mlflow.source.git.commit"]) == 40 and run.data.tags["mlflow.user"]
    for run in children:
        finished = client.get_run(run.info.run_id).data.tags
        assert "checkpoint" in finished["activeda.checkpoint"] and "round-002" in finished["activeda.checkpoint"]
        # The round's overlays in MLflow's per-step image view.
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        for step in (1, 2):
            assert any(p.startswith("images/selection~image") and f"+step+{step}+" in p for p in images), images
    for name in ("report.html", "method_curves.png", "class_iou.csv", "class_iou.parquet", "pareto.csv"):
        assert report[f"report/{name}"] > 0, name

    # The Python API reads the same sweep from disk.
    from orchestrator import api

    results = api.load_sweep(sweep_dir)
    assert sorted(results.trials["selection.points_per_image"]) == [2, 3]
    assert sorted(results.rounds.groupby("trial_id")["round"].max()) == [2, 2]
    by_trial = {r.data.tags["activeda.trial_id"]: r for r in children}
    for row in results.trials.itertuples():
        assert row.miou == pytest.approx(by_trial[row.trial_id].data.metrics["target/miou"])
    assert {"road", "car"} <= set(results.class_iou.columns) and len(results.class_iou) == 2
    assert results.source_only == pytest.approx(parents[0].data.metrics["source_only/target/miou"])
