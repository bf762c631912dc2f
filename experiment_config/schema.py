"""Typed experiment configuration.

One ``ExperimentConfig`` describes one trial completely. It is loaded from YAML (a partial file is
fine: missing keys keep their defaults), then overridden with ``--set key=value`` pairs, then
validated. Every problem is reported as a ``ConfigError`` whose message is one line that names the
key, what was wrong and what is allowed, e.g.::

    config key 'selection.rule': unknown rule 'labor_pp'; choose one of: labor_ppl

The dataclass defaults *are* the default configuration; ``configs/default.yaml`` spells them out
with comments, and a test keeps the two identical.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

# The selection rules' registry imports no torch: the config validates against it directly.
from pixel_selectors.rules import PPL_RULES, RULES

# Names only (no torch): `--help` must not wait seconds for torch to import. tests/test_choices.py
# keeps these lists equal to the registries that implement them.
from .choices import (
    CLASS_SET_FROM_DATASET,
    CLASS_SETS,
    DEEPLABV2_STYLES,
    EVAL_RESOLUTIONS,
    MODELS,
    PSEUDO_LABEL_RULES,
    REGION_SPREADS,
    SOFT_LABEL_ESTIMATES,
    SOURCE_FORMATS,
    SPLITS,
    TARGET_FORMATS,
)


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line that names the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}" if key else problem)

    def __reduce__(self):  # Ray and Tune pickle exceptions across processes: keep both arguments
        return ConfigError, (self.key, self.problem)


# selection.rule value for adaptation without any target labels (unsupervised adaptation rows).
NO_SELECTION = "none"
# model.pretrained value for torchvision's ImageNet weights of the model's backbone (a name, not a path).
IMAGENET = "imagenet"
# A value with a scheme (s3://, file://) is a URI, never made absolute as a relative path would be.
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
S3_OBJECT = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>[^?#\s]*[^/?#\s])$")


def _opt(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    choices: Collection | None = None,
    path: bool = False,
):
    """A config field with its help text and allowed range, all kept next to the default.

    ``path=True`` marks a file or folder: a relative one is resolved once, in the driver, against the
    directory the command ran in (``with_absolute_paths``), since Ray runs trials elsewhere.
    """
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive, "choices": choices, "path": path}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DomainConfig:
    format: str = _opt(
        "gta5",
        "on-disk layout of this domain ('folder': images, label PNGs and ROOT/dataset.yaml)",
        choices=SOURCE_FORMATS,
    )
    root: str = _opt("", "dataset root ('': the bundled synthetic domain, generated into data.cache_dir)", path=True)
    height: int = _opt(
        0,
        "source images are resized to this height, then cropped to data.height x data.width "
        "(0 with width set: each image's aspect ratio; both 0: data.height x data.width)",
        min=0,
    )
    width: int = _opt(
        0,
        "source images are resized to this width (0 with height set: each image's aspect ratio; "
        "AdaptSegNet and RIPU: GTA5 at 1280x720)",
        min=0,
    )


@dataclass
class TargetDomainConfig:
    format: str = _opt(
        "cityscapes",
        "on-disk layout of this domain ('folder': images, label PNGs and ROOT/dataset.yaml)",
        choices=TARGET_FORMATS,
    )
    root: str = _opt("", "dataset root ('': the bundled synthetic domain, generated into data.cache_dir)", path=True)
    pool_split: str = _opt("train", "split whose images form the unlabeled pool", choices=SPLITS)
    val_split: str = _opt("val", "split on which target mIoU is measured", choices=SPLITS)


@dataclass
class SyntheticConfig:
    source_images: int = _opt(96, "generated source (game-style) images", min=1)
    target_train_images: int = _opt(64, "generated target (camera-style) pool images", min=1)
    target_val_images: int = _opt(32, "generated target validation images", min=1)
    seed: int = _opt(0, "seed of the procedural domain generator", min=0)
    difficulty: float = _opt(1.0, "strength of the target style (0: source-like, 1: default)", min=0.0, max=2.0)
    version: int = _opt(
        4,
        "generator version: 4 (13 classes, textured, several looks per class, long-tailed; "
        "data.class_set synthetic_v2), 3 (version 4's scenes with traffic lights in a pole's or a sign's "
        "colours), 2 (version 3's with walls that share a facade's look) or 1 (the earlier 9 flat-coloured "
        "classes; data.class_set synthetic); 1-3 are kept so earlier results reproduce",
        min=1,
        max=4,
    )


@dataclass
class AugmentConfig:
    hflip: bool = _opt(True, "random horizontal flips of source and target training images")
    scale_min: float = _opt(1.0, "random rescale range, low end (1 and 1: no rescaling)", min=0.1)
    scale_max: float = _opt(1.0, "random rescale range, high end; crops back to data.height x data.width", min=0.1)


@dataclass
class DataConfig:
    class_set: str = _opt(
        "synthetic_v2",
        "classes every dataset is mapped into, by name: a named set of the target dataset's classes, or "
        "'dataset' for the classes of the target's dataset YAML",
        choices=(*CLASS_SETS, CLASS_SET_FROM_DATASET),
    )
    height: int = _opt(
        64,
        "target image height for training, selection and evaluation input (images are "
        "resized; source images are cropped to it)",
        min=16,
    )
    width: int = _opt(128, "target image width for training, selection and evaluation input", min=16)
    source: DomainConfig = field(default_factory=DomainConfig)
    target: TargetDomainConfig = field(default_factory=TargetDomainConfig)
    pool_images: int = _opt(
        0, "use N target pool images drawn across the whole split with data.subset_seed (0: all)", min=0
    )
    val_images: int = _opt(0, "use N target validation images drawn across the whole split (0: all)", min=0)
    eval_resolution: str = _opt(
        "native",
        "where target mIoU is scored: 'native' (each label at its own size, the "
        "prediction upsampled: the papers' protocol) or 'input' (labels resized to "
        "data.height x data.width)",
        choices=dict.fromkeys(EVAL_RESOLUTIONS),
    )
    subset_seed: int = _opt(
        0, "seed of the pool_images / val_images draw (the same subset for every trial seed)", min=0
    )
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_dir: str = _opt("data", "where generated synthetic domains are cached", path=True)


@dataclass
class ModelConfig:
    name: str = _opt("small_segnet", "segmentation network", choices=MODELS)
    width: int = _opt(16, "base channel width of small_segnet (ignored by the DeepLab models)", min=4)
    pretrained: str = _opt(
        "",
        "initial backbone weights of the DeepLab models: 'imagenet' (torchvision's ImageNet weights "
        "through its weights API, downloaded once per node into model.weights_cache), a model file, "
        "file://PATH, or s3://bucket/key (fetched with storage.endpoint and storage.region, cached per "
        "node); '': none, random weights (refused for these models unless model.allow_random_init)",
        path=True,
    )
    weights_cache: str = _opt(
        "",
        "per-node folder where 'imagenet' and s3:// weights are kept after their first download "
        "('': torch hub's, $TORCH_HOME/hub/checkpoints)",
        path=True,
    )
    allow_random_init: bool = _opt(
        False,
        "let a DeepLab model train from random backbone weights (model.pretrained '' and no "
        "source.checkpoint: tests, CPU demos); otherwise the sweep and run refuse it before any work",
    )
    deeplabv2_style: str = _opt(
        "ripu",
        "deeplabv2_resnet101's layout: 'ripu' (torchvision ResNet-101, ImageNet RGB "
        "input, 4 ASPP branches) or 'adaptsegnet' (AdaptSegNet's released code: "
        "Caffe BGR input, 2 ASPP branches summed; for its checkpoints)",
        choices=dict.fromkeys(DEEPLABV2_STYLES),
    )


OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainingStageConfig:
    """What ``source`` and ``adapt`` share: steps, batch and the optimizer of G and the selector network S
    (``trainers.engine.build_optimizers``); each section redefines the first three with its defaults."""

    steps: int = _opt(1, "optimizer steps", min=1)
    batch_size: int = _opt(1, "images per step per Train worker", min=1)
    lr: float = _opt(1e-3, "learning rate of G and the selector network S", min=0.0, min_exclusive=True)
    optimizer: str = _opt(
        "adam",
        "optimizer of G and the selector network S: 'adam' or 'sgd' (SGD with momentum, as AdaptSegNet and RIPU)",
        choices=dict.fromkeys(OPTIMIZERS),
    )
    momentum: float = _opt(0.9, "SGD momentum (optimizer: sgd)", min=0.0, max=1.0)
    weight_decay: float = _opt(0.0, "L2 weight decay of G and the selector network S (the references: 5e-4)", min=0.0)
    lr_power: float = _opt(
        0.0,
        "polynomial learning-rate decay: lr x (1 - step / planned steps) ^ lr_power, on "
        "every optimizer of the stage (0: constant; the references: 0.9)",
        min=0.0,
    )
    head_lr_factor: float = _opt(
        1.0,
        "learning rate of the pixel classifiers (heads) over the backbone's (the references: 10)",
        min=0.0,
        min_exclusive=True,
    )
    lr_decay_steps: int = _opt(
        0,
        "steps the polynomial decay spans (0: the stage's planned steps; the references "
        "decay over more than they train: AdaptSegNet 250000 for 150000, RIPU 62500 for "
        "40000)",
        min=0,
    )


@dataclass
class SourceTrainingConfig(TrainingStageConfig):
    steps: int = _opt(400, "optimizer steps of source-only training (once per sweep, cached)", min=1)
    batch_size: int = _opt(8, "images per step per Train worker", min=1)
    lr: float = _opt(2e-3, "learning rate of G and the selector network S", min=0.0, min_exclusive=True)
    checkpoint: str = _opt(
        "",
        "model file (a plain state dict; key mapping in docs/protocol.md) to use as the source "
        "model G instead of training one ('': train it)",
        path=True,
    )


@dataclass
class AdaptConfig(TrainingStageConfig):
    steps: int = _opt(300, "optimizer steps of adaptation training per round", min=1)
    batch_size: int = _opt(4, "source images, and as many target images, per step per Train worker", min=1)
    lr: float = _opt(1e-3, "learning rate of G and the selector network S", min=0.0, min_exclusive=True)
    target_ce_weight: float = _opt(1.0, "weight of the sparse labeled-target cross-entropy", min=0.0)
    adversarial_weight: float = _opt(0.001, "AdaptSeg output-space adversarial loss weight (0: off)", min=0.0)
    discriminator_lr: float = _opt(
        1e-4, "Adam learning rate of the output-space discriminator", min=0.0, min_exclusive=True
    )
    discriminator_width: int = _opt(16, "base width of the output-space discriminator", min=1)
    confusion_weight: float = _opt(0.1, "Tzeng domain confusion weight lambda (0: off)", min=0.0)
    domain_classifier_lr: float = _opt(
        1e-3, "Adam learning rate of Tzeng's domain classifier", min=0.0, min_exclusive=True
    )
    domain_classifier_width: int = _opt(32, "hidden width of Tzeng's domain classifier", min=1)
    soft_label_weight: float = _opt(0.1, "Tzeng soft-label loss weight nu (0: off)", min=0.0)
    soft_label_temperature: float = _opt(2.0, "Tzeng soft-label temperature tau", min=0.0, min_exclusive=True)
    soft_label_momentum: float = _opt(0.99, "moving-average momentum of the soft-label estimate", min=0.0, max=1.0)
    pseudo_label_weight: float = _opt(1.0, "LabOR selector heads: pseudo-label loss weight (0: off)", min=0.0)
    pseudo_label_portion: float = _opt(
        0.5, "share of each class's most confident pixels kept as pseudo labels", min=0.0, max=1.0, min_exclusive=True
    )
    discrepancy_weight: float = _opt(1.0, "LabOR selector heads: MCD discrepancy weight (0: off)", min=0.0)
    selector_source_ce: bool = _opt(
        False,
        "LabOR's selector network S also learns the source labels (CE on source, as MCD's step A) "
        "after source training; false: the paper's description, S learns the target from G's "
        "pseudo labels (and the labeled target pixels)",
    )
    selector_backbone_step: bool = _opt(
        False,
        "S's backbone F also minimises the heads' discrepancy, adapt.num_k times per step (MCD's "
        "step C, min-max); false: the paper's description, only the heads maximise it",
    )
    checkpoint_every: int = _opt(0, "also checkpoint every N steps within a round (0: only at the end)", min=0)
    total_steps: int = _opt(
        0,
        "adaptation steps of all rounds together, split evenly over selection.rounds (the "
        "remainder in the last round), so trials with different round counts train equally "
        "long; 0: adapt.steps in every round",
        min=0,
    )
    num_k: int = _opt(
        4,
        "MCD: backbone (F) discrepancy updates per step of LabOR's selector network S (MCD_DA's num_k), "
        "with adapt.selector_backbone_step",
        min=1,
    )
    pseudo_label_rule: str = _opt(
        "iast",
        "pseudo labels of G for LabOR's selector network S: 'iast' (IAST's instance-adaptive "
        "class thresholds, as LabOR) or 'class_balanced' (each class's most "
        "confident adapt.pseudo_label_portion of the batch, CBST-like)",
        choices=dict.fromkeys(PSEUDO_LABEL_RULES),
    )
    iast_alpha: float = _opt(
        0.2,
        "IAST: share of each class's pixels an image keeps at threshold 1 (alpha)",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    iast_gamma: float = _opt(8.0, "IAST: how fast a confident class keeps a larger share (gamma)", min=0.0)
    iast_momentum: float = _opt(
        0.9, "IAST: momentum of the class thresholds from image to image (beta)", min=0.0, max=1.0
    )
    soft_label_estimate: str = _opt(
        "running",
        "Tzeng soft labels from: 'running' (moving average over source "
        "training batches) or 'source_set' (one pass over the whole source "
        "set with the model the first labeled round starts from, then "
        "fixed: the paper)",
        choices=dict.fromkeys(SOFT_LABEL_ESTIMATES),
    )


@dataclass
class WarmupConfig(TrainingStageConfig):
    """LabOR's label-free start, in the paper's order (its Fig. 2): G adapts first (``steps``, AdaptSeg's
    output-space adversarial training with its own optimizer and schedule), then LabOR's selector
    network S learns the target from the frozen, warmed-up G's pseudo labels (``selector_steps``).
    The defaults are AdaptSegNet's recipe, the learning rate scaled to the bundled domains."""

    steps: int = _opt(
        300,
        "label-free adaptation steps of G before round 1 (cached per setting, shared by every trial): "
        "G adapts with the warm-up's losses and optimizer, then LabOR's selector network S learns "
        "the target from the frozen G's pseudo labels (warmup.selector_steps), so round 1 ranks with "
        "a selector network S that has seen the target (LabOR's order); 0: no warm-up, round 1 "
        "ranks with the source model",
        min=0,
    )
    batch_size: int = _opt(4, "source images, and as many target images, per warm-up step per Train worker", min=1)
    lr: float = _opt(
        2.5e-3,
        "learning rate of G in the warm-up (AdaptSegNet: 2.5e-4 for DeepLab-V2 at batch 1 over 150000 "
        "steps; the bundled default is 10x that, for a small network trained from scratch in 300 "
        "steps instead of 150000)",
        min=0.0,
        min_exclusive=True,
    )
    optimizer: str = _opt(
        "sgd",
        "optimizer of G in the warm-up: 'sgd' (SGD with momentum, as AdaptSegNet) or 'adam'",
        choices=dict.fromkeys(OPTIMIZERS),
    )
    momentum: float = _opt(0.9, "SGD momentum of G in the warm-up (AdaptSegNet: 0.9)", min=0.0, max=1.0)
    weight_decay: float = _opt(5e-4, "L2 weight decay of G in the warm-up (AdaptSegNet: 5e-4)", min=0.0)
    lr_power: float = _opt(
        0.9,
        "polynomial decay of G's and the discriminator's learning rates over the warm-up's G "
        "steps: lr x (1 - step / steps) ^ lr_power (AdaptSegNet: 0.9; 0: constant)",
        min=0.0,
    )
    head_lr_factor: float = _opt(
        10.0,
        "learning rate of G's pixel classifier over its backbone's in the warm-up (AdaptSegNet: 10)",
        min=0.0,
        min_exclusive=True,
    )
    lr_decay_steps: int = _opt(
        0,
        "steps the warm-up's decay spans (0: warmup.steps; AdaptSegNet decays over 250000 for 150000 trained)",
        min=0,
    )
    adversarial_weight: float = _opt(
        0.01,
        "G's AdaptSeg output-space adversarial loss in the warm-up (LabOR's UDA model; AdaptSegNet and the "
        "paper configs: 0.001 at the output level; the bundled default 10x that, for 300 steps; 0: off)",
        min=0.0,
    )
    discriminator_lr: float = _opt(
        1e-4,
        "Adam learning rate of the warm-up's output-space discriminator (betas 0.9, 0.99; decays with "
        "G's; AdaptSegNet: 1e-4)",
        min=0.0,
        min_exclusive=True,
    )
    discriminator_width: int = _opt(
        64, "base width of the warm-up's output-space discriminator (AdaptSegNet: ndf = 64)", min=1
    )
    confusion_weight: float = _opt(0.0, "G's Tzeng domain confusion in the warm-up (0: off)", min=0.0)
    selector_steps: int = _opt(
        300,
        "steps of LabOR's selector network S after G's warm-up, on the frozen, warmed-up G's pseudo "
        "labels (G is not updated), with adapt's optimizer; 0: S keeps the source model's weights "
        "(LabOR's first selection then ranks with an S that has never seen the target)",
        min=0,
    )


@dataclass
class SelectionConfig:
    rule: str = _opt(
        "labor_ppl",
        "selection rule ('none': no target labels, i.e. unsupervised adaptation)",
        choices=(*RULES, NO_SELECTION),
    )
    points_per_image: int = _opt(10, "points per target image per round (point rules, budget_fraction 0)", min=1)
    budget_fraction: float = _opt(
        0.0,
        "pixels per round as a fraction of all pool pixels, spent across the pool "
        "(region rules need it; point rules use it instead of "
        "points_per_image when > 0)",
        min=0.0,
        max=1.0,
    )
    region_size: int = _opt(
        3, "side of the square regions of region_impurity_regions and random_regions (RIPU's regions: 3)", min=1
    )
    region_spread: str = _opt(
        "share",
        "how a region rule's pixel budget spreads over the pool: 'share' (every "
        "image the same share of its own candidates, best first; LabOR SPL: of its "
        "inconsistency mask; squares: of its unlabeled pixels) or 'score' (the "
        "best-scored regions wherever they are)",
        choices=REGION_SPREADS,
    )
    rounds: int = _opt(1, "rank -> label -> adapt -> evaluate rounds per trial", min=1)
    oracle: str = _opt(
        "simulated",
        "who labels: 'simulated' (ground truth) or 'human' (export queries, import "
        "answers with python -m orchestrator.annotate, then --resume)",
        choices={"simulated": None, "human": None},
    )
    point_window: int = _opt(
        0,
        "side of region_impurity's window (RIPU points: the impurity window and the area "
        "each chosen point blocks, in this and later rounds); 0: RIPU's 65 at 2048 pixels "
        "wide, scaled to data.width",
        min=0,
    )
    spl_mode: str = _opt(
        "budget",
        "labor_spl: 'budget' (selection.budget_fraction of the pool per round) or "
        "'whole_mask' (every pixel of every image's inconsistency mask, as the paper; the "
        "cost, in pixels and clicks, is the outcome)",
        choices={"budget": None, "whole_mask": None},
    )
    ppl_rule: str = _opt(
        "per_piece",
        "labor_ppl: where its points go: 'per_piece' (one point per piece of the "
        "inconsistency mask -- predicted class, 8-connected -- at the pixel nearest the "
        "piece's mean probability; every piece one point before any gets a second, "
        "largest pieces first: the paper's reading) or 'nearest_k' (each class's pixels "
        "nearest one prototype per class; they pile up on one spot)",
        choices=dict.fromkeys(PPL_RULES),
    )
    ppl_mode: str = _opt(
        "budget",
        "labor_ppl and random: 'budget' (selection.points_per_image per image per round) or "
        "'whole_mask' (one point per piece of LabOR's inconsistency mask in each image, the "
        "count the outcome, as the paper; random then buys as many random points per "
        "image, the pieces counted with the same selector network)",
        choices={"budget": None, "whole_mask": None},
    )
    unlabeled_classes: list = _opt(
        [],
        "class names the oracle never labels (selected pixels of these classes "
        "stay unlabeled): Tzeng et al.'s semi-supervised case, where soft labels "
        "must carry those classes",
    )


@dataclass
class RankingConfig:
    num_actors: int = _opt(2, "Ray actors that rank the target pool in parallel", min=1)
    cpus_per_actor: float = _opt(1.0, "CPUs reserved by each ranking actor", min=0.0, min_exclusive=True)
    gpus_per_actor: float = _opt(0.0, "GPUs reserved by each ranking actor", min=0.0)
    images_per_shard: int = _opt(8, "target images handed to an actor at a time", min=1)
    max_actor_restarts: int = _opt(3, "ranking actors that may die in a round (their shards are re-ranked)", min=0)


@dataclass
class TrainConfig:
    num_workers: int = _opt(1, "Ray Train workers (data parallel)", min=1)
    use_gpu: bool = _opt(False, "train on CUDA (one GPU per worker, bf16 autocast)")
    cpus_per_worker: float = _opt(1.0, "CPUs reserved by each Train worker", min=0.0, min_exclusive=True)
    torch_threads: int = _opt(0, "intra-op threads per Train worker (0: one per reserved CPU)", min=0)
    loader_workers: int = _opt(
        0,
        "DataLoader worker processes of each Train worker's source, target and evaluation "
        "loaders, each (0: load in the training process; with a GPU, leave a few CPUs "
        "per worker for them)",
        min=0,
    )
    max_failures: int = _opt(2, "worker-group failures a training job survives (restarting from its checkpoint)", min=0)
    progress_every_s: float = _opt(
        30.0,
        "print steps, losses, images/s and the time left of a training job every N "
        "seconds, from its first Train worker (0: off)",
        min=0.0,
    )


@dataclass
class SweepConfig:
    name: str = _opt("activeda", "sweep name: the MLflow experiment and the output folder")
    num_samples: int = _opt(1, "samples of the search space (grid axes are crossed with each)", min=1)
    max_concurrent: int = _opt(0, "trials at once (0: as many as the cluster fits)", min=0)
    scheduler: str = _opt(
        "fifo", "trial scheduler on target mIoU per round", choices={"fifo": None, "asha": None, "pbt": None}
    )
    grace_rounds: int = _opt(1, "ASHA: rounds every trial runs before it may be stopped", min=1)
    trial_retries: int = _opt(
        2,
        "times a failed trial starts again from its last finished round (its bought "
        "labels kept) before it counts as failed",
        min=0,
    )
    oracle_reference: bool = _opt(
        True,
        "also adapt once with every pool pixel labeled (cached): the ceiling "
        "drawn in the budget curve and the denominator of 'gap closed'",
    )
    search_space: dict = _opt(
        {"selection.points_per_image": {"grid": [5, 10, 20]}},
        "config key -> {grid|choice: [values]} or {uniform|loguniform|randint: [low, high]}",
    )


@dataclass
class TrackingConfig:
    uri: str = _opt("", "MLflow tracking URI ('' : $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


@dataclass
class StorageConfig:
    uri: str = _opt(
        "",
        "cluster-wide storage of checkpoints, Tune state, label stores and model caches: "
        "s3://bucket/prefix ('': output_dir, which a cluster must mount on every node)",
    )
    endpoint: str = _opt("", "S3-compatible server for storage.uri, e.g. http://10.0.0.5:9000 ('': AWS S3)")
    region: str = _opt("", "region of the storage.uri bucket ('': looked up from the bucket)")


S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?P<prefix>(/[^/?#\s]+)*)/?$")
S3_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?/?$")
AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def storage_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a usable ``storage.uri`` (None when it is)."""
    if uri == "" or S3_URI.match(uri):
        return None
    return f"must be s3://bucket/prefix ('' keeps everything under output_dir), got {uri!r}"


@dataclass
class ExperimentConfig:
    seed: int = _opt(0, "seed of training and selection", min=0)
    output_dir: str = _opt("runs", "where checkpoints, label stores and Ray results go", path=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceTrainingConfig = field(default_factory=SourceTrainingConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Flattened ``{"section.key": value}``; the search space is left out (it is not a value)."""
        out: dict[str, Any] = {}
        for key, value in _walk(self):
            if key != "sweep.search_space":
                out[key] = value
        return out

    def hash(self, *sections: str) -> str:
        """A stable short hash of the named sections (all when none), for caching by content."""
        data = self.to_dict()
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Overrides that --smoke applies on top of the chosen config: the whole distributed path, tiny.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.height": 32,
    "data.width": 64,
    "data.synthetic.source_images": 16,
    "data.synthetic.target_train_images": 8,
    "data.synthetic.target_val_images": 8,
    "model.width": 8,
    "source.steps": 20,
    "source.batch_size": 4,
    "adapt.steps": 10,
    "adapt.batch_size": 2,
    "warmup.steps": 0,  # the warm-up is one more Ray Train job; --set warmup.steps=5 runs it
    "warmup.selector_steps": 5,  # (and then S's 5 steps on the frozen G)
    "selection.points_per_image": 5,
    "ranking.num_actors": 1,
    "ranking.images_per_shard": 4,
    "sweep.name": "smoke",
    "sweep.oracle_reference": False,
    "sweep.search_space": {"selection.points_per_image": {"grid": [2, 5]}},
}

SEARCH_SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
# A search-space axis whose values are bundles of config keys set together, e.g.
# cases: {grid: [{selection.rule: labor_spl, selection.budget_fraction: 0.022}, ...]}:
# for sweeps that are not a cross product (each rule with its own kind of budget).
CASES_AXIS = "cases"


def _walk(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{key}.")
        else:
            yield key, value


def field_meta(cfg: ExperimentConfig) -> dict[str, tuple[dataclasses.Field, Any]]:
    out = {}

    def visit(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                visit(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = (f, value)

    visit(cfg, "")
    return out


def path_keys() -> tuple[str, ...]:
    """Every config key marked ``path=True``: the one list of keys that name files or folders."""
    return tuple(key for key, (f, _) in field_meta(ExperimentConfig()).items() if f.metadata.get("path"))


def get_key(cfg: ExperimentConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
