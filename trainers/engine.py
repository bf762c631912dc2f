"""A training job, plain PyTorch: build models, continue from a checkpoint, train, evaluate.

``run_job`` is what every Ray Train worker runs (``trainers.train_loop`` only adds Ray's context,
DDP wrapping and reporting), and what tests and benchmarks call in-process. Jobs:

- ``"source"``: source-only training of G and the selector heads (and the soft-label estimate);
- ``"adapt"``: one round of adaptation on source + the target pool's revealed pixels; with
  ``job["train_selector"] = False`` the selector S is carried over untrained (no later round ranks
  with it), which makes a step about 2.4x cheaper on the CPU;
- ``"evaluate"``: target validation mIoU of a checkpoint, no training.

Everything that decides the trajectory (models, optimizers, the soft-label estimate, the global
step that seeds each batch, RNG state) is in the checkpoint, so a resumed job continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from .checkpoint import load_checkpoint
from .data import build_domains
from .discriminators import DomainClassifier, OutputSpaceDiscriminator
from .losses import SoftLabels
from .metrics import iou_per_class, mean_iou
from .models import build_model
from .step import (AdaptationModels, LossWeights, Optimizers, SparseTargetDataset, adaptation_step, batch_indices,
                   load_batch, predict_confusion)

SELECTOR_HEADS = 2
MODES = ("source", "adapt", "evaluate")


def model_identity(cfg: dict, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into the configured model."""
    return {"name": cfg["model"]["name"], "width": cfg["model"]["width"], "num_classes": num_classes}


def loss_weights(cfg: dict, mode: str) -> LossWeights:
    """The adaptation losses in force; source-only training uses none of the target terms."""
    a = cfg["adapt"]
    if mode != "adapt":
        return LossWeights(target_ce=0.0, soft_label=a["soft_label_weight"],
                           soft_label_temperature=a["soft_label_temperature"],
                           soft_label_momentum=a["soft_label_momentum"])
    return LossWeights(target_ce=a["target_ce_weight"], adversarial=a["adversarial_weight"],
                       confusion=a["confusion_weight"], soft_label=a["soft_label_weight"],
                       soft_label_temperature=a["soft_label_temperature"],
                       soft_label_momentum=a["soft_label_momentum"], pseudo_label=a["pseudo_label_weight"],
                       pseudo_label_portion=a["pseudo_label_portion"], discrepancy=a["discrepancy_weight"])


def build_adaptation_models(cfg: dict, num_classes: int, weights: LossWeights | None = None) -> AdaptationModels:
    """G and S always; Dis, theta_D and the soft labels only when their loss is switched on."""
    weights = weights or LossWeights()
    name, width, pretrained = cfg["model"]["name"], cfg["model"]["width"], cfg["model"]["pretrained"]
    torch.manual_seed(cfg["seed"])  # identical initial weights on every worker and every run
    models = AdaptationModels(segmenter=build_model(name, num_classes, width, 1, pretrained),
                              selector=build_model(name, num_classes, width, SELECTOR_HEADS, pretrained))
    adv = cfg["adapt"]
    if weights.adversarial > 0:
        models.discriminator = OutputSpaceDiscriminator(num_classes, width=adv["discriminator_width"])
    if weights.confusion > 0:
        models.domain_classifier = DomainClassifier(models.segmenter.feature_channels,
                                                    width=adv["domain_classifier_width"])
    if weights.soft_label > 0:
        models.soft_labels = SoftLabels(num_classes)
    return models


def build_optimizers(models: AdaptationModels, cfg: dict, mode: str) -> Optimizers:
    lr = cfg["source" if mode == "source" else "adapt"]["lr"]
    selector = getattr(models.selector, "module", models.selector)
    adv = cfg["adapt"]
    return Optimizers(
        segmenter=torch.optim.Adam(models.segmenter.parameters(), lr=lr),
        selector_backbone=torch.optim.Adam(selector.backbone_parameters(), lr=lr),
        selector_heads=torch.optim.Adam(selector.head_parameters(), lr=lr),
        discriminator=(torch.optim.Adam(models.discriminator.parameters(), lr=adv["discriminator_lr"],
                                        betas=(0.9, 0.99)) if models.discriminator is not None else None),
        domain_classifier=(torch.optim.Adam(models.domain_classifier.parameters(), lr=adv["domain_classifier_lr"])
                           if models.domain_classifier is not None else None),
    )


def _module_states(models: AdaptationModels) -> dict[str, dict]:
    out = {}
    for name in ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels"):
        module = getattr(models, name)
        if module is not None:
            out[name] = getattr(module, "module", module).state_dict()
    return out


def load_models(checkpoint_dir: str, cfg: dict, num_classes: int, weights: LossWeights | None = None
                ) -> tuple[AdaptationModels, dict]:
    """Models restored from a checkpoint directory (CPU), and the checkpoint's full state.

    Modules the checkpoint lacks (e.g. Dis after source-only training) keep their fresh weights.
    """
    state = load_checkpoint(checkpoint_dir, expect_model=model_identity(cfg, num_classes))
    models = build_adaptation_models(cfg, num_classes, weights)
    _restore_modules(models, state)
    return models, state


def _restore_modules(models: AdaptationModels, state: dict) -> None:
    for name, module_state in state["modules"].items():
        module = getattr(models, name, None)
        if module is not None:
            module.load_state_dict(module_state)


@dataclass
class JobResult:
    metrics: dict[str, Any]
    state: dict[str, Any] | None  # what to save as the job's checkpoint (None for evaluate)
    confusion: torch.Tensor


def run_job(job: dict, *, rank: int = 0, world: int = 1, device: torch.device | None = None,
            prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
            resume_state: dict | None = None, on_step: Callable[[int, Callable[[], dict]], None] | None = None
            ) -> JobResult:
    """Run one job on one worker. ``prepare_model`` wraps modules for data parallelism (DDP).

    ``resume_state`` (a checkpoint of this same job, e.g. after a worker failure) continues where it
    stopped; otherwise ``job["init_checkpoint"]`` (previous round or source model) is the start.
    ``on_step(done, state_fn)`` is called after every step (for periodic checkpoints).
    """
    cfg, mode = job["config"], job["mode"]
    if mode not in MODES:
        raise ValueError(f"unknown job mode '{mode}'; choose one of: {', '.join(MODES)}")
    device = device or torch.device("cpu")
    use_gpu = device.type == "cuda"
    weights = loss_weights(cfg, mode)
    domains = build_domains(cfg["data"])
    num_classes = len(domains.classes)
    distributed = dist.is_available() and dist.is_initialized() and world > 1

    start = resume_state or (load_checkpoint(job["init_checkpoint"], model_identity(cfg, num_classes))
                             if job.get("init_checkpoint") else None)
    models = build_adaptation_models(cfg, num_classes, weights)
    if start is not None:
        _restore_modules(models, start)
    for name in ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels"):
        module = getattr(models, name)
        if module is None:
            continue
        module.to(device)
        if use_gpu and name != "soft_labels":
            module.to(memory_format=torch.channels_last)
        if name != "soft_labels" and mode != "evaluate":
            setattr(models, name, prepare_model(module))

    section = cfg["source" if mode == "source" else "adapt"]
    global_step = int(start.get("global_step", 0)) if start is not None else 0
    job_step = int(resume_state.get("job_step", 0)) if resume_state is not None else 0
    optimizers = build_optimizers(models, cfg, mode) if mode != "evaluate" else None
    # Optimizer state carries over within a mode (next round, or a resumed job), not from source to adapt.
    if start is not None and optimizers is not None and start.get("mode") == mode and "optimizers" in start:
        optimizers.load_state_dict(start["optimizers"])
    if resume_state is not None and "rng" in resume_state:
        torch.set_rng_state(resume_state["rng"])

    all_reduce = (lambda t: dist.all_reduce(t)) if distributed else None
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_gpu)
    target_data = None
    if mode == "adapt":
        # The oracle reference labels every pool pixel (None: the pool's own label maps).
        labels = None if job.get("full_target_labels") else job.get("sparse_labels") or {}
        target_data = SparseTargetDataset(domains.target_pool, labels, hflip=cfg["data"]["augment"]["hflip"])

    def state() -> dict[str, Any]:
        return {"model": model_identity(cfg, num_classes), "modules": _module_states(models),
                "optimizers": optimizers.state_dict() if optimizers else {}, "mode": mode,
                "round": int(job.get("round", 0)), "global_step": global_step, "job_step": job_step,
                "rng": torch.get_rng_state(), "loss_sums": dict(sums)}

    train_selector = mode == "source" or bool(job.get("train_selector", True))
    # A resumed job continues its loss sums too, so its reported means are those of an uninterrupted job.
    sums: dict[str, float] = dict(resume_state.get("loss_sums", {})) if resume_state is not None else {}
    start_step = job_step
    started = time.perf_counter()
    steps = section["steps"] if mode != "evaluate" else 0
    seed = cfg["seed"]
    while job_step < steps:
        # Augmentation randomness is a function of the step too, so resuming reproduces it.
        torch.manual_seed(seed * 7919 + global_step * 31 + rank)
        source = load_batch(domains.source, batch_indices(len(domains.source), section["batch_size"],
                                                          global_step, seed, rank, world))
        source = tuple(t.to(device) for t in source)
        target = None
        if target_data is not None:
            target = load_batch(target_data, batch_indices(len(target_data), section["batch_size"],
                                                           global_step, seed + 1, rank, world))
            target = tuple(t.to(device) for t in target)
        with autocast:
            losses = adaptation_step(models, optimizers, source, target, weights, all_reduce=all_reduce,
                                     train_selector=train_selector)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        global_step += 1
        job_step += 1
        if on_step is not None:
            on_step(job_step, state)
    train_seconds = time.perf_counter() - started

    # Evaluation: each rank takes every world-th validation image (no padding, no duplicates).
    segmenter = getattr(models.segmenter, "module", models.segmenter)
    val_ids = list(range(rank, len(domains.target_val), world))
    with autocast:
        confusion = predict_confusion(segmenter, domains.target_val, val_ids, num_classes,
                                      batch_size=max(1, section["batch_size"]), device=device)
    if distributed:
        dist.all_reduce(confusion)
    confusion = confusion.cpu()
    # train/start_step: where this attempt began (> 0 only when Ray Train restarted it from a checkpoint).
    metrics: dict[str, Any] = {"target/miou": mean_iou(confusion), "train/steps": steps,
                               "train/seconds": train_seconds, "train/start_step": start_step}
    if steps:
        metrics["train/images_per_s"] = steps * section["batch_size"] * world / max(train_seconds, 1e-9)
    for name, value in zip(domains.classes, iou_per_class(confusion).tolist()):
        metrics[f"target/iou/{name}"] = value
    for name, total in sums.items():
        metrics[f"train/loss/{name}"] = total / max(steps, 1)
    return JobResult(metrics=metrics, state=state() if mode != "evaluate" else None, confusion=confusion)
