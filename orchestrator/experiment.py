"""One active domain-adaptation experiment (a trial), and the models all trials start from.

The source model, then the label-free warm-up (``warmup.steps``: G adapts without labels and
LabOR's selector learns the target), each trained once per setting and cached. A trial reports the
warmed-up model (the source model without a warm-up) as round 0, then for each round
rank (Ray actors) -> label (oracle -> label store) -> adapt (Ray Train) -> evaluate -> report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixel_selectors import SELECTOR_INPUTS, SELECTOR_KIND, PointQuery
from pixel_selectors import TILING_SELECTORS
from pixel_selectors.budget import GlobalBudget, share_cap, within_share_cap
from pixel_selectors.cost import clicks_for_points, clicks_for_region
from trainers.data import build_domains
from trainers.engine import planned_adapt_steps, round_steps
from trainers.train_loop import run_training

from .config import NO_SELECTION, ExperimentConfig, from_dict, with_overrides
from .annotate import AwaitingAnnotation, export_queries, queries_path
from .labels import LabeledPixels, LabelStore, Oracle, grid_and_label_size, storage_settings
from .ranking import rank_pool
from .storage import open_storage

log = logging.getLogger(__name__)

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
        progress(f"source model: G from {cfg.source.checkpoint} (not trained); the selector S gets its backbone "
                 f"and fresh heads, which LabOR's selection needs trained first")
    else:
        progress(f"source model: training {cfg.source.steps} steps ({cfg.train.num_workers} Train worker(s))")
    job = {"mode": "source", "config": cfg.to_dict(), "init_checkpoint": None, "round": 0}
    result = run_training(job, name=f"source-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = _round_metrics(result.metrics)
    storage.publish_entry(entry, {"checkpoint": result.checkpoint_dir},
                          {"metrics.json": json.dumps(metrics, indent=1, sort_keys=True)}, marker="metrics.json")
    progress(f"source model: target mIoU {metrics['target/miou']:.3f} ({result.seconds:.0f} s)")
    return storage.join(entry_location, "checkpoint"), metrics


# adapt keys that never change the warm-up: they act on labeled pixels or on the rounds after it.
# (The warm-up has its own loss weights: adapt's adversarial and confusion weights act on the rounds only.)
WARMUP_NEUTRAL_ADAPT_KEYS = ("steps", "total_steps", "target_ce_weight", "checkpoint_every", "soft_label_weight",
                             "soft_label_temperature", "soft_label_momentum", "soft_label_estimate",
                             "adversarial_weight", "confusion_weight")
# adapt keys of an adversary, which change the warm-up only when the warm-up uses that loss.
WARMUP_LOSS_KEYS = {"adversarial_weight": ("discriminator_lr", "discriminator_width"),
                    "confusion_weight": ("domain_classifier_lr", "domain_classifier_width")}


def warmup_cache_key(cfg: ExperimentConfig) -> str:
    """Everything that changes the warmed-up models: the source model's key, the warm-up section and
    the adapt keys it uses -- not the selection, not the rounds, not the labeled-target losses, so
    every trial of a comparison starts from the same warmed-up G and S."""
    data = cfg.to_dict()
    adapt = dict(data["adapt"])
    unused = [key for loss, keys in WARMUP_LOSS_KEYS.items() if not getattr(cfg.warmup, loss) for key in keys]
    for key in (*WARMUP_NEUTRAL_ADAPT_KEYS, *unused):
        adapt.pop(key, None)
    blob = json.dumps({"source": source_cache_key(cfg), "warmup": data["warmup"], "adapt": adapt},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def warmup_losses(cfg: ExperimentConfig) -> str:
    """G's label-free losses in the warm-up, in words ("adversarial 0.001", or "source CE only")."""
    used = [f"{name} {getattr(cfg.warmup, f'{name}_weight'):g}" for name in ("adversarial", "confusion")
            if getattr(cfg.warmup, f"{name}_weight")]
    return ", ".join(used) or "source CE only"


def ensure_warmup_model(cfg: ExperimentConfig, source_checkpoint: str, source_metrics: dict,
                        progress: Callable[[str], None] = print) -> tuple[str, dict]:
    """The models round 1 starts from: (checkpoint location, their target metrics).

    With ``warmup.steps`` > 0: one label-free adaptation job from the source model (G adapts with
    the warm-up's loss weights, LabOR's selector S learns the target from G's pseudo labels and the MCD
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
    progress(f"warm-up: {cfg.warmup.steps} label-free steps (G: {warmup_losses(cfg)}; "
             f"LabOR's selector: pseudo labels ({cfg.adapt.pseudo_label_rule}) + MCD discrepancy)")
    job = {"mode": "adapt", "stage": "warmup", "config": cfg.to_dict(), "init_checkpoint": source_checkpoint,
           "round": 0, "steps": cfg.warmup.steps, "sparse_labels": {}, "train_selector": True}
    result = run_training(job, name=f"warmup-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = {**_round_metrics(result.metrics), "warmup/steps": float(cfg.warmup.steps)}
    marker = storage.join(entry_location, "metrics.json")
    try:
        storage.publish_entry(entry, {"checkpoint": result.checkpoint_dir},
                              {"metrics.json": json.dumps(metrics, indent=1, sort_keys=True)}, marker="metrics.json")
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
    return hashlib.sha256(f"{cfg.hash(*ORACLE_CACHE_SECTIONS)}:{planned_adapt_steps(cfg.to_dict())}".encode()
                          ).hexdigest()[:16]


def ensure_oracle_reference(cfg: ExperimentConfig, source_checkpoint: str,
                            progress: Callable[[str], None] = print, source_metrics: dict | None = None) -> dict:
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
    steps = planned_adapt_steps(cfg.to_dict())
    progress(f"oracle reference: adapting with every pool pixel labeled ({steps} steps)")
    job = {"mode": "adapt", "config": cfg.to_dict(), "init_checkpoint": start_checkpoint, "round": 1,
           "full_target_labels": True, "train_selector": False, "steps": steps}
    result = run_training(job, name=f"oracle-{entry.name}", **storage.train_storage(cache_root / "ray"))
    metrics = _round_metrics(result.metrics)
    storage.write_text(metrics_location, json.dumps(metrics, indent=1, sort_keys=True))
    progress(f"oracle reference: target mIoU {metrics['target/miou']:.3f} ({result.seconds:.0f} s)")
    return metrics


def selector_trains(cfg: ExperimentConfig, round_index: int) -> bool:
    """Whether round ``round_index``'s adaptation updates LabOR's pixel selector S.

    S does nothing but rank pixels for a later round, and its three updates make an adaptation step
    2.4x as slow on the CPU (``python -m benchmarks.train_overhead``). So S trains only when a later round
    of this trial ranks with it: not in the last round, and not for selectors that read G -- unless
    PBT may switch a trial's selector between rounds.
    """
    if round_index >= cfg.selection.rounds:
        return False
    return SELECTOR_INPUTS.get(cfg.selection.selector) == "selector" or cfg.sweep.scheduler == "pbt"


def _round_metrics(train_metrics: dict) -> dict[str, float]:
    # train/global_step counts every step the model has trained (source, warm-up, rounds): trials of
    # a comparison end at the same value.
    return {k: v for k, v in train_metrics.items()
            if k.startswith("target/") and k != "target/confusion" or k.startswith("train/loss/")
            or k == "train/global_step"}


@dataclass
class TrialProgress:
    """Where a trial stands after a finished round: enough to continue it (or clone it, for PBT)."""

    round: int
    model_checkpoint: str
    trial_id: str


def run_experiment(cfg: ExperimentConfig, trial_dir: Path, source_checkpoint: str, source_metrics: dict,
                   report: Callable[[dict[str, Any], TrialProgress], None], progress: Callable[[str], None] = print,
                   resume: TrialProgress | None = None, trial_id: str = "") -> None:
    """All rounds of one trial; ``report`` receives each finished round (round 0 = source only).

    With ``resume`` the trial continues after ``resume.round``. A round whose labels are already in
    the label store (the driver died after buying them) is trained on those labels instead of being
    ranked again: annotation is never bought twice.
    """
    cfg_dict = cfg.to_dict()
    store = LabelStore(trial_dir / "labels")
    storage = open_storage(cfg)
    domains = build_domains(cfg_dict["data"])
    oracle = Oracle(domains.target_pool, [domains.classes.index(name) for name in cfg.selection.unlabeled_classes])
    pool_pixels = len(domains.target_pool) * cfg.data.height * cfg.data.width
    tags = {"selector": cfg.selection.selector, "points_per_image": cfg.selection.points_per_image,
            "budget_fraction": cfg.selection.budget_fraction}

    if resume is None:
        # Round 0 is the model before any label is bought: the warmed-up one (or the source model).
        checkpoint, start_metrics = ensure_warmup_model(cfg, source_checkpoint, source_metrics, progress)
        report({"round": 0, **start_metrics, **_budget(store, pool_pixels), "time/select_s": 0.0,
                "time/train_s": 0.0, **tags}, TrialProgress(0, checkpoint, trial_id))
        first_round = 1
    else:
        checkpoint, first_round = resume.model_checkpoint, resume.round + 1
        progress(f"continuing after round {resume.round}")
    for round_index in range(first_round, cfg.selection.rounds + 1):
        started = time.perf_counter()
        shortfall = 0
        if round_index in store.rounds():
            progress(f"round {round_index}: labels already bought, not ranking again")
        elif cfg.selection.selector == NO_SELECTION:
            store.append_round(round_index, NO_SELECTION, [])  # unsupervised adaptation: no labels bought
        elif cfg.selection.oracle == "human":
            wait_for_annotators(checkpoint, cfg, domains, store, trial_dir, round_index, pool_pixels, progress)
        else:
            labeled, shortfall = select_round(checkpoint, cfg, len(domains.target_pool), store, oracle,
                                              round_index, pool_pixels, progress)
            if shortfall:
                progress(f"round {round_index}: {shortfall} pixels short of the budget "
                         f"(the pool ran out of candidates)")
            store.append_round(round_index, cfg.selection.selector, labeled)
        select_s = time.perf_counter() - started

        storage.push_folder(store.root, "round-*.parquet")  # bought labels survive this node
        # The labels go by reference: each Train worker reads the images it trains on itself.
        job = {"mode": "adapt", "config": cfg_dict, "init_checkpoint": checkpoint,
               "label_reader": store.reader(upto_round=round_index, storage=storage_settings(cfg_dict)),
               "round": round_index, "train_selector": selector_trains(cfg, round_index),
               "steps": round_steps(cfg_dict, round_index), "trial": trial_id}
        result = run_training(job, name=f"round-{round_index:03d}", **storage.train_storage(trial_dir / "ray"))
        checkpoint = result.checkpoint_dir
        metrics = _round_metrics(result.metrics)
        write_round_artifacts(trial_dir / "artifacts" / f"round-{round_index:03d}", domains, store, round_index,
                              metrics)
        totals = _budget(store, pool_pixels, upto_round=round_index)
        progress(f"round {round_index}: target mIoU {metrics['target/miou']:.3f}, "
                 f"{totals['budget/labeled_pixels']:.0f} labeled pixels")
        report({"round": round_index, **metrics, **totals, "time/select_s": select_s,
                "time/train_s": result.seconds, "budget/shortfall": shortfall, **tags},
               TrialProgress(round_index, checkpoint, trial_id))


OVERLAY_IMAGES = 4


class PendingOracle:
    """Stands in for the oracle when people annotate: the queried pixels, labels still unknown (255)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def reveal(self, image_id, ys, xs, clicks=None, regions=False) -> LabeledPixels:
        (height, width), (label_height, label_width) = grid_and_label_size(self.dataset, image_id)
        ys, xs = np.asarray(ys, np.int32), np.asarray(xs, np.int32)
        return LabeledPixels(int(image_id), ys, xs, np.full(len(ys), 255, np.uint8), int(height), int(width),
                             float(len(ys) if clicks is None else clicks), regions, int(label_height),
                             int(label_width))


def wait_for_annotators(checkpoint: str, cfg: ExperimentConfig, domains, store: LabelStore, trial_dir: Path,
                        round_index: int, pool_pixels: int, progress: Callable[[str], None]) -> None:
    """Export this round's queries once, then stop the trial until the answers are imported."""
    path = queries_path(trial_dir, round_index)
    if not path.is_file():
        queries, _ = select_round(checkpoint, cfg, len(domains.target_pool), store,
                                  PendingOracle(domains.target_pool), round_index, pool_pixels, progress)
        files = getattr(domains.target_pool, "files", [])
        export_queries(path, round_index, cfg.selection.selector, domains.classes, queries,
                       {i: files[i][0] for i in range(len(files))})
    raise AwaitingAnnotation(f"round {round_index} waits for annotations: label the pixels in '{path}', then "
                             f"python -m orchestrator.annotate import --trial-dir {trial_dir} --round {round_index} "
                             f"--answers FILE, and resume the sweep")


def write_round_artifacts(folder: Path, domains, store: LabelStore, round_index: int, metrics: dict) -> None:
    """What a person looks at after a round: selected pixels on a few target images, per-class IoU."""
    from trainers.data.transforms import denormalize

    from .report import class_palette, selection_overlay, write_iou_csv

    folder.mkdir(parents=True, exist_ok=True)
    shown = np.sort(store.image_ids(round_index))[:OVERLAY_IMAGES]
    bought = store.reader(only_round=round_index).read(shown)  # these images' pixels of this round only
    palette = class_palette(domains.classes)  # Cityscapes colours, with a legend of the classes drawn
    for image_id in sorted(bought):
        ys, xs, classes = bought[image_id]
        image = denormalize(domains.target_pool[image_id][0]).permute(1, 2, 0).numpy()
        selection_overlay(image, ys, xs, folder / f"selected-image{image_id:05d}.png", labels=classes,
                          class_colors=palette, class_names=domains.classes)
    per_class = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("target/iou/")}
    write_iou_csv(per_class, folder / "iou.csv")


def select_round(checkpoint: str, cfg: ExperimentConfig, pool_size: int, store: LabelStore, oracle: Oracle,
                 round_index: int, pool_pixels: int, progress: Callable[[str], None], ranker: type | None = None
                 ) -> tuple[list[LabeledPixels], int]:
    """Rank the pool, spend the round's budget, and reveal the chosen pixels: (labels, shortfall).

    Per-image point budgets take each image's points as they are. A global pixel budget
    (``selection.budget_fraction``) is met by merging every image's candidates on the driver
    (``GlobalBudget``: memory grows with the budget, not the pool), best score first. LabOR SPL's
    whole-mask mode (``selection.spl_mode=whole_mask``) has no budget: every image's mask is bought,
    and what it cost (pixels, clicks) is the outcome. ``ranker``: the ranking actors' class
    (``Ranker`` unless a benchmark brings its own pool and network).
    """
    cfg_dict = cfg.to_dict()
    width = cfg.data.width
    budget_pixels = int(round(cfg.selection.budget_fraction * pool_pixels))
    regions = SELECTOR_KIND[cfg.selection.selector] == "regions"
    per_image: list[tuple[int, PointQuery]] = []
    merged = GlobalBudget(budget_pixels) if budget_pixels else None

    def consume(image_id: int, query) -> None:
        if merged is None:
            per_image.append((image_id, query))
        elif regions:
            merged.add(image_id, query)
        else:
            merged.add_points(image_id, query, cfg.data.height, width)

    # Actors read the labeled pixels of their own images from the store (pushed to storage.uri first,
    # so an actor on another node finds every earlier round).
    open_storage(cfg).push_folder(store.root, "round-*.parquet")
    labeled = store.reader(upto_round=round_index - 1, storage=storage_settings(cfg_dict))
    # Squares that tile an image, spread by share: each image ranks only about the share the merge can
    # take (budget / the pool's free pixels, with a margin), not every square of the image.
    max_share = None
    if (merged is not None and regions and cfg.selection.region_spread == "share"
            and cfg.selection.selector in TILING_SELECTORS):
        labeled_before = int(store.totals(upto_round=round_index - 1)["labeled_pixels"])
        max_share = share_cap(budget_pixels, pool_pixels - labeled_before)
    stats = rank_pool(checkpoint, cfg_dict, pool_size, labeled, consume, round_index=round_index,
                      budget_pixels=budget_pixels, progress=progress, ranker=ranker, max_share=max_share)
    result = merged.result() if merged is not None else None
    if max_share is not None and not within_share_cap(result, max_share):
        progress(f"round {round_index}: the budget needs more than {max_share:.2%} of some images' free pixels; "
                 f"ranking again with every square")
        merged = GlobalBudget(budget_pixels)
        stats = rank_pool(checkpoint, cfg_dict, pool_size, labeled, consume, round_index=round_index,
                          budget_pixels=budget_pixels, progress=progress, ranker=ranker)
        result = merged.result()
    progress(f"round {round_index}: ranked {stats.images} images with {stats.actors} actor(s) in "
             f"{stats.startup_s + stats.ranking_s:.1f} s ({stats.startup_s:.1f} s actor start-up, "
             f"{stats.images_per_s:.1f} images/s after)")
    if merged is None and regions:  # SPL's whole mask: every candidate region of every image
        labeled = []
        for image_id, query in sorted(per_image, key=lambda item: item[0]):
            if query.num_pixels:
                flat = query.indices.astype(np.int64)
                clicks = sum(clicks_for_region(query.region(r), cfg.data.height, width) for r in range(len(query)))
                labeled.append(oracle.reveal(image_id, flat // width, flat % width, clicks=clicks, regions=True))
        return labeled, 0
    if merged is None:
        labeled = [oracle.reveal(i, q.ys, q.xs) for i, q in sorted(per_image, key=lambda item: item[0])]
        return labeled, sum(q.shortfall for _, q in per_image)
    labeled = []
    for image_id, pieces in result.regions_by_image().items():
        flat = np.concatenate(pieces)
        clicks = (sum(clicks_for_region(p, cfg.data.height, width) for p in pieces) if regions
                  else clicks_for_points(len(flat)))
        labeled.append(oracle.reveal(image_id, flat // width, flat % width, clicks=clicks, regions=regions))
    return labeled, int(result.shortfall)


def _budget(store: LabelStore, pool_pixels: int, upto_round: int | None = None) -> dict[str, float]:
    totals = store.totals(upto_round=upto_round)
    return {"budget/labeled_pixels": totals["labeled_pixels"],
            "budget/labeled_fraction": totals["labeled_pixels"] / pool_pixels,
            "budget/clicks": totals["clicks"]}


PROGRESS_FILE = "progress.json"


def _own_progress(storage, path: Path, trial_id: str) -> dict | None:
    """The trial's own progress record with the highest round: this node's copy or the one in storage.uri.

    Both are read: a node keeps its copy when the trial moves on to another node, so a trial that
    comes back to it (Tune restores trials wherever there is room) finds that copy out of date.
    """
    texts = [path.read_text()] if path.is_file() else []
    if storage.remote:
        texts.append(storage.read_text(storage.location(path)))
    records = [r for r in map(json.loads, filter(None, texts)) if r["progress"]["trial_id"] == trial_id]
    return max(records, key=lambda r: r["progress"]["round"], default=None)


def tune_trial(sampled: dict, base: dict, source_checkpoint: str, source_metrics: dict, sweep_dir: str) -> None:
    """Ray Tune function trainable: one trial with the sampled keys applied to the base config.

    Every finished round is reported with a Tune checkpoint holding ``progress.json`` and a copy of
    the label store, so a restored sweep continues the trial after its last finished round, and a
    PBT clone starts from another trial's model *and* labels.
    """
    import ray.tune as tune

    cfg = with_overrides(from_dict(base), sampled)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(sweep_dir) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    # A trial restarted on another node finds its label store and progress record in shared storage.
    storage = open_storage(cfg)
    storage.pull_folder(trial_dir / "labels", "round-*.parquet")

    resume, resume_record = None, None  # where the trial stands, and the progress record (with its metrics) saying so
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            resume_record = json.loads((Path(directory) / PROGRESS_FILE).read_text())
            resume = TrialProgress(**resume_record["progress"])
            saved = LabelStore(Path(directory) / "labels")
            if resume.trial_id != trial_id:  # a PBT clone: take over the other trial's labels
                # This trial's own rounds are set aside, not overwritten or mixed in: they were paid for,
                # but were chosen by another model, and could repeat pixels of the rounds taken over.
                aside = LabelStore(trial_dir / "labels").set_aside(keep_if_same_as=saved)
                saved.copy_to(trial_dir / "labels", upto_round=resume.round)
                print(f"[{context.get_trial_name()}] continuing from trial {resume.trial_id} after its round "
                      f"{resume.round} (PBT): its model and {len(saved.rounds())} round(s) of its labels"
                      + (f"; this trial's own {len(aside)} round(s) set aside in {aside[0].parent}" if aside else ""),
                      flush=True)
            elif not set(saved.rounds()) <= set(LabelStore(trial_dir / "labels").rounds()):
                # This node lacks the trial's folder (and no copy was in shared storage): the labels
                # come with the checkpoint.
                saved.copy_to(trial_dir / "labels", upto_round=resume.round)
    # Tune snapshots its experiment state every few seconds; a driver killed in between restores a
    # trial from an older round than the trial itself finished. The trial's own record is newer then.
    own_file = trial_dir / PROGRESS_FILE
    own = _own_progress(storage, own_file, trial_id)
    if own is not None and (resume is None or own["progress"]["round"] > resume.round):
        resume, resume_record = TrialProgress(**own["progress"]), own

    def report(metrics: dict, state: TrialProgress) -> None:
        record = json.dumps({"progress": dataclasses.asdict(state), "metrics": metrics}, default=float)
        with tempfile.TemporaryDirectory(prefix="activeda-trial-") as tmp:
            (Path(tmp) / PROGRESS_FILE).write_text(record)
            LabelStore(trial_dir / "labels").copy_to(Path(tmp) / "labels", upto_round=state.round)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        staging = own_file.with_name(f".{PROGRESS_FILE}.tmp-{os.getpid()}")
        staging.write_text(record)
        os.replace(staging, own_file)
        storage.push(own_file)

    if resume_record is not None and resume.round >= cfg.selection.rounds:
        # Every round was done before the interruption: hand Tune the final result, train nothing.
        report(resume_record["metrics"], resume)  # the metrics of resume.round, whichever record it came from
        return
    run_experiment(cfg, trial_dir, source_checkpoint, source_metrics, report=report, resume=resume,
                   trial_id=trial_id, progress=lambda msg: print(f"[{context.get_trial_name()}] {msg}", flush=True))
