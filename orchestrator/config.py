"""Typed experiment configuration.

One ``ExperimentConfig`` describes one trial completely. It is loaded from YAML (a partial file is
fine: missing keys keep their defaults), then overridden with ``--set key=value`` pairs, then
validated. Every problem is reported as a ``ConfigError`` whose message is one line that names the
key, what was wrong and what is allowed, e.g.::

    config key 'selection.selector': unknown selector 'labor_pp'; choose one of: labor_ppl

The dataclass defaults *are* the default configuration; ``configs/default.yaml`` spells them out
with comments, and a test keeps the two identical.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

import yaml

# Names only (no torch): `--help` must not wait seconds for torch to import. tests/test_choices.py
# keeps these lists equal to the registries that implement them.
from .choices import (CLASS_SETS, DEEPLABV2_STYLES, EVAL_RESOLUTIONS, MIN_BATCH_SIZE, MODELS, PSEUDO_LABEL_RULES,
                      REGION_SPREADS, SELECTOR_KIND, SELECTORS, SOFT_LABEL_ESTIMATES, SOURCE_FORMATS, SPLITS,
                      TARGET_FORMATS)


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line that names the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}" if key else problem)

    def __reduce__(self):  # Ray and Tune pickle exceptions across processes: keep both arguments
        return ConfigError, (self.key, self.problem)


# selection.selector value for adaptation without any target labels (unsupervised adaptation rows).
NO_SELECTION = "none"


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False, choices: Collection | None = None, path: bool = False):
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
    format: str = _opt("gta5", "on-disk layout of this domain", choices=SOURCE_FORMATS)
    root: str = _opt("", "dataset root ('': the bundled synthetic domain, generated into data.cache_dir)", path=True)
    height: int = _opt(0, "source images are resized to this height, then cropped to data.height x data.width "
                          "(0 with width set: each image's aspect ratio; both 0: data.height x data.width)", min=0)
    width: int = _opt(0, "source images are resized to this width (0 with height set: each image's aspect ratio; "
                         "AdaptSegNet and RIPU: GTA5 at 1280x720)", min=0)


@dataclass
class TargetDomainConfig:
    format: str = _opt("cityscapes", "on-disk layout of this domain", choices=TARGET_FORMATS)
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


@dataclass
class AugmentConfig:
    hflip: bool = _opt(True, "random horizontal flips of source and target training images")
    scale_min: float = _opt(1.0, "random rescale range, low end (1 and 1: no rescaling)", min=0.1)
    scale_max: float = _opt(1.0, "random rescale range, high end; crops back to data.height x data.width",
                            min=0.1)


@dataclass
class DataConfig:
    class_set: str = _opt("synthetic", "classes every dataset is mapped into", choices=CLASS_SETS)
    height: int = _opt(64, "target image height for training, selection and evaluation input (images are "
                           "resized; source images are cropped to it)", min=16)
    width: int = _opt(128, "target image width for training, selection and evaluation input", min=16)
    source: DomainConfig = field(default_factory=DomainConfig)
    target: TargetDomainConfig = field(default_factory=TargetDomainConfig)
    pool_images: int = _opt(0, "use N target pool images drawn across the whole split with data.subset_seed "
                               "(0: all)", min=0)
    val_images: int = _opt(0, "use N target validation images drawn across the whole split (0: all)", min=0)
    eval_resolution: str = _opt("native", "where target mIoU is scored: 'native' (each label at its own size, the "
                                          "prediction upsampled: the papers' protocol) or 'input' (labels resized to "
                                          "data.height x data.width)", choices=dict.fromkeys(EVAL_RESOLUTIONS))
    subset_seed: int = _opt(0, "seed of the pool_images / val_images draw (the same subset for every trial seed)",
                            min=0)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_dir: str = _opt("data", "where generated synthetic domains are cached", path=True)


@dataclass
class ModelConfig:
    name: str = _opt("small_segnet", "segmentation network", choices=MODELS)
    width: int = _opt(16, "base channel width of small_segnet (ignored by the DeepLab models)", min=4)
    pretrained: str = _opt("", "ImageNet backbone weights for DeepLab models ('': torch hub's cache if present)",
                           path=True)
    deeplabv2_style: str = _opt("ripu", "deeplabv2_resnet101's layout: 'ripu' (torchvision ResNet-101, ImageNet RGB "
                                        "input, 4 ASPP branches) or 'adaptsegnet' (AdaptSegNet's released code: "
                                        "Caffe BGR input, 2 ASPP branches summed; for its checkpoints)",
                                choices=dict.fromkeys(DEEPLABV2_STYLES))


OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainingStageConfig:
    """What ``source`` and ``adapt`` share: steps, batch and the optimizer of G and the selector
    (``trainers.engine.build_optimizers``); each section redefines the first three with its defaults."""

    steps: int = _opt(1, "optimizer steps", min=1)
    batch_size: int = _opt(1, "images per step per Train worker", min=1)
    lr: float = _opt(1e-3, "learning rate of G and the selector", min=0.0, min_exclusive=True)
    optimizer: str = _opt("adam", "optimizer of G and the selector: 'adam' or 'sgd' (SGD with momentum, as "
                                  "AdaptSegNet and RIPU)", choices=dict.fromkeys(OPTIMIZERS))
    momentum: float = _opt(0.9, "SGD momentum (optimizer: sgd)", min=0.0, max=1.0)
    weight_decay: float = _opt(0.0, "L2 weight decay of G and the selector (the references: 5e-4)", min=0.0)
    lr_power: float = _opt(0.0, "polynomial learning-rate decay: lr x (1 - step / planned steps) ^ lr_power, on "
                                "every optimizer of the stage (0: constant; the references: 0.9)", min=0.0)
    head_lr_factor: float = _opt(1.0, "learning rate of the pixel classifiers (heads) over the backbone's (the "
                                      "references: 10)", min=0.0, min_exclusive=True)
    lr_decay_steps: int = _opt(0, "steps the polynomial decay spans (0: the stage's planned steps; the references "
                                  "decay over more than they train: AdaptSegNet 250000 for 150000, RIPU 62500 for "
                                  "40000)", min=0)


@dataclass
class SourceTrainingConfig(TrainingStageConfig):
    steps: int = _opt(400, "optimizer steps of source-only training (once per sweep, cached)", min=1)
    batch_size: int = _opt(8, "images per step per Train worker", min=1)
    lr: float = _opt(2e-3, "learning rate of G and the selector", min=0.0, min_exclusive=True)
    checkpoint: str = _opt("", "model file (a plain state dict; key mapping in docs/protocol.md) to use as the source "
                               "model G instead of training one ('': train it)", path=True)


@dataclass
class AdaptConfig(TrainingStageConfig):
    steps: int = _opt(300, "optimizer steps of adaptation training per round", min=1)
    batch_size: int = _opt(4, "source images, and as many target images, per step per Train worker", min=1)
    lr: float = _opt(1e-3, "learning rate of G and the selector", min=0.0, min_exclusive=True)
    target_ce_weight: float = _opt(1.0, "weight of the sparse labeled-target cross-entropy", min=0.0)
    adversarial_weight: float = _opt(0.001, "AdaptSeg output-space adversarial loss weight (0: off)", min=0.0)
    discriminator_lr: float = _opt(1e-4, "Adam learning rate of the output-space discriminator", min=0.0,
                                   min_exclusive=True)
    discriminator_width: int = _opt(16, "base width of the output-space discriminator", min=1)
    confusion_weight: float = _opt(0.1, "Tzeng domain confusion weight lambda (0: off)", min=0.0)
    domain_classifier_lr: float = _opt(1e-3, "Adam learning rate of Tzeng's domain classifier", min=0.0,
                                       min_exclusive=True)
    domain_classifier_width: int = _opt(32, "hidden width of Tzeng's domain classifier", min=1)
    soft_label_weight: float = _opt(0.1, "Tzeng soft-label loss weight nu (0: off)", min=0.0)
    soft_label_temperature: float = _opt(2.0, "Tzeng soft-label temperature tau", min=0.0, min_exclusive=True)
    soft_label_momentum: float = _opt(0.99, "moving-average momentum of the soft-label estimate", min=0.0, max=1.0)
    pseudo_label_weight: float = _opt(1.0, "LabOR selector heads: pseudo-label loss weight (0: off)", min=0.0)
    pseudo_label_portion: float = _opt(0.5, "share of each class's most confident pixels kept as pseudo labels",
                                       min=0.0, max=1.0, min_exclusive=True)
    discrepancy_weight: float = _opt(1.0, "LabOR selector heads: MCD discrepancy weight (0: off)", min=0.0)
    checkpoint_every: int = _opt(0, "also checkpoint every N steps within a round (0: only at the end)", min=0)
    total_steps: int = _opt(0, "adaptation steps of all rounds together, split evenly over selection.rounds (the "
                               "remainder in the last round), so trials with different round counts train equally "
                               "long; 0: adapt.steps in every round", min=0)
    num_k: int = _opt(4, "MCD: backbone (F) discrepancy updates per step of LabOR's selector (MCD_DA's num_k)", min=1)
    pseudo_label_rule: str = _opt("iast", "pseudo labels of G for LabOR's selector: 'iast' (IAST's instance-adaptive "
                                          "class thresholds, as LabOR) or 'class_balanced' (each class's most "
                                          "confident adapt.pseudo_label_portion of the batch, CBST-like)",
                                  choices=dict.fromkeys(PSEUDO_LABEL_RULES))
    iast_alpha: float = _opt(0.2, "IAST: share of each class's pixels an image keeps at threshold 1 (alpha)",
                             min=0.0, max=1.0, min_exclusive=True)
    iast_gamma: float = _opt(8.0, "IAST: how fast a confident class keeps a larger share (gamma)", min=0.0)
    iast_momentum: float = _opt(0.9, "IAST: momentum of the class thresholds from image to image (beta)",
                                min=0.0, max=1.0)
    soft_label_estimate: str = _opt("running", "Tzeng soft labels from: 'running' (moving average over source "
                                               "training batches) or 'source_set' (one pass over the whole source "
                                               "set with the model the first labeled round starts from, then "
                                               "fixed: the paper)",
                                    choices=dict.fromkeys(SOFT_LABEL_ESTIMATES))


@dataclass
class WarmupConfig:
    steps: int = _opt(300, "label-free adaptation steps before round 1 (cached per setting, shared by every trial): "
                           "G adapts with the warm-up's losses and LabOR's selector learns the target from G's "
                           "pseudo labels and the MCD discrepancy, so round 1 ranks with a selector that has seen "
                           "the target (LabOR's order); 0: round 1 ranks with the source model", min=0)
    adversarial_weight: float = _opt(0.001, "G's AdaptSeg output-space adversarial loss in the warm-up (LabOR's UDA "
                                            "model; 0: off)", min=0.0)
    confusion_weight: float = _opt(0.0, "G's Tzeng domain confusion in the warm-up (0: off)", min=0.0)


@dataclass
class SelectionConfig:
    selector: str = _opt("labor_ppl", "pixel selection strategy ('none': no target labels, i.e. unsupervised "
                                      "adaptation)", choices=(*SELECTORS, NO_SELECTION))
    points_per_image: int = _opt(10, "points per target image per round (point selectors, budget_fraction 0)",
                                 min=1)
    budget_fraction: float = _opt(0.0, "pixels per round as a fraction of all pool pixels, spent across the pool "
                                       "(region selectors need it; point selectors use it instead of "
                                       "points_per_image when > 0)", min=0.0, max=1.0)
    region_size: int = _opt(3, "side of the square regions of region_impurity_regions and random_regions (RIPU's "
                                  "regions: 3)", min=1)
    region_spread: str = _opt("share", "how a region selector's pixel budget spreads over the pool: 'share' (every "
                                       "image the same share of its own candidates, best first; LabOR SPL: of its "
                                       "inconsistency mask; squares: of its unlabeled pixels) or 'score' (the "
                                       "best-scored regions wherever they are)",
                              choices=REGION_SPREADS)
    rounds: int = _opt(1, "rank -> label -> adapt -> evaluate rounds per trial", min=1)
    oracle: str = _opt("simulated", "who labels: 'simulated' (ground truth) or 'human' (export queries, import "
                                    "answers with python -m orchestrator.annotate, then --resume)",
                       choices={"simulated": None, "human": None})
    point_window: int = _opt(0, "side of region_impurity's window (RIPU points: the impurity window and the area "
                                "each chosen point blocks, in this and later rounds); 0: RIPU's 65 at 2048 pixels "
                                "wide, scaled to data.width", min=0)
    spl_mode: str = _opt("budget", "labor_spl: 'budget' (selection.budget_fraction of the pool per round) or "
                                   "'whole_mask' (every pixel of every image's inconsistency mask, as the paper; the "
                                   "cost, in pixels and clicks, is the outcome)",
                         choices={"budget": None, "whole_mask": None})
    unlabeled_classes: list = _opt([], "class names the oracle never labels (selected pixels of these classes "
                                       "stay unlabeled): Tzeng et al.'s semi-supervised case, where soft labels "
                                       "must carry those classes")


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
    loader_workers: int = _opt(0, "DataLoader worker processes of each Train worker's source, target and evaluation "
                                  "loaders, each (0: load in the training process; with a GPU, leave a few CPUs "
                                  "per worker for them)", min=0)
    max_failures: int = _opt(2, "worker-group failures a training job survives (restarting from its checkpoint)",
                             min=0)
    progress_every_s: float = _opt(30.0, "print steps, losses, images/s and the time left of a training job every N "
                                         "seconds, from its first Train worker (0: off)", min=0.0)


@dataclass
class SweepConfig:
    name: str = _opt("activeda", "sweep name: the MLflow experiment and the output folder")
    num_samples: int = _opt(1, "samples of the search space (grid axes are crossed with each)", min=1)
    max_concurrent: int = _opt(0, "trials at once (0: as many as the cluster fits)", min=0)
    scheduler: str = _opt("fifo", "trial scheduler on target mIoU per round",
                          choices={"fifo": None, "asha": None, "pbt": None})
    grace_rounds: int = _opt(1, "ASHA: rounds every trial runs before it may be stopped", min=1)
    trial_retries: int = _opt(2, "times a failed trial starts again from its last finished round (its bought "
                                 "labels kept) before it counts as failed", min=0)
    oracle_reference: bool = _opt(True, "also adapt once with every pool pixel labeled (cached): the ceiling "
                                        "drawn in the budget curve and the denominator of 'gap closed'")
    search_space: dict = _opt(
        {"selection.points_per_image": {"grid": [5, 10, 20]}},
        "config key -> {grid|choice: [values]} or {uniform|loguniform|randint: [low, high]}",
    )


@dataclass
class TrackingConfig:
    uri: str = _opt("", "MLflow tracking URI ('' : $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


@dataclass
class StorageConfig:
    uri: str = _opt("", "cluster-wide storage of checkpoints, Tune state, label stores and model caches: "
                        "s3://bucket/prefix ('': output_dir, which a cluster must mount on every node)")
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
    "selection.points_per_image": 5,
    "ranking.num_actors": 1,
    "ranking.images_per_shard": 4,
    "sweep.name": "smoke",
    "sweep.oracle_reference": False,
    "sweep.search_space": {"selection.points_per_image": {"grid": [2, 5]}},
}

SEARCH_SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
# A search-space axis whose values are bundles of config keys set together, e.g.
# cases: {grid: [{selection.selector: labor_spl, selection.budget_fraction: 0.022}, ...]}:
# for sweeps that are not a cross product (each selector with its own kind of budget).
CASES_AXIS = "cases"


# --- loading, overriding, validating ---------------------------------------------------------

def load_config(path: str | Path | list | tuple | None = None,
                overrides: list[str] | Mapping[str, Any] | None = None, *, smoke: bool = False) -> ExperimentConfig:
    """YAML file(s) (or defaults) -> smoke overrides -> ``--set`` overrides -> validated config.

    ``path`` may be a list of files: they are merged in order, a later file's keys winning over an
    earlier one's (section by section; a mapping-valued key such as ``sweep.search_space`` is
    replaced whole). Each file's keys and types are checked on their own, so an error names the file.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    raw: dict = {}
    for one in paths:
        layer = read_yaml(one)
        try:
            _build(ExperimentConfig, layer, prefix="")  # unknown keys and wrong types, named with the file
        except ConfigError as err:
            raise ConfigError(err.key, f"{err.problem} (in '{one}')") from None
        raw = merge_layers(raw, layer)
    try:
        cfg = from_dict(raw)
    except ConfigError as err:  # an out-of-range value of one file is that file's
        raise (ConfigError(err.key, f"{err.problem} (in '{paths[0]}')") if len(paths) == 1 else err) from None
    if smoke:
        cfg = with_overrides(cfg, SMOKE_OVERRIDES)
    if overrides:
        pairs = parse_set_args(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        cfg = with_overrides(cfg, pairs)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges a mapping whose keys the explicit ones may override
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class refuses it ("found unhashable key")
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def merge_layers(base: Mapping[str, Any], layer: Mapping[str, Any], cls: type = None) -> dict:
    """``layer`` over ``base`` (raw YAML dicts): sections merge key by key, values are replaced whole."""
    cls = cls or ExperimentConfig
    hints = typing.get_type_hints(cls)
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        section = hints.get(key)
        if dataclasses.is_dataclass(section) and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_layers(out[key], value, section)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    """A config file's sections; ``ConfigError`` naming the file unless it is a UTF-8 YAML mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("", f"config file '{path}' is a folder, not a file")
    if not path.is_file():
        raise ConfigError("", f"config file '{path}' does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("", f"config file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                              f"offset {err.start})") from None
    except OSError as err:
        raise ConfigError("", f"config file '{path}' cannot be read: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise ConfigError("", f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """``["adapt.lr=0.01", ...]`` -> ``{"adapt.lr": 0.01}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("", f"--set expects key=value, got '{pair}'")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(key, f"value '{text}' is not valid YAML") from None
    return out


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, raw, prefix="")
    validate(cfg)
    return cfg


def with_overrides(cfg: ExperimentConfig, pairs: Mapping[str, Any]) -> ExperimentConfig:
    """A new validated config with ``{"section.sub.key": value}`` applied (dict-valued keys replaced whole).

    A ``cases`` entry (a sampled value of the ``CASES_AXIS`` search-space axis) is a mapping of such
    keys; they are applied first, then the other pairs, and the result (a trial's config) has an empty
    search space unless the pairs set one.
    """
    pairs = dict(pairs)
    case = pairs.pop(CASES_AXIS, None)
    if case is not None:
        if not isinstance(case, Mapping):
            raise ConfigError(CASES_AXIS, f"a case must be a mapping of config keys, got {case!r}")
        pairs = {**case, **pairs}
        # A config with a sampled case applied is one trial's: its cases axis is done with, and
        # validating the other cases on top of this one would mix in keys that only this case sets
        # (e.g. selection.spl_mode=whole_mask under another case's labor_ppl). The other axes stay: a
        # PBT trial's config is only valid with the axes PBT mutates.
        pairs.setdefault("sweep.search_space",
                         {k: v for k, v in cfg.sweep.search_space.items() if k != CASES_AXIS})
    data = cfg.to_dict()
    for key, value in pairs.items():
        parts = key.split(".")
        node, node_cls = data, ExperimentConfig
        for depth, part in enumerate(parts):
            fields = [f.name for f in dataclasses.fields(node_cls)]
            if part not in fields:
                if depth == 0 and len(parts) > 1:
                    raise ConfigError(key, f"unknown section '{part}'; choose one of: {', '.join(_sections())}")
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(key, f"unknown key; '{where}' has: {', '.join(fields)}")
            field_type = typing.get_type_hints(node_cls)[part]
            last = depth == len(parts) - 1
            if dataclasses.is_dataclass(field_type):
                if last:
                    inner = ", ".join(f.name for f in dataclasses.fields(field_type))
                    raise ConfigError(key, f"is a section, not a value; set one of its keys: {inner}")
                node, node_cls = node[part], field_type
            elif not last:
                raise ConfigError(key, f"'{'.'.join(parts[:depth + 1])}' is a value, not a section")
            else:
                node[part] = value
    return from_dict(data)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(ExperimentConfig)
            if dataclasses.is_dataclass(getattr(ExperimentConfig(), f.name))]


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(key, f"unknown key; allowed here: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        ftype = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, ftype)
    return cls(**kwargs)


def _coerce(key: str, value: Any, ftype: type) -> Any:
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(key, f"must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(key, f"must be a number, got {value!r}")
    if ftype is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"must be a string, got {value!r}")
    if ftype is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    if ftype is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    raise TypeError(f"unsupported config type {ftype} for {key}")  # a bug in this module, not input


def _walk(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{key}.")
        else:
            yield key, value


def _field_meta(cfg: ExperimentConfig) -> dict[str, tuple[dataclasses.Field, Any]]:
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


def validate(cfg: ExperimentConfig) -> None:
    """Range, choice and cross-field checks; raises the first ``ConfigError`` found."""
    for key, (f, value) in _field_meta(cfg).items():
        meta = f.metadata
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None:
            if meta.get("min_exclusive") and not value > lo:
                raise ConfigError(key, f"must be > {lo:g}, got {value!r}")
            if not meta.get("min_exclusive") and not value >= lo:
                raise ConfigError(key, f"must be >= {lo:g}, got {value!r}")
        if hi is not None and not value <= hi:
            raise ConfigError(key, f"must be <= {hi:g}, got {value!r}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            noun = key.split(".")[-1]
            noun = {"name": "model", "format": "format", "selector": "selector", "class_set": "class set",
                    "pool_split": "split", "val_split": "split"}.get(noun, noun)
            raise ConfigError(key, f"unknown {noun} '{value}'; choose one of: {', '.join(sorted(choices))}")
    # sweep.name becomes a folder under output_dir: it must not climb out of it or hide control characters.
    sweep_name = cfg.sweep.name
    if (not sweep_name or any(c in sweep_name for c in "/\\") or sweep_name.startswith(".")
            or not sweep_name.isprintable()):
        raise ConfigError("sweep.name", f"must be a plain folder name (printable, no '/' or '\\', not starting "
                                        f"with '.'), got {sweep_name!r}")
    if not cfg.output_dir:
        raise ConfigError("output_dir", "must not be empty")
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        raise ConfigError("model.pretrained", f"file '{cfg.model.pretrained}' does not exist")
    if cfg.source.checkpoint and not Path(cfg.source.checkpoint).is_file():
        raise ConfigError("source.checkpoint", f"file '{cfg.source.checkpoint}' does not exist")
    min_batch = MIN_BATCH_SIZE.get(cfg.model.name, 1)
    for section in ("source", "adapt"):
        if getattr(cfg, section).batch_size < min_batch:
            raise ConfigError(f"{section}.batch_size", f"model '{cfg.model.name}' normalises with batch statistics and "
                                                       f"needs >= {min_batch} images per step per Train worker; for "
                                                       f"batch size 1 use deeplabv2_resnet101 (frozen batch norm) or "
                                                       f"small_segnet")
    if cfg.data.augment.scale_min > cfg.data.augment.scale_max:
        raise ConfigError("data.augment.scale_min", f"must be <= data.augment.scale_max "
                                                   f"({cfg.data.augment.scale_max:g}), got {cfg.data.augment.scale_min:g}")
    pixels = cfg.data.height * cfg.data.width
    validate_procedure(cfg)
    whole_mask = cfg.selection.spl_mode == "whole_mask"
    if SELECTOR_KIND.get(cfg.selection.selector) == "regions" and cfg.selection.budget_fraction <= 0 and not whole_mask:
        raise ConfigError("selection.budget_fraction", f"region selector '{cfg.selection.selector}' spends a pixel "
                                                       f"budget: set it > 0 (LabOR SPL used 0.022)")
    if cfg.selection.budget_fraction * cfg.selection.rounds > 1:
        raise ConfigError("selection.budget_fraction", f"{cfg.selection.budget_fraction:g} x {cfg.selection.rounds} "
                                                       f"rounds is more than every pool pixel")
    if cfg.selection.region_size % 2 == 0:
        raise ConfigError("selection.region_size", f"must be odd (a square centred on a pixel), got "
                                                   f"{cfg.selection.region_size}")
    if cfg.selection.budget_fraction == 0 and cfg.selection.points_per_image * cfg.selection.rounds > pixels:
        raise ConfigError("selection.points_per_image",
                          f"{cfg.selection.points_per_image} points x {cfg.selection.rounds} rounds exceed "
                          f"the {pixels} pixels of a {cfg.data.height}x{cfg.data.width} image")
    if cfg.selection.unlabeled_classes:
        _check_unlabeled_classes(cfg)
    if cfg.selection.unlabeled_classes and cfg.selection.oracle == "human":
        raise ConfigError("selection.unlabeled_classes", "withholds classes from the simulated oracle only; with "
                                                         "selection.oracle=human, people label what they are shown")
    validate_storage(cfg)
    validate_search_space(cfg)
    cases = next(iter(cfg.sweep.search_space[CASES_AXIS].values())) if CASES_AXIS in cfg.sweep.search_space else []
    varies_rounds = "selection.rounds" in cfg.sweep.search_space or any("selection.rounds" in c for c in cases)
    if cfg.sweep.scheduler != "fifo" and varies_rounds:
        raise ConfigError("sweep.scheduler", f"{cfg.sweep.scheduler} compares trials round by round up to "
                                             f"selection.rounds: keep selection.rounds out of sweep.search_space "
                                             f"(or use sweep.scheduler=fifo)")
    if cfg.sweep.scheduler == "pbt" and all(next(iter(spec)) == "grid" for spec in cfg.sweep.search_space.values()):
        raise ConfigError("sweep.scheduler", "pbt mutates hyperparameters: give sweep.search_space at least one "
                                             "choice, uniform, loguniform or randint axis")


def validate_procedure(cfg: ExperimentConfig) -> None:
    """The warm-up, the step split over rounds, SPL's whole-mask mode and RIPU's point window."""
    if 0 < cfg.adapt.total_steps < cfg.selection.rounds:
        raise ConfigError("adapt.total_steps", f"{cfg.adapt.total_steps} steps cannot be split over "
                                               f"{cfg.selection.rounds} rounds (at least one step per round)")
    if cfg.selection.spl_mode == "whole_mask":
        if cfg.selection.selector != "labor_spl":
            raise ConfigError("selection.spl_mode", f"'whole_mask' is LabOR SPL's rule; selector "
                                                    f"'{cfg.selection.selector}' takes 'budget'")
        if cfg.selection.budget_fraction > 0:
            raise ConfigError("selection.budget_fraction", "must be 0 with selection.spl_mode=whole_mask (the whole "
                                                           "inconsistency mask is labeled, whatever it costs)")
    if cfg.selection.point_window and cfg.selection.point_window % 2 == 0:
        raise ConfigError("selection.point_window", f"must be odd (a square centred on a pixel) or 0, got "
                                                    f"{cfg.selection.point_window}")


def _check_unlabeled_classes(cfg: ExperimentConfig) -> None:
    # The class lists live with the datasets (and import torch): read only when classes are withheld.
    from trainers.data.labelmaps import CLASS_SETS as CLASS_NAMES

    classes = CLASS_NAMES[cfg.data.class_set]
    for name in cfg.selection.unlabeled_classes:
        if name not in classes:
            raise ConfigError("selection.unlabeled_classes", f"unknown class '{name}' in class set "
                                                             f"'{cfg.data.class_set}'; choose from: {', '.join(classes)}")
    if len(set(cfg.selection.unlabeled_classes)) == len(classes):
        raise ConfigError("selection.unlabeled_classes", "withholds every class: nothing could ever be labeled")


def validate_storage(cfg: ExperimentConfig) -> None:
    """The form of the storage keys; whether the bucket can be reached is ``storage.check_storage``."""
    problem = storage_uri_problem(cfg.storage.uri)
    if problem:
        raise ConfigError("storage.uri", problem)
    if cfg.storage.endpoint and not S3_ENDPOINT.match(cfg.storage.endpoint):
        raise ConfigError("storage.endpoint", f"must be http(s)://host[:port] of an S3-compatible server "
                                              f"('': AWS S3), got {cfg.storage.endpoint!r}")
    if cfg.storage.region and not AWS_REGION.match(cfg.storage.region):
        raise ConfigError("storage.region", f"must be a region name such as 'eu-west-1' ('': the bucket's own), "
                                            f"got {cfg.storage.region!r}")
    for key in ("endpoint", "region"):
        if getattr(cfg.storage, key) and not cfg.storage.uri:
            raise ConfigError(f"storage.{key}", "is set but storage.uri is empty (give s3://bucket/prefix)")


def validate_search_space(cfg: ExperimentConfig) -> None:
    """Every axis names a real config key and every value it can take is valid for that key."""
    space = cfg.sweep.search_space
    meta = _field_meta(cfg)
    for key, spec in space.items():
        where = f"sweep.search_space.{key}"
        if key == CASES_AXIS:
            _validate_cases(cfg, spec, where)
            continue
        if key.startswith("sweep.") or key not in meta:
            raise ConfigError(where, "not a tunable config key (use 'section.name' outside 'sweep')")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(where, f"must be one of {{{' | '.join(SEARCH_SPACE_KINDS)}: ...}}, got {spec!r}")
        (kind, values), = spec.items()
        if kind not in SEARCH_SPACE_KINDS:
            raise ConfigError(where, f"unknown search kind '{kind}'; choose one of: {', '.join(SEARCH_SPACE_KINDS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, f"'{kind}' needs a non-empty list, got {values!r}")
        if kind in ("grid", "choice"):
            samples = values
        else:
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(where, f"'{kind}' needs [low, high] numbers, got {values!r}")
            low, high = values
            if not low < high:
                raise ConfigError(where, f"'{kind}' needs low < high, got {values!r}")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(where, f"'loguniform' needs low > 0, got {values!r}")
            if kind == "randint" and not all(float(v).is_integer() for v in values):
                raise ConfigError(where, f"'randint' needs integer bounds, got {values!r}")
            samples = [low, high - 1 if kind == "randint" else high]
        for sample in samples:
            try:
                with_overrides(_without_space(cfg), {key: sample})
            except ConfigError as err:
                raise ConfigError(where, f"value {sample!r} is invalid: {err.problem}") from None


def _validate_cases(cfg: ExperimentConfig, spec: Any, where: str) -> None:
    """``cases: {grid|choice: [{key: value, ...}, ...]}``: every case a valid set of tunable keys."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in ("grid", "choice"):
        raise ConfigError(where, f"must be {{grid: [cases]}} or {{choice: [cases]}}, got {spec!r}")
    (_, cases), = spec.items()
    if not isinstance(cases, list) or not cases:
        raise ConfigError(where, f"needs a non-empty list of cases, got {cases!r}")
    meta = _field_meta(cfg)
    other_axes = set(cfg.sweep.search_space) - {CASES_AXIS}
    for number, case in enumerate(cases, start=1):
        if not isinstance(case, Mapping) or not case:
            raise ConfigError(where, f"case {number} must be a non-empty mapping of config keys, got {case!r}")
        for key in case:
            if key.startswith("sweep.") or key not in meta:
                raise ConfigError(where, f"case {number}: '{key}' is not a tunable config key")
            if key in other_axes:
                raise ConfigError(where, f"case {number}: '{key}' is also its own search-space axis")
        # Each case with every combination of the other grid/choice axes (a case may be valid alone
        # and not beside another axis' value, e.g. a budget fraction times more rounds).
        for combination in _axis_combinations(cfg):
            try:
                with_overrides(_without_space(cfg), {**case, **combination})
            except ConfigError as err:
                beside = f" with {', '.join(f'{k}={v!r}' for k, v in combination.items())}" if combination else ""
                raise ConfigError(where, f"case {number}{beside} is invalid: {err.key}: {err.problem}") from None


def _axis_combinations(cfg: ExperimentConfig) -> list[dict]:
    """Every combination of the values of the grid and choice axes besides ``cases`` ([{}] if none)."""
    import itertools

    axes = {key: spec[next(iter(spec))] for key, spec in cfg.sweep.search_space.items()
            if key != CASES_AXIS and next(iter(spec)) in ("grid", "choice")}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _without_space(cfg: ExperimentConfig) -> ExperimentConfig:
    clone = copy.deepcopy(cfg)
    clone.sweep.search_space = {}
    clone.sweep.scheduler = "fifo"  # checked on the whole config, not per sampled value
    return clone


def path_keys() -> tuple[str, ...]:
    """Every config key marked ``path=True``: the one list of keys that name files or folders."""
    return tuple(key for key, (f, _) in _field_meta(ExperimentConfig()).items() if f.metadata.get("path"))


def with_absolute_paths(cfg: ExperimentConfig, base: str | Path | None = None) -> ExperimentConfig:
    """Relative paths (every key of ``path_keys()``) resolved against ``base`` (default: the working
    directory, where the command ran), once, in the driver.

    Ray Tune runs trials in their own working directories, so a relative path would mean
    something else in every process.
    """
    base = Path(base or Path.cwd())
    pairs = {}
    for key in path_keys():
        value = _get(cfg, key)
        if value and not Path(value).is_absolute():
            pairs[key] = str((base / value).resolve())
    return with_overrides(cfg, pairs) if pairs else cfg


def _get(cfg: ExperimentConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def yaml_value(value: Any) -> str:
    """A value as it is written in YAML (``true``, ``''``, ``[]``, ``0.001``), for help texts."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def describe_keys() -> str:
    """Every config key with its default (as YAML), help and allowed names, for ``--help``."""
    lines = []
    for key, (f, value) in _field_meta(ExperimentConfig()).items():
        shown = "{...}" if key == "sweep.search_space" else yaml_value(value)
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices is not None:
            text += f" (one of: {', '.join(choices)})"
        lines.append(f"  {key:<28} {shown:<14} {text}")
    return "\n".join(lines)


def markdown_reference() -> str:
    """Every config key as a Markdown table (key, default as YAML, allowed values, meaning): the
    reference in docs/configuration.md, which a test keeps identical to this."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, (f, value) in _field_meta(ExperimentConfig()).items():
        meta = f.metadata
        shown = "see below" if key == "sweep.search_space" else yaml_value(value)
        allowed = []
        if meta.get("choices") is not None:
            allowed.append(", ".join(f"`{c}`" for c in meta["choices"]))
        if meta.get("min") is not None:
            allowed.append(f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']:g}")
        if meta.get("max") is not None:
            allowed.append(f"<= {meta['max']:g}")
        if meta.get("path"):
            allowed.append("a path (relative: to where the command runs)")
        text = meta.get("help", "").replace("|", "\\|")
        rows.append(f"| `{key}` | `{shown}` | {'; '.join(allowed) or '-'} | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m orchestrator.config: print the key reference of docs/configuration.md
    print(markdown_reference(), end="")
