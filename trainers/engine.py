"""A training job, plain PyTorch: build models, continue from a checkpoint, train, evaluate.

``run_job`` is what every Ray Train worker runs (``trainers.train_loop`` only adds Ray's context,
DDP wrapping and reporting), and what tests and benchmarks call in-process. Jobs:

- ``"source"``: source-only training of G and the selector heads (and the soft-label estimate);
- ``"adapt"``: one round of adaptation on source + the target pool's revealed pixels; with
  ``TrainJob.train_selector_network`` False the selector network S is carried over untrained (no
  later round ranks with it), which makes a step about 2.4x cheaper on the CPU;
- ``"evaluate"``: target validation mIoU of a checkpoint, no training.

Everything that decides the trajectory (models, optimizers, the soft-label estimate, the global
step that seeds each batch, RNG state) is in the checkpoint, so a resumed job continues exactly.

``run_job`` in steps: ``start_state`` (what the job continues from), ``ready_models`` (built,
restored, on the device, wrapped for DDP), ``Trajectory`` (optimizers, learning-rate schedule, the
counters a checkpoint holds, one ``step``), ``target_dataset``, ``fix_source_set_soft_labels``,
``train`` (the step loop), ``evaluate`` (the validation confusion matrix over all workers) and
``job_metrics``; ``Placement`` says where the worker runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from experiment_config.schema import AugmentConfig, ExperimentConfig, TrainingStageConfig

from .checkpoint import load_checkpoint
from .data import build_domains
from .discriminators import DomainClassifier, OutputSpaceDiscriminator
from .job import TrainJob, stage_section
from .loader import SOURCE_STREAM, TARGET_STREAM, training_loader
from .losses import IASTPseudoLabels, SoftLabels
from .metrics import iou_per_class, mean_iou, mean_iou_over, predict_confusion
from .models import build_model, load_start_checkpoint, pretrained_weights_file
from .step import AdaptationModels, LossWeights, Optimizers, SparseTargetDataset, adaptation_step

SELECTOR_HEADS = 2
# Every module a checkpoint may hold; the last two are state (buffers), not networks.
MODULES = ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels", "pseudo_labeler")
STATE_MODULES = ("soft_labels", "pseudo_labeler")
NO_AUGMENTATION = AugmentConfig(hflip=False, scale_min=1.0, scale_max=1.0)
# LossWeights.soft_label_estimate of the warm-up: the soft labels are neither estimated nor updated.
CARRIED = "carried"


def planned_adapt_steps(cfg: ExperimentConfig) -> int:
    """Adaptation steps of a whole trial after the warm-up: ``adapt.total_steps``, else steps x rounds."""
    return cfg.adapt.total_steps or cfg.adapt.steps * cfg.selection.rounds


def round_steps(cfg: ExperimentConfig, round_index: int) -> int:
    """Adaptation steps of round ``round_index`` (1-based): ``adapt.steps``, or with ``adapt.total_steps``
    an even share of it, the remainder going to the last round (so every trial of a comparison
    trains ``warmup.steps + planned_adapt_steps`` in all, whatever its round count)."""
    total, rounds = cfg.adapt.total_steps, cfg.selection.rounds
    if not 1 <= round_index <= rounds:
        raise ValueError(f"round {round_index} is not one of the trial's {rounds} rounds")
    if not total:
        return cfg.adapt.steps
    share = total // rounds
    return share + (total - share * rounds if round_index == rounds else 0)


def model_identity(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into the configured model (a plain dict: it is saved
    in the checkpoint)."""
    identity = {"name": cfg.model.name, "width": cfg.model.width, "num_classes": num_classes}
    if cfg.model.name == "deeplabv2_resnet101":  # same tensors, another computation
        identity["deeplabv2_style"] = cfg.model.deeplabv2_style
    return identity


def loss_weights(cfg: ExperimentConfig, mode: str, stage: str = "rounds") -> LossWeights:
    """The adaptation losses in force; source-only training uses none of the target terms.

    ``stage="warmup"`` (an adapt job before round 1, no target label): G adapts with the warm-up's own
    label-free weights (``warmup.adversarial_weight``, ``warmup.confusion_weight``), and LabOR's
    selector with all of its target losses. The soft labels are
    carried through unchanged (their loss needs labeled target pixels, and the source-set estimate
    is taken at the first labeled round).
    """
    a = cfg.adapt
    if mode != "adapt":
        return LossWeights(
            target_ce=0.0,
            soft_label=a.soft_label_weight,
            soft_label_temperature=a.soft_label_temperature,
            soft_label_momentum=a.soft_label_momentum,
        )
    weights = LossWeights(
        target_ce=a.target_ce_weight,
        adversarial=a.adversarial_weight,
        confusion=a.confusion_weight,
        soft_label=a.soft_label_weight,
        soft_label_temperature=a.soft_label_temperature,
        soft_label_momentum=a.soft_label_momentum,
        pseudo_label=a.pseudo_label_weight,
        pseudo_label_portion=a.pseudo_label_portion,
        discrepancy=a.discrepancy_weight,
        num_k=a.num_k,
        pseudo_label_rule=a.pseudo_label_rule,
        soft_label_estimate=a.soft_label_estimate,
    )
    if stage == "warmup":
        # The soft labels pass through untouched (no labeled target pixel uses them yet, and none of
        # their settings may change the warm-up, which all trials share): the module is kept, not updated.
        weights = dataclasses.replace(
            weights,
            adversarial=cfg.warmup.adversarial_weight,
            confusion=cfg.warmup.confusion_weight,
            soft_label=1.0,
            soft_label_estimate=CARRIED,
        )
    return weights


def build_adaptation_models(
    cfg: ExperimentConfig, num_classes: int, weights: LossWeights | None = None
) -> AdaptationModels:
    """G and S always; Dis, theta_D and the soft labels only when their loss is switched on."""
    weights = weights or LossWeights()
    name, width, style = cfg.model.name, cfg.model.width, cfg.model.deeplabv2_style
    pretrained = pretrained_weights_file(cfg)  # 'imagenet' and s3:// weights: fetched once per node
    torch.manual_seed(cfg.seed)  # identical initial weights on every worker and every run
    models = AdaptationModels(
        segmenter=build_model(name, num_classes, width, 1, pretrained, style),
        selector=build_model(name, num_classes, width, SELECTOR_HEADS, pretrained, style),
    )
    adv = cfg.adapt
    if weights.adversarial > 0:
        models.discriminator = OutputSpaceDiscriminator(num_classes, width=adv.discriminator_width)
    if weights.confusion > 0:
        models.domain_classifier = DomainClassifier(
            models.segmenter.feature_channels, width=adv.domain_classifier_width
        )
    if weights.soft_label > 0:
        models.soft_labels = SoftLabels(num_classes)
    if weights.pseudo_label > 0 and weights.pseudo_label_rule == "iast":
        models.pseudo_labeler = IASTPseudoLabels(
            num_classes, alpha=adv.iast_alpha, gamma=adv.iast_gamma, momentum=adv.iast_momentum
        )
    return models


def _make_optimizer(groups: list[dict], section: TrainingStageConfig) -> torch.optim.Optimizer:
    """SGD with momentum (AdaptSegNet, RIPU, MCD_DA) or Adam, with the section's weight decay."""
    if section.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=section.momentum, weight_decay=section.weight_decay)
    return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=section.weight_decay)


def _param_groups(network: torch.nn.Module, section: TrainingStageConfig, part: str = "all") -> list[dict]:
    """Trainable parameters of a ``MultiHeadSegmenter`` with their learning rates: the heads (the
    pixel classifiers) at ``head_lr_factor`` x lr, as the references' 10x classifier rate."""
    lr, factor = section.lr, section.head_lr_factor
    backbone = [p for p in network.backbone_parameters() if p.requires_grad]
    heads = [p for p in network.head_parameters() if p.requires_grad]
    if part == "backbone":
        return [{"params": backbone, "lr": lr}]
    if part == "heads":
        return [{"params": heads, "lr": lr * factor}]
    if factor == 1.0:  # one group, as checkpoints written before head_lr_factor existed
        return [{"params": backbone + heads, "lr": lr}]
    return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * factor}]


def build_optimizers(models: AdaptationModels, cfg: ExperimentConfig, mode: str) -> Optimizers:
    """G and S: the section's optimizer (``adam`` or ``sgd``); Dis: Adam with betas (0.9, 0.99) as
    AdaptSegNet; theta_D: Adam. Learning rates here are the base rates; ``apply_lr_schedule`` scales
    every group of every optimizer by the stage's polynomial factor before each step."""
    section = stage_section(cfg, mode)
    segmenter = getattr(models.segmenter, "module", models.segmenter)
    selector = getattr(models.selector, "module", models.selector)
    adv = cfg.adapt
    return Optimizers(
        segmenter=_make_optimizer(_param_groups(segmenter, section), section),
        selector_backbone=_make_optimizer(_param_groups(selector, section, "backbone"), section),
        selector_heads=_make_optimizer(_param_groups(selector, section, "heads"), section),
        discriminator=(
            torch.optim.Adam(models.discriminator.parameters(), lr=adv.discriminator_lr, betas=(0.9, 0.99))
            if models.discriminator is not None
            else None
        ),
        domain_classifier=(
            torch.optim.Adam(models.domain_classifier.parameters(), lr=adv.domain_classifier_lr)
            if models.domain_classifier is not None
            else None
        ),
    )


@torch.no_grad()
def source_set_soft_label_totals(
    segmenter: torch.nn.Module,
    soft_labels: SoftLabels,
    dataset,
    indices: list[int],
    temperature: float,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """``SoftLabels.class_totals`` summed over ``dataset[indices]`` (G in eval mode): (K, K + 1)."""
    was_training = segmenter.training
    segmenter.eval()
    totals = torch.zeros(soft_labels.num_classes, soft_labels.num_classes + 1, device=device)
    for start in range(0, len(indices), max(1, batch_size)):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images, labels = torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])
        logits = segmenter(images.to(device))[0]
        totals += soft_labels.class_totals(logits.float(), labels.to(device), temperature)
    segmenter.train(was_training)
    return totals


def lr_schedule_span(cfg: ExperimentConfig, mode: str) -> tuple[int, int]:
    """(first global step, steps the decay spans) of the training stage whose learning rates decay together.

    Source training is one stage (``source.steps``, none when ``source.checkpoint`` gives the model);
    adaptation is the other, the label-free warm-up and all rounds: it starts where source training
    ended and is planned for ``warmup.steps`` + the rounds' steps (``planned_adapt_steps``: the
    references decay over one run of training that acquires labels in between, RIPU's after 10k
    label-free iterations). ``lr_decay_steps`` > 0 replaces the planned length, as the references
    decay over more steps than they train. This is the one place where a new stage must be counted.
    """
    source_steps = 0 if cfg.source.checkpoint else cfg.source.steps
    planned = source_steps if mode == "source" else cfg.warmup.steps + planned_adapt_steps(cfg)
    first = 0 if mode == "source" else source_steps
    return first, stage_section(cfg, mode).lr_decay_steps or planned


def poly_lr_factor(global_step: int, first: int, planned: int, power: float) -> float:
    """(1 - (global_step - first) / planned) ^ power, progress clamped to [0, 1] (AdaptSegNet's and
    RIPU's ``lr_poly``); 1 when ``power`` is 0. A pure function of the step: a resumed job, or the next
    round, continues the same curve."""
    if power == 0 or planned <= 0:
        return 1.0
    progress = min(max((global_step - first) / planned, 0.0), 1.0)
    return (1.0 - progress) ** power


def base_learning_rates(optimizers: Optimizers) -> dict[str, list[float]]:
    """Each optimizer's group learning rates as configured (before a checkpoint's state is loaded)."""
    return {
        name: [group["lr"] for group in opt.param_groups] for name, opt in vars(optimizers).items() if opt is not None
    }


def apply_lr_schedule(optimizers: Optimizers, base: dict[str, list[float]], factor: float) -> None:
    for name, rates in base.items():
        for group, rate in zip(getattr(optimizers, name).param_groups, rates):
            group["lr"] = rate * factor


def load_given_source_model(models: AdaptationModels, cfg: ExperimentConfig) -> None:
    """``source.checkpoint`` as the source model: all of G, and S's backbone (S's two heads keep their
    own seeded initial weights: two copies of one classifier would never disagree, and MCD starts
    its two classifiers from different random weights). Raises ``StartCheckpointError`` naming the
    first key that does not fit."""
    path, name = cfg.source.checkpoint, cfg.model.name
    load_start_checkpoint(models.segmenter, path, name)
    load_start_checkpoint(models.selector, path, name, include_heads=False)


def check_given_source_model(cfg: ExperimentConfig, num_classes: int) -> None:
    """Build G on the CPU and load ``source.checkpoint`` into it, so that a file that does not fit is
    refused before anything starts (no-op when the key is empty)."""
    if cfg.source.checkpoint:
        model = build_model(cfg.model.name, num_classes, cfg.model.width, 1, "", cfg.model.deeplabv2_style)
        load_start_checkpoint(model, cfg.source.checkpoint, cfg.model.name)


def _module_states(models: AdaptationModels) -> dict[str, dict]:
    out = {}
    for name in MODULES:
        module = getattr(models, name)
        if module is not None:
            out[name] = getattr(module, "module", module).state_dict()
    return out


def load_models(
    checkpoint_dir: str, cfg: ExperimentConfig, num_classes: int, weights: LossWeights | None = None
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


@dataclass(frozen=True)
class Placement:
    """Where one worker runs: its rank among ``world`` workers and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def use_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and self.world > 1

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA; a no-op on the CPU."""
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.use_gpu)

    def shard(self, size: int) -> list[int]:
        """This worker's items of ``size``: every world-th one (no padding, no duplicates)."""
        return list(range(self.rank, size, self.world))


def start_state(job: TrainJob, resume_state: dict | None, num_classes: int) -> dict | None:
    """What the job continues from: ``resume_state`` (this same job, after a worker failure), else
    ``job.init_checkpoint`` (the previous round or the source model), else nothing."""
    if resume_state is not None:
        return resume_state
    if job.init_checkpoint:
        return load_checkpoint(job.init_checkpoint, model_identity(job.config, num_classes))
    return None


def ready_models(
    job: TrainJob,
    num_classes: int,
    weights: LossWeights,
    start: dict | None,
    resumed: bool,
    where: Placement,
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module],
) -> AdaptationModels:
    """The job's modules, restored from ``start`` (a given source model loaded unless ``resumed``), on
    the worker's device (channels_last on CUDA), networks wrapped by ``prepare_model`` to train."""
    models = build_adaptation_models(job.config, num_classes, weights)
    if start is not None:
        _restore_modules(models, start)
    if job.given_source_model and not resumed:
        load_given_source_model(models, job.config)
    for name in MODULES:
        module = getattr(models, name)
        if module is None:
            continue
        module.to(where.device)
        if where.use_gpu and name not in STATE_MODULES:
            module.to(memory_format=torch.channels_last)
        if name not in STATE_MODULES and job.mode != "evaluate":
            setattr(models, name, prepare_model(module))
    return models


class Trajectory:
    """One job's training on one worker: models, optimizers, the learning-rate schedule and the
    counters a checkpoint holds (global and job step, loss sums, whether the soft labels are fixed),
    continued from ``start`` / ``resume_state`` exactly where they stopped."""

    def __init__(
        self, job: TrainJob, models: AdaptationModels, num_classes: int, start: dict | None, resume_state: dict | None
    ):
        cfg, mode = job.config, job.mode
        self.job, self.models, self.num_classes = job, models, num_classes
        self.global_step = int(start.get("global_step", 0)) if start is not None else 0
        self.job_step = int(resume_state.get("job_step", 0)) if resume_state is not None else 0
        self.start_step = self.job_step
        self.optimizers = build_optimizers(models, cfg, mode) if mode != "evaluate" else None
        self.base_lrs = base_learning_rates(self.optimizers) if self.optimizers is not None else {}
        self.schedule_first, self.schedule_planned = lr_schedule_span(cfg, mode)
        # Optimizer state carries over within a mode (next round, or a resumed job), not from source to adapt.
        if start is not None and self.optimizers is not None and start.get("mode") == mode and "optimizers" in start:
            self.optimizers.load_state_dict(start["optimizers"])
        if resume_state is not None and "rng" in resume_state:
            torch.set_rng_state(resume_state["rng"])
        self.soft_labels_fixed = bool(start.get("soft_labels_fixed", False)) if start is not None else False
        # A resumed job continues its loss sums too, so its reported means are those of an uninterrupted job.
        self.loss_sums: dict[str, float] = dict(resume_state.get("loss_sums", {})) if resume_state is not None else {}

    def state(self) -> dict[str, Any]:
        """The checkpoint of this job as it stands: everything that decides the rest of its trajectory."""
        return {
            "model": model_identity(self.job.config, self.num_classes),
            "modules": _module_states(self.models),
            "optimizers": self.optimizers.state_dict() if self.optimizers else {},
            "mode": self.job.mode,
            "round": self.job.round,
            "global_step": self.global_step,
            "job_step": self.job_step,
            "rng": torch.get_rng_state(),
            "soft_labels_fixed": self.soft_labels_fixed,
            "loss_sums": dict(self.loss_sums),
        }

    def step(self, source: tuple, target: tuple | None, weights: LossWeights, where: Placement) -> dict[str, float]:
        """One adaptation step at the current global step (its seed and learning rate a function of it)."""
        # Whatever the step itself draws is a function of the step too, so resuming reproduces it.
        torch.manual_seed(self.job.config.seed * 7919 + self.global_step * 31 + where.rank)
        factor = poly_lr_factor(self.global_step, self.schedule_first, self.schedule_planned, self.job.section.lr_power)
        apply_lr_schedule(self.optimizers, self.base_lrs, factor)
        with where.autocast():
            losses = adaptation_step(
                self.models,
                self.optimizers,
                source,
                target,
                weights,
                all_reduce=(lambda t: dist.all_reduce(t)) if where.distributed else None,
                train_selector_network=self.job.trains_selector_network,
            )
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self.global_step += 1
        self.job_step += 1
        return losses


def target_dataset(job: TrainJob, domains) -> SparseTargetDataset | None:
    """An adapt job's target pool with its labels: the revealed pixels (``job.labels``, read image by
    image as they are loaded), or every pool pixel for the oracle reference (None: the pool's own label
    maps). None for other jobs."""
    if job.mode != "adapt":
        return None
    labels = None if job.full_target_labels else job.labels
    return SparseTargetDataset(domains.target_pool, labels, hflip=job.config.data.augment.hflip)


def fix_source_set_soft_labels(trajectory: Trajectory, weights: LossWeights, where: Placement) -> None:
    """Tzeng et al.'s soft-label estimate (``adapt.soft_label_estimate=source_set``): once, over the
    whole source set, with the model the first labeled round starts from (the source model, or the
    warmed-up one); fixed from then on (a no-op once it is, and for other estimates)."""
    models, job = trajectory.models, trajectory.job
    if (
        job.mode != "adapt"
        or weights.soft_label_estimate != "source_set"
        or models.soft_labels is None
        or trajectory.soft_labels_fixed
    ):
        return
    segmenter = getattr(models.segmenter, "module", models.segmenter)
    # The source images as they are (no flips or crops): the paper averages over the examples.
    plain_source = build_domains(dataclasses.replace(job.config.data, augment=NO_AUGMENTATION)).source
    with where.autocast():
        totals = source_set_soft_label_totals(
            segmenter,
            models.soft_labels,
            plain_source,
            where.shard(len(plain_source)),
            weights.soft_label_temperature,
            job.section.batch_size,
            where.device,
        )
    if where.distributed:
        dist.all_reduce(totals)
    models.soft_labels.assign(totals)
    trajectory.soft_labels_fixed = True


def train(
    trajectory: Trajectory,
    domains,
    target_data: SparseTargetDataset | None,
    weights: LossWeights,
    where: Placement,
    on_step: Callable[[int, Callable[[], dict]], None] | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> None:
    """The step loop: the job's remaining steps on batches that are a pure function of (seed, global
    step, rank), so a resumed job sees exactly the batches an uninterrupted one would."""
    job = trajectory.job
    steps, batch_size = job.planned_steps, job.section.batch_size
    remaining = max(0, steps - trajectory.job_step)
    if not remaining:
        return
    first, seed, workers = trajectory.global_step, job.config.seed, job.config.train.loader_workers
    shard_and_loading = (where.rank, where.world, workers, where.use_gpu)
    source_batches = training_loader(
        domains.source, batch_size, first, remaining, seed, SOURCE_STREAM, *shard_and_loading
    )
    target_batches = (
        training_loader(target_data, batch_size, first, remaining, seed, TARGET_STREAM, *shard_and_loading)
        if target_data is not None
        else [None] * remaining
    )
    for source, target in zip(source_batches, target_batches):
        source = tuple(t.to(where.device, non_blocking=True) for t in source)
        if target is not None:
            target = tuple(t.to(where.device, non_blocking=True) for t in target)
        losses = trajectory.step(source, target, weights, where)
        if on_step is not None:
            on_step(trajectory.job_step, trajectory.state)
        if progress is not None:
            progress(trajectory.job_step, steps, losses)


def evaluate(models: AdaptationModels, domains, batch_size: int, workers: int, where: Placement) -> torch.Tensor:
    """G's confusion matrix on the target validation split, summed over workers (each takes every
    world-th image), on the CPU."""
    segmenter = getattr(models.segmenter, "module", models.segmenter)
    with where.autocast():
        confusion = predict_confusion(
            segmenter,
            domains.target_val,
            where.shard(len(domains.target_val)),
            len(domains.classes),
            batch_size=max(1, batch_size),
            device=where.device,
            workers=workers,
        )
    if where.distributed:
        dist.all_reduce(confusion)
    return confusion.cpu()


def job_metrics(
    trajectory: Trajectory, confusion: torch.Tensor, classes, train_seconds: float, world: int, mious=None
) -> dict[str, Any]:
    """Target mIoU and per-class IoU, steps, throughput and the mean of each loss over the job; ``mious``
    (metric name -> class indices, ``ClassSet.miou_indices()``) adds mIoUs over subsets, e.g. ``target/miou13``."""
    steps = trajectory.job.planned_steps
    # train/start_step: where this attempt began (> 0 only when Ray Train restarted it from a checkpoint).
    metrics: dict[str, Any] = {
        "target/miou": mean_iou(confusion),
        "train/steps": steps,
        "train/global_step": trajectory.global_step,
        "train/seconds": train_seconds,
        "train/start_step": trajectory.start_step,
    }
    if steps:
        metrics["train/images_per_s"] = steps * trajectory.job.section.batch_size * world / max(train_seconds, 1e-9)
    for name, value in zip(classes, iou_per_class(confusion).tolist()):
        metrics[f"target/iou/{name}"] = value
    for name, indices in (mious or {}).items():
        metrics[f"target/{name}"] = mean_iou_over(confusion, indices)
    for name, total in trajectory.loss_sums.items():
        metrics[f"train/loss/{name}"] = total / max(steps, 1)
    return metrics


def run_job(
    job: TrainJob,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    resume_state: dict | None = None,
    on_step: Callable[[int, Callable[[], dict]], None] | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> JobResult:
    """Run one job on one worker. ``prepare_model`` wraps modules for data parallelism (DDP).

    ``resume_state`` (a checkpoint of this same job, e.g. after a worker failure) continues where it
    stopped; otherwise ``job.init_checkpoint`` (previous round or source model) is the start.
    ``on_step(done, state_fn)`` is called after every step (for periodic checkpoints);
    ``progress(done, total, losses)`` too (``trainers.progress.StepProgress`` prints at an interval).
    """
    where = Placement(rank, world, device or torch.device("cpu"))
    weights = loss_weights(job.config, job.mode, job.stage)
    domains = build_domains(job.config.data)
    num_classes = len(domains.classes)
    start = start_state(job, resume_state, num_classes)
    models = ready_models(job, num_classes, weights, start, resume_state is not None, where, prepare_model)
    trajectory = Trajectory(job, models, num_classes, start, resume_state)
    target_data = target_dataset(job, domains)
    fix_source_set_soft_labels(trajectory, weights, where)
    started = time.perf_counter()
    train(trajectory, domains, target_data, weights, where, on_step, progress)
    train_seconds = time.perf_counter() - started
    confusion = evaluate(models, domains, job.section.batch_size, job.config.train.loader_workers, where)
    metrics = job_metrics(
        trajectory, confusion, domains.classes, train_seconds, world, domains.class_set.miou_indices()
    )
    return JobResult(metrics=metrics, state=trajectory.state() if job.mode != "evaluate" else None, confusion=confusion)
