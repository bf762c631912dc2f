"""The models every trial starts from, each trained once per setting and cached in the sweep's storage:
the source model, the label-free warm-up (``warmup.steps``: G adapts without labels, then LabOR's
selector network S learns the target from G's pseudo labels), and the oracle reference (every pool
pixel labeled: the ceiling a sweep is measured against)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from experiment_config.schema import ExperimentConfig
from orchestrator.cluster.storage import open_storage
from trainers.engine import planned_adapt_steps
from trainers.job import TrainJob
from trainers.labels import NO_LABELS
from trainers.train_loop import run_training

SOURCE_CACHE_SECTIONS = ("seed", "data", "model", "source")


def source_cache_key(cfg: ExperimentConfig) -> str:
    """Everything that changes the source model (not resources, not selection, not adaptation), and
    the content of ``source.checkpoint`` when the source model is given (a file replaced under the
    same name is a new model)."""
    key = cfg.hash(*SOURCE_CACHE_SECTIONS)
    if cfg.source.checkpoint:
        digest = hashlib.sha256(key.encode())
        with open(cfg.source.checkpoint, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        key = digest.hexdigest()[:16]
    return key


def ensure_source_model(cfg: ExperimentConfig, progress: Callable[[str], None] = print) -> tuple[str, dict]:
    """Train the source-only model once per cache key; returns (checkpoint location, its target metrics).

    The cache entry lives in the sweep's storage (``storage.uri`` or ``output_dir``) and counts only
    once its ``metrics.json`` is written, last, so an interrupted run leaves nothing that a later
    run could mistake for a trained model.
    """
    storage = open_storage(cfg)
    cache_root = Path(cfg.output_dir).resolve() / "source-models"
    entry = cache_root / source_cache_key(cfg)
    entry_location = storage.location(entry)
    cached = storage.read_text(storage.join(entry_location, "metrics.json"))
    if cached is not None:
        progress(f"source model: reusing {entry_location}")
        return storage.join(entry_location, "checkpoint"), json.loads(cached)

    if cfg.source.checkpoint:
        progress(
            f"source model: G from {cfg.source.checkpoint} (not trained); the selector network S gets its backbone "
            f"and fresh heads, which LabOR's selection needs trained first"
        )
    else:
        progress(f"source model: training {cfg.source.steps} steps ({cfg.train.num_workers} Train worker(s))")
    job = TrainJob(mode="source", config=cfg)
    result = run_training(job, name=f"source-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = round_metrics(result.metrics)
    storage.publish_entry(
        entry,
        {"checkpoint": result.checkpoint_dir},
        {"metrics.json": json.dumps(metrics, indent=1, sort_keys=True)},
        marker="metrics.json",
    )
    progress(f"source model: target mIoU {metrics['target/miou']:.3f} ({result.seconds:.0f} s)")
    return storage.join(entry_location, "checkpoint"), metrics


# adapt keys that never change the warm-up: they act on labeled pixels or on the rounds after it.
# (The warm-up has its own loss weights: adapt's adversarial and confusion weights act on the rounds only.)
WARMUP_NEUTRAL_ADAPT_KEYS = (
    "steps",
    "total_steps",
    "target_ce_weight",
    "checkpoint_every",
    "soft_label_weight",
    "soft_label_temperature",
    "soft_label_momentum",
    "soft_label_estimate",
    "adversarial_weight",
    "confusion_weight",
)
# adapt keys of an adversary, which change the warm-up only when the warm-up uses that loss.
WARMUP_LOSS_KEYS = {
    "adversarial_weight": ("discriminator_lr", "discriminator_width"),
    "confusion_weight": ("domain_classifier_lr", "domain_classifier_width"),
}


def warmup_cache_key(cfg: ExperimentConfig) -> str:
    """Everything that changes the warmed-up models: the source model's key, the warm-up section and
    the adapt keys it uses -- not the selection, not the rounds, not the labeled-target losses, so
    every trial of a comparison starts from the same warmed-up G and S."""
    data = cfg.to_dict()
    adapt = dict(data["adapt"])
    unused = [key for loss, keys in WARMUP_LOSS_KEYS.items() if not getattr(cfg.warmup, loss) for key in keys]
    for key in (*WARMUP_NEUTRAL_ADAPT_KEYS, *unused):
        adapt.pop(key, None)
    blob = json.dumps(
        {"source": source_cache_key(cfg), "warmup": data["warmup"], "adapt": adapt}, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def warmup_losses(cfg: ExperimentConfig) -> str:
    """G's label-free losses in the warm-up, in words ("adversarial 0.001", or "source CE only")."""
    used = [
        f"{name} {getattr(cfg.warmup, f'{name}_weight'):g}"
        for name in ("adversarial", "confusion")
        if getattr(cfg.warmup, f"{name}_weight")
    ]
    return ", ".join(used) or "source CE only"


def ensure_warmup_model(
    cfg: ExperimentConfig, source_checkpoint: str, source_metrics: dict, progress: Callable[[str], None] = print
) -> tuple[str, dict]:
    """The models round 1 starts from: (checkpoint location, their target metrics).

    With ``warmup.steps`` > 0: one label-free adaptation job from the source model (G adapts with
    the warm-up's loss weights, LabOR's selector network S learns the target from G's pseudo labels and the MCD
    discrepancy), trained once per ``warmup_cache_key`` and cached like the source model; the
    metrics carry ``warmup/steps``. With 0 steps: the source model itself.
    """
    if cfg.warmup.steps == 0:
        return source_checkpoint, source_metrics
    storage = open_storage(cfg)
    cache_root = Path(cfg.output_dir).resolve() / "warmup-models"
    entry = cache_root / warmup_cache_key(cfg)
    entry_location = storage.location(entry)
    cached = storage.read_text(storage.join(entry_location, "metrics.json"))
    if cached is not None:
        progress(f"warm-up: reusing {entry_location}")
        return storage.join(entry_location, "checkpoint"), json.loads(cached)
    progress(
        f"warm-up: {cfg.warmup.steps} label-free steps (G: {warmup_losses(cfg)}; "
        f"LabOR's selector network S: pseudo labels ({cfg.adapt.pseudo_label_rule}) + MCD discrepancy)"
    )
    job = TrainJob(
        mode="adapt",
        stage="warmup",
        config=cfg,
        init_checkpoint=source_checkpoint,
        round=0,
        steps=cfg.warmup.steps,
        labels=NO_LABELS,
        train_selector_network=True,
    )
    result = run_training(job, name=f"warmup-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = {**round_metrics(result.metrics), "warmup/steps": float(cfg.warmup.steps)}
    marker = storage.join(entry_location, "metrics.json")
    try:
        storage.publish_entry(
            entry,
            {"checkpoint": result.checkpoint_dir},
            {"metrics.json": json.dumps(metrics, indent=1, sort_keys=True)},
            marker="metrics.json",
        )
    except OSError:
        # Two trials whose settings differ from the sweep's in the same way trained the same warm-up
        # at once, and the other published first: use its entry (the same seed and settings).
        if storage.read_text(marker) is None:
            raise
        metrics = json.loads(storage.read_text(marker))
    progress(f"warm-up: target mIoU {metrics['target/miou']:.3f} ({result.seconds:.0f} s)")
    return storage.join(entry_location, "checkpoint"), metrics


ORACLE_CACHE_SECTIONS = ("seed", "data", "model", "source", "adapt", "warmup")


def oracle_cache_key(cfg: ExperimentConfig) -> str:
    """The oracle's settings and the steps it trains (those of a whole trial after the warm-up)."""
    return hashlib.sha256(f"{cfg.hash(*ORACLE_CACHE_SECTIONS)}:{planned_adapt_steps(cfg)}".encode()).hexdigest()[:16]


def ensure_oracle_reference(
    cfg: ExperimentConfig,
    source_checkpoint: str,
    progress: Callable[[str], None] = print,
    source_metrics: dict | None = None,
) -> dict:
    """Target metrics of adaptation with *every* pool pixel labeled: the sweep's ceiling.

    Like a trial, it starts from the warmed-up models (``ensure_warmup_model``) and trains the
    adaptation steps of a whole trial (``planned_adapt_steps``) in one job. Cached like the source
    model (``oracle_cache_key``). The job reads the pool's full label maps itself, so nothing of
    size "all pixels" crosses Ray.
    """
    storage = open_storage(cfg)
    cache_root = Path(cfg.output_dir).resolve() / "oracle-references"
    entry = cache_root / oracle_cache_key(cfg)
    metrics_location = storage.join(storage.location(entry), "metrics.json")
    cached = storage.read_text(metrics_location)
    if cached is not None:
        progress(f"oracle reference: reusing {storage.location(entry)}")
        return json.loads(cached)
    start_checkpoint, _ = ensure_warmup_model(cfg, source_checkpoint, source_metrics or {}, progress)
    steps = planned_adapt_steps(cfg)
    progress(f"oracle reference: adapting with every pool pixel labeled ({steps} steps)")
    job = TrainJob(
        mode="adapt",
        config=cfg,
        init_checkpoint=start_checkpoint,
        round=1,
        full_target_labels=True,
        train_selector_network=False,
        steps=steps,
    )
    result = run_training(job, name=f"oracle-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = round_metrics(result.metrics)
    storage.write_text(metrics_location, json.dumps(metrics, indent=1, sort_keys=True))
    progress(f"oracle reference: target mIoU {metrics['target/miou']:.3f} ({result.seconds:.0f} s)")
    return metrics


def round_metrics(train_metrics: dict) -> dict[str, float]:
    # train/global_step counts every step the model has trained (source, warm-up, rounds): trials of
    # a comparison end at the same value.
    return {
        k: v
        for k, v in train_metrics.items()
        if (k.startswith("target/") and k != "target/confusion")
        or k.startswith("train/loss/")
        or k == "train/global_step"
    }
