"""Ray Train: data-parallel training works, and distributed evaluation is exact."""

import pytest

from experiment_config import load_config
from trainers.engine import run_job
from trainers.job import TrainJob
from trainers.labels import InMemoryLabels
from trainers.train_loop import run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("train-loop-data")
    # 7 validation images: an odd count, so an even split would need padding (and get it wrong).
    return load_config(
        None,
        {"data.cache_dir": str(cache), "data.synthetic.target_val_images": 7, "source.steps": 4, "adapt.steps": 3},
        smoke=True,
    )


def with_workers(cfg, workers):
    return load_config(None, {**cfg.flat(), "train.num_workers": workers, "train.cpus_per_worker": 0.5})


def test_two_workers_train_and_evaluate_exactly_like_one(cfg, ray_local, tmp_path):
    two = with_workers(cfg, 2)
    source = run_training(TrainJob(mode="source", config=two), tmp_path, "source-2w")
    assert source.checkpoint_dir and 0 <= source.metrics["target/miou"] <= 1

    adapt = run_training(
        TrainJob(
            mode="adapt",
            config=two,
            init_checkpoint=source.checkpoint_dir,
            round=1,
            labels=InMemoryLabels({0: ([1, 2], [3, 4], [0, 1])}),
        ),
        tmp_path,
        "adapt-2w",
    )
    assert adapt.metrics["train/loss/selector_discrepancy_heads"] >= 0  # the DDP path ran every update

    # Two workers fetching the start checkpoint from a storage filesystem (S3 in a cluster; the local
    # one here: the checkpoint travels as a ray.train.Checkpoint inside the pickled job, and each worker
    # fetches it to a folder of its own) evaluate exactly as the engine in this process does. (One
    # worker on Ray against the engine: the killed-worker test below, training and evaluation.)
    import pyarrow.fs

    two_fetched = run_training(
        TrainJob(mode="evaluate", config=with_workers(cfg, 2), init_checkpoint=adapt.checkpoint_dir),
        str(tmp_path / "on-storage"),
        "evaluate-2w-fetched",
        filesystem=pyarrow.fs.LocalFileSystem(),
    ).metrics
    in_process = run_job(
        TrainJob(mode="evaluate", config=with_workers(cfg, 1), init_checkpoint=adapt.checkpoint_dir)
    ).metrics
    assert two_fetched["target/miou"] == in_process["target/miou"]
    assert two_fetched["target/iou/road"] == in_process["target/iou/road"]


def test_killed_train_worker_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(
    cfg, ray_local, tmp_path
):
    import json
    import os
    import threading
    import time

    import psutil
    import torch

    from trainers.checkpoint import load_checkpoint, save_checkpoint

    config = load_config(None, {**cfg.flat(), "adapt.steps": 6, "adapt.checkpoint_every": 2})
    # The start model and the uninterrupted run come from the engine in this process (Ray Train's own
    # path is the other test's), with the torch threads of a Ray Train worker: the killed run on Ray
    # must end bit for bit where the engine ends without any fault.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.train.torch_threads or max(1, int(config.train.cpus_per_worker)))
    try:
        save_checkpoint(tmp_path / "source", run_job(TrainJob(mode="source", config=config)).state)
        job = TrainJob(
            mode="adapt",
            config=config,
            init_checkpoint=str(tmp_path / "source"),
            round=1,
            labels=InMemoryLabels({0: ([1, 2], [3, 4], [0, 1])}),
        )
        clean = run_job(job)
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(tmp_path / "adapt-clean", clean.state)

    killed = []

    def registered_checkpoints() -> list[dict]:
        """Mid-job checkpoints Ray Train has registered (a checkpoint folder that has been written but
        not yet registered when the worker dies is not used by the restart: its steps are recomputed)."""
        try:
            snapshot = json.loads((tmp_path / "adapt-faulty" / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return []
        return [r["metrics"] for r in snapshot["checkpoint_results"] if "train/job_step" in r["metrics"]]

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if registered_checkpoints():
                for process in psutil.process_iter(["cmdline"]):
                    if "RayTrainWorker" in " ".join(process.info["cmdline"] or []) and os.getpid() in [
                        p.pid for p in process.parents()
                    ]:
                        process.kill()
                        killed.append(process.pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    faulty = run_training(job, tmp_path, "adapt-faulty")
    watcher.join(timeout=1)
    assert killed, "the worker was never killed"
    assert faulty.metrics["train/steps"] == 6
    # A resume, not a restart: the last attempt began after step 0, at a checkpoint (every 2 steps).
    # (Batches depend only on step and seed, so a restart from step 0 would end with the same weights.)
    assert clean.metrics["train/start_step"] == 0 and faulty.metrics["train/start_step"] in (2, 4)
    losses = sorted(k for k in clean.metrics if k.startswith("train/loss/"))
    assert losses and [faulty.metrics[k] for k in losses] == [clean.metrics[k] for k in losses]
    # and one worker on Ray evaluates the model exactly as the engine in this process does
    assert faulty.metrics["target/miou"] == clean.metrics["target/miou"]
    assert faulty.metrics["target/iou/road"] == clean.metrics["target/iou/road"]
    a, b = load_checkpoint(tmp_path / "adapt-clean"), load_checkpoint(faulty.checkpoint_dir)
    assert a["global_step"] == b["global_step"]
    for name, params in a["modules"].items():
        for key, value in params.items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key}"
