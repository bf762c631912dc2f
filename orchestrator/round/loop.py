"""One trial's rounds: the warmed-up model (or the source model) reported as round 0, then for each round
rank (Ray actors) -> label (oracle -> label store) -> adapt (Ray Train) -> evaluate -> report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiment_config.schema import NO_SELECTION, ExperimentConfig
from orchestrator.cluster.storage import open_storage
from orchestrator.labels.annotation import (
    AwaitingAnnotation,
    export_queries,
    queries_path,
)
from orchestrator.labels.oracle import Oracle, PendingOracle
from orchestrator.labels.store import LabelStore, storage_settings
from orchestrator.round.selection import select_round
from orchestrator.round.start_models import ensure_warmup_model, round_metrics
from orchestrator.tracking.report import selection_overlay, write_iou_csv
from pixel_selectors.rules import RULES, SELECTOR_NETWORK
from trainers.data import build_domains
from trainers.data.palette import class_palette
from trainers.data.transforms import denormalize
from trainers.engine import round_steps
from trainers.job import TrainJob
from trainers.train_loop import run_training


def selector_network_trains(cfg: ExperimentConfig, round_index: int) -> bool:
    """Whether round ``round_index``'s adaptation updates LabOR's selector network S.

    S does nothing but rank pixels for a later round, and its three updates make an adaptation step
    2.4x as slow on the CPU (``python -m benchmarks.train_overhead``). So S trains only when a later round
    of this trial ranks with it: not in the last round, and not for rules that read G -- unless
    PBT may switch a trial's rule between rounds.
    """
    if round_index >= cfg.selection.rounds:
        return False
    rule = RULES.get(cfg.selection.rule)  # None: no selection
    return (rule is not None and rule.reads == SELECTOR_NETWORK) or cfg.sweep.scheduler == "pbt"


@dataclass
class TrialProgress:
    """Where a trial stands after a finished round: enough to continue it (or clone it, for PBT)."""

    round: int
    model_checkpoint: str
    trial_id: str


def run_experiment(
    cfg: ExperimentConfig,
    trial_dir: Path,
    source_checkpoint: str,
    source_metrics: dict,
    report: Callable[[dict[str, Any], TrialProgress], None],
    progress: Callable[[str], None] = print,
    resume: TrialProgress | None = None,
    trial_id: str = "",
) -> None:
    """All rounds of one trial; ``report`` receives each finished round (round 0 = source only).

    With ``resume`` the trial continues after ``resume.round``. A round whose labels are already in
    the label store (the driver died after buying them) is trained on those labels instead of being
    ranked again: annotation is never bought twice.
    """
    store = LabelStore(trial_dir / "labels")
    storage = open_storage(cfg)
    domains = build_domains(cfg.data)
    oracle = Oracle(domains.target_pool, [domains.classes.index(name) for name in cfg.selection.unlabeled_classes])
    pool_pixels = len(domains.target_pool) * cfg.data.height * cfg.data.width
    tags = {
        "rule": cfg.selection.rule,
        "points_per_image": cfg.selection.points_per_image,
        "budget_fraction": cfg.selection.budget_fraction,
    }

    if resume is None:
        # Round 0 is the model before any label is bought: the warmed-up one (or the source model).
        checkpoint, start_metrics = ensure_warmup_model(cfg, source_checkpoint, source_metrics, progress)
        report(
            {
                "round": 0,
                **start_metrics,
                **_budget(store, pool_pixels),
                "time/select_s": 0.0,
                "time/train_s": 0.0,
                **tags,
            },
            TrialProgress(0, checkpoint, trial_id),
        )
        first_round = 1
    else:
        checkpoint, first_round = resume.model_checkpoint, resume.round + 1
        progress(f"continuing after round {resume.round}")
    for round_index in range(first_round, cfg.selection.rounds + 1):
        started = time.perf_counter()
        shortfall = 0
        if round_index in store.rounds():
            progress(f"round {round_index}: labels already bought, not ranking again")
        elif cfg.selection.rule == NO_SELECTION:
            store.append_round(round_index, NO_SELECTION, [])  # unsupervised adaptation: no labels bought
        elif cfg.selection.oracle == "human":
            wait_for_annotators(checkpoint, cfg, domains, store, trial_dir, round_index, pool_pixels, progress)
        else:
            labeled, shortfall = select_round(
                checkpoint, cfg, len(domains.target_pool), store, oracle, round_index, pool_pixels, progress
            )
            if shortfall:
                progress(
                    f"round {round_index}: {shortfall} pixels short of the budget (the pool ran out of candidates)"
                )
            store.append_round(round_index, cfg.selection.rule, labeled)
        select_s = time.perf_counter() - started

        storage.push_folder(store.root, "round-*.parquet")  # bought labels survive this node
        # The labels go by reference: each Train worker reads the images it trains on itself.
        job = TrainJob(
            mode="adapt",
            config=cfg,
            init_checkpoint=checkpoint,
            labels=store.reader(upto_round=round_index, storage=storage_settings(cfg)),
            round=round_index,
            train_selector_network=selector_network_trains(cfg, round_index),
            steps=round_steps(cfg, round_index),
            trial=trial_id,
        )
        result = run_training(job, name=f"round-{round_index:03d}", **storage.train_storage(trial_dir / "ray"))
        checkpoint = result.checkpoint_dir
        metrics = round_metrics(result.metrics)
        write_round_artifacts(
            trial_dir / "artifacts" / f"round-{round_index:03d}", domains, store, round_index, metrics
        )
        totals = _budget(store, pool_pixels, upto_round=round_index)
        progress(
            f"round {round_index}: target mIoU {metrics['target/miou']:.3f}, "
            f"{totals['budget/labeled_pixels']:.0f} labeled pixels"
        )
        report(
            {
                "round": round_index,
                **metrics,
                **totals,
                "time/select_s": select_s,
                "time/train_s": result.seconds,
                "budget/shortfall": shortfall,
                **tags,
            },
            TrialProgress(round_index, checkpoint, trial_id),
        )


OVERLAY_IMAGES = 4


def wait_for_annotators(
    checkpoint: str,
    cfg: ExperimentConfig,
    domains,
    store: LabelStore,
    trial_dir: Path,
    round_index: int,
    pool_pixels: int,
    progress: Callable[[str], None],
) -> None:
    """Export this round's queries once, then stop the trial until the answers are imported."""
    path = queries_path(trial_dir, round_index)
    if not path.is_file():
        queries, _ = select_round(
            checkpoint,
            cfg,
            len(domains.target_pool),
            store,
            PendingOracle(domains.target_pool),
            round_index,
            pool_pixels,
            progress,
        )
        files = getattr(domains.target_pool, "files", [])
        export_queries(
            path,
            round_index,
            cfg.selection.rule,
            domains.classes,
            queries,
            {i: files[i][0] for i in range(len(files))},
        )
    raise AwaitingAnnotation(
        f"round {round_index} waits for annotations: label the pixels in '{path}', then "
        f"python -m orchestrator.annotate import --trial-dir {trial_dir} --round {round_index} "
        f"--answers FILE, and resume the sweep"
    )


def write_round_artifacts(folder: Path, domains, store: LabelStore, round_index: int, metrics: dict) -> None:
    """What a person looks at after a round: selected pixels on a few target images, per-class IoU."""
    folder.mkdir(parents=True, exist_ok=True)
    shown = np.sort(store.image_ids(round_index))[:OVERLAY_IMAGES]
    bought = store.reader(only_round=round_index).read(shown)  # these images' pixels of this round only
    palette = class_palette(domains.classes, domains.class_set.colors)  # the target dataset YAML's colours
    for image_id in sorted(bought):
        ys, xs, classes = bought[image_id]
        image = denormalize(domains.target_pool[image_id][0]).permute(1, 2, 0).numpy()
        selection_overlay(
            image,
            ys,
            xs,
            folder / f"selected-image{image_id:05d}.png",
            labels=classes,
            class_colors=palette,
            class_names=domains.classes,
        )
    per_class = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("target/iou/")}
    write_iou_csv(per_class, folder / "iou.csv")


def _budget(store: LabelStore, pool_pixels: int, upto_round: int | None = None) -> dict[str, float]:
    totals = store.totals(upto_round=upto_round)
    return {
        "budget/labeled_pixels": totals["labeled_pixels"],
        "budget/labeled_fraction": totals["labeled_pixels"] / pool_pixels,
        "budget/clicks": totals["clicks"],
    }
