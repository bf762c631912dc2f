"""Calibration of the bundled synthetic domains: are they in the papers' regime before any method is compared?

For each calibration seed (the trial seed and the domain generator's seed both set to it: every
seed is its own generated pair of domains, its own models), trains with the project's own engine
(in this process; ``--ray`` runs the same jobs on Ray Train) and measures on the target validation
split:

- source-only mIoU (source training only);
- the warm-up's mIoU (LabOR's label-free adaptation, ``warmup.steps``, from the source model);
- the oracle's mIoU and per-class IoU (from the warm-up, every pool pixel labeled, the steps of a
  whole trial);
- random points at the headline budget (``selection.points_per_image``, one round, from the warm-up);
- the warmed-up selector network's inconsistency mask: pixels per image, pieces per image.

and prints each gate with pass or fail (figures averaged over the seeds):

- source-only / oracle between 0.40 and 0.60 (the adaptation problem is neither solved nor hopeless);
- every class reaches an oracle IoU of at least 0.3 (every class can be learned from its labels);
- the warm-up beats source-only by at least 0.02 mIoU (the label-free step helps);
- random points at the headline budget close 0.3 to 0.7 of the source-only-to-oracle gap (room for a
  selection rule to win, and to lose);
- the warmed-up mask holds at least 20 pixels per PPL point at the headline budget (a point stands
  for a region, as in the papers, not for a pixel or two).

The gates are about the domains and the label-free step; none looks at a selection rule's result. The
calibration seeds are 100-109 (``--seeds``); the quality benchmark's evaluation seeds (0-7) are
refused, so nothing is tuned on them.

    python -m benchmarks.calibrate_domains [--seeds 100 101 ...] [--ray] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_config, machine_line
from experiment_config import ExperimentConfig, with_overrides
from orchestrator.labels.oracle import Oracle
from orchestrator.round.ranking import Ranker
from trainers.checkpoint import save_checkpoint
from trainers.data import build_domains, domain_roots
from trainers.engine import planned_adapt_steps, run_job
from trainers.job import TrainJob
from trainers.labels import NO_LABELS, InMemoryLabels

CALIBRATION_SEEDS = tuple(range(100, 110))
EVALUATION_SEEDS = tuple(range(0, 8))  # the quality benchmark's: never used here
RATIO_BAND = (0.40, 0.60)
MIN_CLASS_IOU = 0.3
MIN_WARMUP_GAIN = 0.02
RANDOM_GAP_BAND = (0.3, 0.7)
MIN_MASK_PIXELS_PER_POINT = 20.0


def full_labels(pool) -> InMemoryLabels:
    """Every pixel of every pool image, as the labels the trainer reads."""
    out = {}
    for i in range(len(pool)):
        truth = pool.label(i).numpy()
        ys, xs = np.nonzero(truth != 255)
        out[i] = (ys.astype(np.int32), xs.astype(np.int32), truth[ys, xs].astype(np.uint8))
    return InMemoryLabels(out)


def selected_labels(checkpoint: str, cfg: ExperimentConfig, selector: str, pool) -> InMemoryLabels:
    """Labels revealed by the oracle for one round of ``selector`` at the configured budget."""
    cfg = with_overrides(cfg, {"selection.rule": selector})
    ranker = Ranker(checkpoint, cfg)
    oracle = Oracle(pool)
    out = {}
    for start in range(0, len(pool), 8):
        for image_id, query in ranker.rank(
            list(range(start, min(start + 8, len(pool)))), NO_LABELS, cfg.selection.points_per_image
        ):
            revealed = oracle.reveal(image_id, query.ys, query.xs)
            out[image_id] = (revealed.ys, revealed.xs, revealed.labels)
    return InMemoryLabels(out)


def mask_figures(checkpoint: str, cfg: ExperimentConfig, pool) -> dict[str, float]:
    """The inconsistency mask of a checkpoint's selector network S over the pool: mean pixels and mean
    pieces (PPL's whole-mask points) per image."""
    import torch

    from pixel_selectors import inconsistency_mask, ppl_piece_count

    ranker = Ranker(checkpoint, with_overrides(cfg, {"selection.rule": "labor_ppl"}))
    pixels, pieces = [], []
    with torch.no_grad():
        for start in range(0, len(pool), 8):
            ids = list(range(start, min(start + 8, len(pool))))
            images = torch.stack([pool[i][0] for i in ids])
            heads = ranker.network(images)
            for n in range(len(ids)):
                probs = [head[n].softmax(dim=0) for head in heads]
                pixels.append(int(inconsistency_mask(*probs).sum()))
                pieces.append(ppl_piece_count(probs))
    return {"mask_pixels": float(np.mean(pixels)), "mask_pieces": float(np.mean(pieces))}


def trainer(in_process: bool, cfg, workdir: Path):
    """``train(job, name) -> (metrics, checkpoint dir)``: Ray Train, or the same engine in this process."""
    if in_process:
        import torch

        torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))

        def train(job, name):
            result = run_job(job)
            if result.state is None:
                return result.metrics, None
            save_checkpoint(workdir / name, result.state)
            return result.metrics, str(workdir / name)

        return train

    from orchestrator.cluster.ray_connection import start_ray
    from trainers.train_loop import run_training

    start_ray(quiet=True, dashboard=False)  # the dashboard would take CPU from what is measured

    def train(job, name):
        result = run_training(job, storage_path=workdir / "ray", name=name)
        return result.metrics, result.checkpoint_dir

    return train


def class_iou(metrics: dict) -> dict[str, float]:
    """Per-class target IoU of a job's metrics, by class name."""
    return {k[len("target/iou/") :]: v for k, v in metrics.items() if k.startswith("target/iou/")}


@dataclass
class SeedFigures:
    """What one calibration seed measured (mIoU on the target validation split)."""

    seed: int
    source_only: float
    warmup: float
    oracle: float
    random: float
    oracle_class_iou: dict[str, float]
    source_class_iou: dict[str, float]
    mask_pixels: float
    mask_pieces: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def gap_closed(self) -> float:
        gap = self.oracle - self.source_only
        return (self.random - self.source_only) / gap if gap > 0 else float("nan")


def calibrate_seed(
    cfg: ExperimentConfig, seed: int, train, progress=print, budgets: tuple[int, ...] = ()
) -> SeedFigures:
    """Source, warm-up, oracle and random points for one seed (its own domains and models); random
    points also at each of ``budgets`` points per image (in ``extra``), to choose a headline budget."""
    started = time.perf_counter()
    cfg = with_overrides(cfg, {"seed": seed, "data.synthetic.seed": seed})
    domain_roots(cfg.data)
    pool = build_domains(cfg.data).target_pool
    steps = planned_adapt_steps(cfg)

    metrics, source = train(TrainJob(mode="source", config=cfg), f"source-{seed}")
    source_only = metrics["target/miou"]
    source_classes = class_iou(metrics)
    progress(f"seed {seed}: source-only {source_only:.4f}")
    start, warmup = source, source_only
    if cfg.warmup.steps:
        job = TrainJob(mode="adapt", stage="warmup", config=cfg, init_checkpoint=source, steps=cfg.warmup.steps)
        metrics, start = train(job, f"warmup-{seed}")
        warmup = metrics["target/miou"]
        progress(f"seed {seed}: warm-up {warmup:.4f}")
    masks = mask_figures(start, cfg, pool)
    progress(f"seed {seed}: mask {masks['mask_pixels']:.1f} pixels, {masks['mask_pieces']:.1f} pieces per image")

    def adapt(labels=None, name=""):
        job = TrainJob(
            mode="adapt",
            config=cfg,
            init_checkpoint=start,
            round=1,
            steps=steps,
            labels=NO_LABELS if labels is None else labels,
            full_target_labels=labels is None,
            train_selector_network=False,
        )
        return train(job, f"{name}-{seed}")[0]

    oracle_metrics = adapt(None, "oracle")
    oracle = oracle_metrics["target/miou"]
    classes = class_iou(oracle_metrics)
    progress(f"seed {seed}: oracle {oracle:.4f}")
    random = adapt(selected_labels(start, cfg, "random", pool), "random")["target/miou"]
    progress(f"seed {seed}: random, {cfg.selection.points_per_image} points/image {random:.4f}")
    extra = {}
    for budget in budgets:
        other = with_overrides(cfg, {"selection.points_per_image": budget})
        extra[f"random_{budget}"] = adapt(selected_labels(start, other, "random", pool), f"random{budget}")[
            "target/miou"
        ]
        progress(f"seed {seed}: random, {budget} points/image {extra[f'random_{budget}']:.4f}")
    return SeedFigures(
        seed=seed,
        source_only=source_only,
        warmup=warmup,
        oracle=oracle,
        random=random,
        oracle_class_iou=classes,
        source_class_iou=source_classes,
        mask_pixels=masks["mask_pixels"],
        mask_pieces=masks["mask_pieces"],
        seconds=time.perf_counter() - started,
        extra=extra,
    )


@dataclass(frozen=True)
class Gate:
    name: str
    figure: float
    goal: str
    passed: bool

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.name}: {self.figure:.3f} (goal {self.goal})"


def gates(figures: list[SeedFigures], points_per_image: int) -> list[Gate]:
    """The issue's gates over the seeds' means."""
    ratio = float(np.mean([f.source_only / f.oracle for f in figures]))
    classes = sorted(figures[0].oracle_class_iou)
    class_iou = {c: float(np.nanmean([f.oracle_class_iou[c] for f in figures])) for c in classes}
    worst = min(class_iou, key=class_iou.get)
    gain = float(np.mean([f.warmup - f.source_only for f in figures]))
    closed = float(np.mean([f.gap_closed for f in figures]))
    per_point = float(np.mean([f.mask_pixels for f in figures])) / points_per_image
    return [
        Gate(
            "source-only / oracle",
            ratio,
            f"in [{RATIO_BAND[0]}, {RATIO_BAND[1]}]",
            RATIO_BAND[0] <= ratio <= RATIO_BAND[1],
        ),
        Gate(
            f"lowest class oracle IoU ({worst})",
            class_iou[worst],
            f">= {MIN_CLASS_IOU}",
            class_iou[worst] >= MIN_CLASS_IOU,
        ),
        Gate("warm-up minus source-only (mIoU)", gain, f">= {MIN_WARMUP_GAIN}", gain >= MIN_WARMUP_GAIN),
        Gate(
            f"gap closed by random points ({points_per_image}/image)",
            closed,
            f"in [{RANDOM_GAP_BAND[0]}, {RANDOM_GAP_BAND[1]}]",
            RANDOM_GAP_BAND[0] <= closed <= RANDOM_GAP_BAND[1],
        ),
        Gate(
            "warmed-up mask pixels per PPL point",
            per_point,
            f">= {MIN_MASK_PIXELS_PER_POINT:g}",
            per_point >= MIN_MASK_PIXELS_PER_POINT,
        ),
    ]


def report(figures: list[SeedFigures], cfg) -> str:
    """The per-seed table, the per-class oracle IoU and the gates, as printed."""
    lines = [
        f"{'seed':>5} {'source':>7} {'warm-up':>8} {'oracle':>7} {'random':>7} {'closed':>7} "
        f"{'mask px':>8} {'pieces':>7} {'s':>6}"
    ]
    for f in figures:
        lines.append(
            f"{f.seed:>5} {f.source_only:>7.4f} {f.warmup:>8.4f} {f.oracle:>7.4f} {f.random:>7.4f} "
            f"{f.gap_closed:>7.2f} {f.mask_pixels:>8.1f} {f.mask_pieces:>7.1f} {f.seconds:>6.0f}"
        )
    for name in figures[0].extra:
        closed = [(f.extra[name] - f.source_only) / (f.oracle - f.source_only) for f in figures]
        lines.append(
            f"{name.replace('_', ' ')} points/image: gap closed {np.mean(closed):.2f} (per seed {', '.join(f'{c:.2f}' for c in closed)})"
        )
    lines.append("")
    lines.append("IoU per class, mean over seeds: source-only -> oracle")
    for c in figures[0].oracle_class_iou:
        source = np.nanmean([f.source_class_iou[c] for f in figures])
        oracle = np.nanmean([f.oracle_class_iou[c] for f in figures])
        lines.append(f"  {c:<16} {source:.2f} -> {oracle:.2f}")
    lines.append("")
    lines += [g.line() for g in gates(figures, cfg.selection.points_per_image)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.calibrate_domains",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(CALIBRATION_SEEDS),
        metavar="SEED",
        help="calibration seeds (default 100-109; the evaluation seeds 0-7 are refused)",
    )
    parser.add_argument("--ray", action="store_true", help="train on Ray Train instead of in this process")
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also adapt with random points at these points per image (to choose the headline budget)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the per-seed figures and the gates here, again after every seed"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="FILE",
        help="train nothing: print the report and the gates of the seeds in these --json files (seeds "
        "calibrated in separate processes or on separate machines)",
    )
    args = parser.parse_args(argv)
    cfg = benchmark_config(args.overrides, args.config)
    if cfg is None:
        return 2
    if args.merge:
        figures = [SeedFigures(**seed) for path in args.merge for seed in json.loads(Path(path).read_text())["seeds"]]
        args.seeds = [f.seed for f in figures]
    reserved = sorted(set(args.seeds) & set(EVALUATION_SEEDS))
    if reserved:
        print(
            f"error: seeds {reserved} are the quality benchmark's evaluation seeds (0-7); calibrate on 100-109",
            file=sys.stderr,
        )
        return 2
    if not args.merge:
        print(f"calibration on seeds {args.seeds}; {machine_line()}", flush=True)
        started = time.perf_counter()
        figures = []
        with tempfile.TemporaryDirectory(prefix="activeda-calibrate-") as workdir:
            train = trainer(not args.ray, cfg, Path(workdir))
            for seed in args.seeds:
                figures.append(calibrate_seed(cfg, seed, train, budgets=tuple(args.budgets)))
                if args.json:  # after every seed: a long run stopped early keeps what it measured
                    write_json(Path(args.json), figures, cfg)
        print(f"\n({time.perf_counter() - started:.0f} s, {'Ray Train' if args.ray else 'in-process'})")
    print("\n" + report(figures, cfg))
    return 0


def write_json(path: Path, figures: list[SeedFigures], cfg: ExperimentConfig) -> None:
    """The per-seed figures and the gates over them, as ``--json`` writes them (``--merge`` reads them)."""
    payload = {
        "seeds": [vars(f) for f in figures],
        "gates": [vars(g) for g in gates(figures, cfg.selection.points_per_image)],
    }
    path.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    sys.exit(main())
