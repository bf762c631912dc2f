"""Training jobs in-process: checkpoints hold everything, and a resumed job continues exactly."""

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from experiment_config import load_config, with_overrides
from trainers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainers.engine import run_job
from trainers.job import TrainJob
from trainers.labels import InMemoryLabels


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("engine-data")
    return load_config(
        None,
        {"data.cache_dir": str(cache), "source.steps": 3, "adapt.steps": 4, "adapt.checkpoint_every": 2},
        smoke=True,
    )


@pytest.fixture(scope="module")
def source_checkpoint(cfg, tmp_path_factory):
    result = run_job(TrainJob(mode="source", config=cfg))
    path = tmp_path_factory.mktemp("source-ckpt")
    save_checkpoint(path, result.state)
    return str(path), result


def sparse_labels():
    return {0: (np.array([1, 2]), np.array([3, 4]), np.array([0, 1])), 3: (np.array([5]), np.array([6]), np.array([2]))}


def adapt_job(cfg, ckpt):
    return TrainJob(mode="adapt", config=cfg, init_checkpoint=ckpt, labels=InMemoryLabels(sparse_labels()), round=1)


def test_source_job_reports_miou_and_soft_labels(source_checkpoint):
    _, result = source_checkpoint
    assert 0.0 <= result.metrics["target/miou"] <= 1.0
    assert "target/iou/road" in result.metrics and result.metrics["train/steps"] == 3
    state = result.state
    assert state["mode"] == "source" and state["global_step"] == 3
    assert bool(state["modules"]["soft_labels"]["seen"].any())
    assert "discriminator" not in state["modules"]  # not used by source-only training


def test_run_job_reports_progress_after_every_step(cfg, source_checkpoint):
    seen = []
    run_job(
        adapt_job(cfg, source_checkpoint[0]),
        progress=lambda done, total, losses: seen.append((done, total, dict(losses))),
    )
    assert [(done, total) for done, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all({"source_ce", "target_ce", "segmenter_total"} <= set(losses) for _, _, losses in seen)
    assert all(isinstance(value, float) for _, _, losses in seen for value in losses.values())


def test_adapt_checkpoint_holds_everything(cfg, source_checkpoint):
    result = run_job(adapt_job(cfg, source_checkpoint[0]))
    state = result.state
    assert set(state["modules"]) == {
        "segmenter",
        "selector",
        "discriminator",
        "domain_classifier",
        "soft_labels",
        "pseudo_labeler",
    }
    assert set(state["optimizers"]) == {
        "segmenter",
        "selector_backbone",
        "selector_heads",
        "discriminator",
        "domain_classifier",
    }
    assert state["global_step"] == 3 + 4 and state["job_step"] == 4 and "rng" in state
    for name in (
        "train/loss/target_ce",
        "train/loss/adversarial",
        "train/loss/confusion",
        "train/loss/soft_label",
        "train/loss/selector_pseudo_ce",
        "train/loss/discriminator",
        "train/loss/domain_classifier",
        "train/loss/selector_discrepancy_heads",
    ):
        assert name in result.metrics


def test_resumed_job_continues_the_same_trajectory(cfg, source_checkpoint, tmp_path):
    full = run_job(adapt_job(cfg, source_checkpoint[0]))
    saved = {}

    def keep(done, state_fn):
        if done == 2:
            saved["state"] = state_fn()
            raise KeyboardInterrupt  # the worker dies after its mid-round checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_job(adapt_job(cfg, source_checkpoint[0]), on_step=keep)
    save_checkpoint(tmp_path / "mid", saved["state"])
    resumed = run_job(adapt_job(cfg, source_checkpoint[0]), resume_state=load_checkpoint(tmp_path / "mid"))
    for module, params in full.state["modules"].items():
        for key, value in params.items():
            assert torch.equal(value, resumed.state["modules"][module][key]), f"{module}.{key}"
    assert resumed.metrics["target/miou"] == full.metrics["target/miou"]


def test_evaluate_job_and_checkpoint_mismatch(cfg, source_checkpoint, tmp_path):
    result = run_job(TrainJob(mode="evaluate", config=cfg, init_checkpoint=source_checkpoint[0]))
    assert result.metrics["target/miou"] == pytest.approx(source_checkpoint[1].metrics["target/miou"])
    other = with_overrides(cfg, {"model.width": cfg.model.width * 2})
    with pytest.raises(CheckpointError, match="was made for model.width=8, the config asks for 16"):
        run_job(TrainJob(mode="evaluate", config=other, init_checkpoint=source_checkpoint[0]))


def test_truncated_checkpoint_is_refused(source_checkpoint, tmp_path):
    data = (__import__("pathlib").Path(source_checkpoint[0]) / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_cpu_training_is_reproducible_to_the_checkpoint_bytes(cfg, source_checkpoint, tmp_path):
    """Same config and seed on the CPU: byte-identical checkpoints (file-level, not just values)."""
    paths = [
        save_checkpoint(tmp_path / name, run_job(adapt_job(cfg, source_checkpoint[0])).state) for name in ("a", "b")
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_oracle_job_trains_on_every_pool_pixel(cfg, source_checkpoint):
    job = TrainJob(mode="adapt", config=cfg, init_checkpoint=source_checkpoint[0], round=1, full_target_labels=True)
    result = run_job(job)
    assert result.metrics["train/loss/target_ce"] > 0  # a dense target loss, not the sparse one
    assert result.state["job_step"] == cfg.adapt.steps


def test_adapt_job_can_carry_the_selector_over_untrained(cfg, source_checkpoint):
    start = source_checkpoint[1].state["modules"]["selector"]
    frozen = run_job(dataclasses.replace(adapt_job(cfg, source_checkpoint[0]), train_selector_network=False))
    assert all(torch.equal(start[k], v) for k, v in frozen.state["modules"]["selector"].items())
    assert not any(name.startswith("train/loss/selector") for name in frozen.metrics)
    trained = run_job(adapt_job(cfg, source_checkpoint[0]))
    assert any(not torch.equal(start[k], v) for k, v in trained.state["modules"]["selector"].items())
    # G's trajectory does not depend on S: same batches, same G either way.
    g_frozen, g_trained = frozen.state["modules"]["segmenter"], trained.state["modules"]["segmenter"]
    assert all(torch.equal(g_frozen[k], g_trained[k]) for k in g_frozen)


def test_a_given_checkpoint_is_the_source_model_without_training(cfg, tmp_path):
    """source.checkpoint: G is the file's model (not trained), S gets its backbone and fresh heads."""
    from trainers.data import SYNTHETIC_CLASSES
    from trainers.engine import build_adaptation_models
    from trainers.models import SegmentationNet

    torch.manual_seed(123)
    released = SegmentationNet(len(SYNTHETIC_CLASSES), width=cfg.model.width)
    torch.save({f"module.{k}": v for k, v in released.state_dict().items()}, tmp_path / "released.pth")
    given = with_overrides(cfg, {"source.checkpoint": str(tmp_path / "released.pth")})
    result = run_job(TrainJob(mode="source", config=given))
    state = result.state
    assert state["global_step"] == 0 and result.metrics["train/steps"] == 0
    assert all(torch.equal(v, state["modules"]["segmenter"][k]) for k, v in released.state_dict().items())
    selector = state["modules"]["selector"]
    fresh = build_adaptation_models(given, len(SYNTHETIC_CLASSES)).selector.state_dict()
    for key, value in selector.items():
        expected = fresh[key] if key.startswith("heads.") else released.state_dict()[key]
        assert torch.equal(value, expected), key
    save_checkpoint(tmp_path / "source", state)
    evaluated = run_job(TrainJob(mode="evaluate", config=given, init_checkpoint=str(tmp_path / "source")))
    assert evaluated.metrics["target/miou"] == result.metrics["target/miou"]


def test_sgd_with_polynomial_decay_follows_the_global_step_and_resumes_exactly(cfg, source_checkpoint, tmp_path):
    from trainers.engine import lr_schedule_span, poly_lr_factor

    sgd = with_overrides(
        cfg,
        {
            "adapt.optimizer": "sgd",
            "adapt.lr_power": 0.9,
            "adapt.head_lr_factor": 10.0,
            "adapt.weight_decay": 5e-4,
            "adapt.momentum": 0.9,
        },
    )
    first, planned = lr_schedule_span(sgd, "adapt")
    assert (first, planned) == (cfg.source.steps, cfg.selection.rounds * cfg.adapt.steps)
    assert poly_lr_factor(first, first, planned, 0.9) == 1.0
    assert poly_lr_factor(first + planned // 2, first, planned, 0.9) == pytest.approx(0.5**0.9)
    longer = with_overrides(sgd, {"adapt.lr_decay_steps": 250000})  # AdaptSegNet's horizon
    assert lr_schedule_span(longer, "adapt") == (first, 250000)
    saved = {}

    def keep_mid_round_state(done, state_fn):
        if done == 2:
            saved["state"] = copy.deepcopy(state_fn())  # what a mid-round checkpoint holds (training goes on)

    full = run_job(adapt_job(sgd, source_checkpoint[0]), on_step=keep_mid_round_state)
    last_step = full.state["global_step"] - 1  # the rate of the last update
    groups = full.state["optimizers"]["segmenter"]["param_groups"]
    factor = poly_lr_factor(last_step, first, planned, 0.9)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor, 1e-2 * factor])
    assert "momentum_buffer" in next(iter(full.state["optimizers"]["segmenter"]["state"].values()))
    resumed = run_job(adapt_job(sgd, source_checkpoint[0]), resume_state=saved["state"])
    for key, value in full.state["modules"]["segmenter"].items():
        assert torch.equal(value, resumed.state["modules"]["segmenter"][key]), key


def test_the_target_dataset_reads_labels_by_reference_as_it_reads_them_from_a_dict(cfg, tmp_path):
    from orchestrator.labels.store import LabeledPixels, LabelStore
    from trainers.data import build_domains
    from trainers.step import SparseTargetDataset

    pool = build_domains(cfg.data).target_pool
    store = LabelStore(tmp_path / "labels")
    store.append_round(
        1,
        "labor_ppl",
        [
            LabeledPixels(
                i,
                ys.astype(np.int32),
                xs.astype(np.int32),
                c.astype(np.uint8),
                cfg.data.height,
                cfg.data.width,
                float(len(ys)),
            )
            for i, (ys, xs, c) in sparse_labels().items()
        ],
    )
    by_reference = SparseTargetDataset(pool, store.reader())
    in_memory = SparseTargetDataset(pool, InMemoryLabels(sparse_labels()))
    for index in (0, 1, 3):
        assert torch.equal(by_reference[index][1], in_memory[index][1])
    assert int((by_reference[3][1] != 255).sum()) == 1 and by_reference[3][1][5, 6] == 2


def test_a_train_job_is_a_typed_frozen_record_that_crosses_ray_as_it_is(cfg, source_checkpoint, tmp_path):
    """What Ray Train pickles (``train_loop_config={"job": job}``) comes back the same job, its labels
    still a reference to the store; an S3 start checkpoint is swapped in a copy, as the worker does."""
    import ray.cloudpickle
    import ray.train

    from orchestrator.labels.store import LabeledPixels, LabelReader, LabelStore

    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_ppl", [LabeledPixels(0, np.array([1]), np.array([3]), np.array([2]), 32, 64, 1.0)])
    job = TrainJob(mode="adapt", config=cfg, init_checkpoint=source_checkpoint[0], labels=store.reader(), round=1)
    for dumps, loads in ((pickle.dumps, pickle.loads), (ray.cloudpickle.dumps, ray.cloudpickle.loads)):
        sent = dumps({"job": job})
        assert len(sent) < 8000  # the config and a reference: never the labels
        received = loads(sent)["job"]
        assert isinstance(received, TrainJob) and received.config == cfg and isinstance(received.labels, LabelReader)
        assert received.labels.read([0])[0][2].tolist() == [2]
        assert dataclasses.replace(received, labels=job.labels) == job  # every other field as sent
    on_s3 = dataclasses.replace(job, init_checkpoint=ray.train.Checkpoint(source_checkpoint[0]))
    assert isinstance(pickle.loads(pickle.dumps(on_s3)).init_checkpoint, ray.train.Checkpoint)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.steps = 3
    assert job.planned_steps == cfg.adapt.steps and dataclasses.replace(job, steps=2).planned_steps == 2
    assert TrainJob(mode="evaluate", config=cfg).planned_steps == 0


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"mode": "adpat"}, "unknown job mode 'adpat'; choose one of: source, adapt, evaluate"),
        ({"mode": "adapt", "stage": "warm-up"}, "unknown job stage 'warm-up'; choose one of: rounds, warmup"),
        ({"mode": "adapt", "labels": {0: ([1], [3], [2])}}, "labels implement trainers.labels.TargetLabels"),
        (
            {"mode": "adapt", "full_target_labels": True, "labels": InMemoryLabels({0: ([1], [3], [2])})},
            "full_target_labels or on labels, not both",
        ),
    ],
)
def test_a_train_job_refuses_what_no_worker_could_run(cfg, fields, problem):
    with pytest.raises((ValueError, TypeError), match=problem):
        TrainJob(config=cfg, **fields)
    with pytest.raises(TypeError, match="config is an ExperimentConfig, got dict"):
        TrainJob(mode="source", config=cfg.to_dict())
