"""Scale benchmark: the ranking, label-store, budget-merge and training-input path on a Cityscapes-sized pool.

At 1/16, 1/4 and all of a pool of 2,975 images of 1024 x 2048 with 19 classes (Cityscapes train),
each pool size in a fresh driver process:

1. the label store holds one earlier round of about 2% of every image (generated class-boundary
   bands, stored as run lengths: Cityscapes-scale labeled pixels);
2. a selection round runs the product's own driver code (``orchestrator.round.selection.select_round``):
   Ray ranking actors read the labeled pixels of their own images from the store, forward and
   select, and send back queries; the driver merges a pool-wide pixel budget, reveals the picks
   with the oracle and writes the round;
3. the driver builds the adaptation job a Train worker receives, and a worker-side reader loads
   training items from the store by reference.

Measured: driver peak memory (Python heap with numpy, traced over the round; and the process's
peak RSS), ranking actors' peak RSS, label store size on disk, bytes of the job sent to a Train
worker, time to read one image's labels on the worker side; and each part of the round's time side
by side: the actors' start-up, the ranking (the driver merges each query as it arrives), the rest of
the budget merge, counting the bought regions' clicks, the oracle's reveal, writing the round to the
label store. Then each selector's time per image against a DeepLab forward pass of an image of the
same size, on this machine's CPU (the GPU check measures the same on a GPU).

Goals: driver peak memory at the full pool within 10% of the 1/16 pool (same budget); bytes sent to
a Train worker independent of the labeled pixels; counting clicks at most 10% of the ranking time at
the full pool; each selector at most 0.25x a DeepLab-V2 forward pass of the same image on the same
device.

Cuts, so that it runs on a 2-core machine (each keeps the measured path the product's own):

- the pool is generated (``benchmarks.scale_scene.GeneratedPool``): no image files;
- the ranking network is ``CheapSegmenter`` (logits at 1/8 resolution upsampled to the image,
  two heads disagreeing on about 4% of the pixels), not a backbone;
- the pool repeats 32 distinct scenes (image i shows scene i mod 32), and an actor computes each
  distinct (scene, labeled pixels) once and reuses the query for its repeats: the query the
  selector would compute again (LabOR's and RIPU's selectors do not use the seed), so every image's
  query still crosses Ray, is merged and bought, at a 100th of the compute;
- the earlier round is written directly in the store's format, not bought;
- the round's budget is the same number of pixels at every pool size (2.2% of the 1/16 pool), so
  the driver figures compare pool sizes, not budgets (the merge holds up to the budget, by design);
- selector timings use ``--sample-images`` images.

    python -m benchmarks.scale                 # the full run (figures in docs/scale.md)
    python -m benchmarks.scale --quick         # 256 x 512, a 128-image pool: the path in a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from benchmarks.scale_scene import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_SIZE,
    CITYSCAPES_TRAIN_IMAGES,
    SPL_FRACTION,
    CheapSegmenter,
    GeneratedPool,
    time_selectors,
)
from experiment_config import ExperimentConfig
from orchestrator.labels.oracle import Oracle
from orchestrator.labels.store import LabeledPixels, LabelStore, storage_settings
from orchestrator.round.ranking import Ranker
from pixel_selectors.rules import REGIONS, RULES, SELECTOR_NETWORK
from trainers.job import TrainJob
from trainers.labels import labeled_coordinates

DISTINCT_SCENES = 32
# Selectors whose query does not depend on the seed: an actor may reuse a scene's query exactly.
SEEDLESS = {"labor_ppl", "labor_spl", "entropy", "margin", "region_impurity", "region_impurity_regions"}
FORWARD_MODEL = "deeplabv2_resnet101"
FALLBACK_FORWARD_MODEL = "deeplabv3_resnet101"


class ScaleRanker(Ranker):
    """A ranking actor over the generated pool with the cheap network; ``rank`` is the product's.

    Everything a ``Ranker`` does per shard happens here too (read the shard's labeled pixels from
    the store, forward, select on the device, return the queries); a (scene, labeled pixels) seen
    before reuses its query instead of forwarding again (see the module's cuts).
    """

    def __init__(self, checkpoint_dir: str, cfg: ExperimentConfig, threads: int = 1):
        from trainers.data import CLASS_SETS

        torch.set_num_threads(max(1, threads))
        self.cfg = cfg
        data = cfg.data
        num_classes = len(CLASS_SETS[data.class_set])
        self.pool = GeneratedPool(
            data.pool_images, data.height, data.width, num_classes, seed=cfg.seed, distinct_scenes=DISTINCT_SCENES
        )
        self.device = torch.device("cuda" if cfg.ranking.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        rule = RULES[cfg.selection.rule]
        self.rule_name = rule.name
        heads = 2 if rule.reads == SELECTOR_NETWORK else 1
        self.network = CheapSegmenter(num_classes, num_heads=heads).to(self.device).eval()
        self.params = rule.params(cfg.selection, data.width)
        self.region_spread = cfg.selection.region_spread
        self.seed = cfg.seed
        self.loading = None  # generated images: computed in the calling thread, nothing to decode
        self.prefetching, self.prefetched, self.prefetch_hits = None, None, 0  # ... nor to decode ahead
        self._queries: dict = {}

    def rank(self, image_ids, labeled, num_points, round_index=1, budget_pixels=0, max_share=None, prefetch_ids=None):
        coordinates = labeled_coordinates(labeled, image_ids)  # from the store, as every actor reads it
        keys = {i: (self._key(i, coordinates.get(i), round_index), max_share) for i in image_ids}
        first_of = {}
        for i in image_ids:
            if keys[i] not in self._queries:
                first_of.setdefault(keys[i], i)
        if first_of:
            for image_id, query in self.rank_excluding(
                list(first_of.values()), coordinates, num_points, round_index, budget_pixels, max_share
            ):
                self._queries[keys[image_id]] = query
        return [(i, self._queries[keys[i]]) for i in image_ids]

    def _key(self, image_id: int, labeled, round_index: int):
        digest = None
        if labeled is not None:
            digest = hashlib.blake2b(
                np.asarray(labeled[0]).tobytes() + np.asarray(labeled[1]).tobytes(), digest_size=16
            ).hexdigest()
        seed = None if self.rule_name in SEEDLESS else (image_id, round_index)
        return self.pool.scene(image_id), digest, seed


def boundary_band(label: torch.Tensor) -> np.ndarray:
    """Flat indices of the pixels next to a class boundary (4-neighbours differ): a band about two
    pixels wide, the kind of pixels an annotator of SPL's masks labels."""
    band = torch.zeros_like(label, dtype=torch.bool)
    across = label[:, 1:] != label[:, :-1]
    down = label[1:, :] != label[:-1, :]
    band[:, 1:] |= across
    band[:, :-1] |= across
    band[1:, :] |= down
    band[:-1, :] |= down
    return band.reshape(-1).nonzero().squeeze(1).numpy()


def earlier_round(pool: GeneratedPool):
    """The labels of the earlier round, image by image in id order (a generator: the store writes
    them a row group at a time)."""
    bands: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for image_id in range(len(pool)):
        scene = pool.scene(image_id)
        if scene not in bands:
            label = pool.label(image_id)
            flat = boundary_band(label)
            bands[scene] = flat, label.reshape(-1)[torch.from_numpy(flat)].numpy().astype(np.uint8)
        flat, labels = bands[scene]
        yield LabeledPixels(
            image_id,
            (flat // pool.width).astype(np.int32),
            (flat % pool.width).astype(np.int32),
            labels,
            pool.height,
            pool.width,
            clicks=len(flat) / 8,
            regions=True,
        )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*") if p.is_file())


def pool_config(args: argparse.Namespace, pool_size: int, budget_pixels: int, work: Path):
    from experiment_config import load_config

    height, width = args.height, args.width
    overrides = {
        "data.height": height,
        "data.width": width,
        "data.class_set": "cityscapes19",
        "data.pool_images": pool_size,
        "selection.rule": args.selector,
        "ranking.num_actors": args.actors,
        "ranking.images_per_shard": args.images_per_shard,
        "ranking.cpus_per_actor": 1.0,
        "output_dir": str(work),
    }
    if RULES[args.selector].kind == REGIONS:
        overrides |= {
            "selection.budget_fraction": budget_pixels / (pool_size * height * width),
            "selection.region_spread": "share",
        }
    else:
        overrides["selection.points_per_image"] = 40
    return load_config(None, overrides)


@contextlib.contextmanager
def timed_calls(owner, names: tuple[str, ...], totals: dict[str, float]):
    """Add the wall time of calls to ``owner.<name>`` into ``totals`` (the benchmark's stopwatch)."""
    originals = {name: getattr(owner, name) for name in names}

    def wrap(name, original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

        return timed

    for name, original in originals.items():
        setattr(owner, name, wrap(name, original))
    try:
        yield totals
    finally:
        for name, original in originals.items():
            setattr(owner, name, original)


def measure_round(args: argparse.Namespace, pool_size: int, store_root: Path, budget_pixels: int) -> dict:
    """One selection round on a pool of ``pool_size`` images, in this (fresh) driver process."""
    import orchestrator.round.selection as experiment
    from orchestrator.cluster.ray_connection import start_ray
    from pixel_selectors.budget import GlobalBudget
    from trainers.step import SparseTargetDataset

    work = store_root.parent
    cfg = pool_config(args, pool_size, budget_pixels, work)
    pool = GeneratedPool(
        pool_size, args.height, args.width, CITYSCAPES_CLASSES, seed=cfg.seed, distinct_scenes=DISTINCT_SCENES
    )
    store = LabelStore(store_root)
    before = store.totals()
    start_ray(num_cpus=max(2, args.actors), quiet=True)
    stats, merge, reveal, clicks = [], {}, {}, {}
    original_rank_pool = experiment.rank_pool

    def capture_stats(*a, **k):
        stats.append(original_rank_pool(*a, **k))
        return stats[-1]

    experiment.rank_pool = capture_stats
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with (
            timed_calls(GlobalBudget, ("add", "add_points", "result"), merge),
            timed_calls(Oracle, ("reveal",), reveal),
            timed_calls(experiment, ("clicks_by_image",), clicks),
        ):
            labeled, shortfall = experiment.select_round(
                "generated",
                cfg,
                pool_size,
                store,
                Oracle(pool),
                round_index=2,
                pool_pixels=pool_size * args.height * args.width,
                progress=lambda line: print(f"  {line}", flush=True),
                ranker=ScaleRanker,
            )
        selected_s = time.perf_counter() - started
        written = time.perf_counter()
        store.append_round(2, args.selector, labeled)
        write_s = time.perf_counter() - written
        del labeled
        job = TrainJob(
            mode="adapt",
            config=cfg,
            init_checkpoint="checkpoint",
            round=2,
            labels=store.reader(upto_round=2, storage=storage_settings(cfg)),
            train_selector_network=False,
        )
        job_bytes = len(pickle.dumps(job))
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        experiment.rank_pool = original_rank_pool
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # A Train worker's side: the job arrives, its dataset reads training items' labels from the store.
    received = pickle.loads(pickle.dumps(job))
    dataset = SparseTargetDataset(pool, received.labels)
    sample = np.random.default_rng(0).choice(pool_size, size=min(args.worker_items, pool_size), replace=False)
    read_started = time.perf_counter()
    labeled_read = sum(len(received.labels.read([int(i)])[int(i)][0]) for i in sample)
    read_s = (time.perf_counter() - read_started) / len(sample)
    item_started = time.perf_counter()
    for i in sample[:4]:
        dataset[int(i)]
    item_s = (time.perf_counter() - item_started) / min(4, len(sample))
    after = store.totals()
    ranking = stats[0]  # a second pass (the share cap was too tight) adds its seconds below
    return {
        "pool_images": pool_size,
        "budget_pixels": budget_pixels,
        "shortfall": int(shortfall),
        "store_labeled_pixels_before": before["labeled_pixels"],
        "store_labeled_pixels": after["labeled_pixels"],
        "bought_pixels": after["labeled_pixels"] - before["labeled_pixels"],
        "store_bytes": folder_bytes(store_root),
        "driver_traced_peak_bytes": traced_peak,
        "driver_peak_rss_bytes": driver_rss,
        "actor_peak_rss_bytes": ranking.actor_peak_rss_bytes,
        "train_job_bytes": job_bytes,
        "labels_in_job_bytes_before": int(9 * after["labeled_pixels"]),  # ys, xs int32 + labels uint8 a pixel
        "select_round_s": selected_s,
        "ranking_passes": len(stats),
        "ranking_startup_s": sum(s.startup_s for s in stats),
        "ranking_s": sum(s.ranking_s for s in stats),
        "merge_s": sum(merge.values()),
        "merge_result_s": merge.get("result", 0.0),
        "reveal_s": sum(reveal.values()),
        "clicks_s": sum(clicks.values()),
        "write_round_s": write_s,
        "worker_label_read_s": read_s,
        "worker_labeled_pixels_per_image": labeled_read / len(sample),
        "worker_item_s": item_s,
    }


def write_earlier_round(pool: GeneratedPool, store_root: Path) -> dict:
    store = LabelStore(store_root)
    started = time.perf_counter()
    store.append_round(1, "generated", earlier_round(pool))
    return {"earlier_round_write_s": time.perf_counter() - started}


def measure_selectors(args: argparse.Namespace, progress=print) -> dict:
    """Each selector's time per image against a DeepLab forward pass (+ softmax) of an image of the
    same size, on the CPU with ``--threads`` threads; on the cheap network's maps (trained-looking:
    the heads disagree near boundaries) of ``--sample-images`` generated images."""
    from trainers.models import MODELS, build_model

    torch.set_num_threads(args.threads)
    model_name = args.model or (FORWARD_MODEL if FORWARD_MODEL in MODELS else FALLBACK_FORWARD_MODEL)
    if model_name != (args.model or FORWARD_MODEL):
        progress(f"{FORWARD_MODEL} is not in this build's models; timing the forward pass of {model_name}")
    pool = GeneratedPool(args.sample_images, args.height, args.width, CITYSCAPES_CLASSES, seed=11)
    network = CheapSegmenter(CITYSCAPES_CLASSES).eval()
    model = build_model(model_name, CITYSCAPES_CLASSES, 16, 1).eval()
    maps, forward_s = [], 0.0
    with torch.no_grad():
        for i in range(len(pool)):
            image = pool[i][0][None]
            maps.append(tuple(head[0].softmax(dim=0) for head in network(image)))
            started = time.perf_counter()
            model(image)[0][0].softmax(dim=0)
            forward_s += time.perf_counter() - started
            progress(f"{model_name} forward pass of image {i + 1}/{len(pool)}: {time.perf_counter() - started:.1f} s")
    forward_s /= len(pool)
    timings = time_selectors(maps, sorted(RULES), progress=lambda line: progress(f"selector {line}"))
    return {
        "model": model_name,
        "threads": args.threads,
        "forward_s": forward_s,
        "selectors": {
            t.name: {"s": t.seconds_per_image, "ratio": t.seconds_per_image / forward_s, "query_pixels": t.query_pixels}
            for t in timings
        },
    }


def pool_sizes(total: int, fractions: list[int]) -> list[int]:
    return [max(1, math.ceil(total / f)) for f in fractions]


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


# Counting clicks may take at most this share of the round's ranking time.
CLICKS_SHARE_GOAL = 0.10


def report(args: argparse.Namespace, rounds: list[dict], selectors: dict | None) -> list[str]:
    lines = [
        f"{args.height} x {args.width}, {CITYSCAPES_CLASSES} classes, selector {args.selector}, "
        f"{args.actors} ranking actor(s), budget {rounds[0]['budget_pixels']:,} pixels a round",
        "",
        "| pool | labeled pixels in the store | store on disk | driver peak (traced) | driver peak RSS "
        "| actor peak RSS | job sent to a Train worker | labels that job carried before | "
        "worker: one image's labels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['pool_images']:,} | {r['store_labeled_pixels']:,.0f} | {_mib(r['store_bytes'])} | "
            f"{_mib(r['driver_traced_peak_bytes'])} | {_mib(r['driver_peak_rss_bytes'])} | "
            f"{_mib(r['actor_peak_rss_bytes'])} | {r['train_job_bytes']:,} B | {_mib(r['labels_in_job_bytes_before'])} | "
            f"{1000 * r['worker_label_read_s']:.1f} ms |"
        )
    lines += [
        "",
        "Where the round's time went (seconds; the driver merges each query as it arrives, so the merge's "
        "adds are inside the ranking):",
        "",
        "| pool | actors' start-up | ranking | merge (adds + result) | click counting | oracle | "
        "label store write | select round | clicks / ranking |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['pool_images']:,} | {r['ranking_startup_s']:.1f} | {r['ranking_s']:.1f} | {r['merge_s']:.1f} | "
            f"{r['clicks_s']:.2f} | {r['reveal_s']:.1f} | {r['write_round_s']:.1f} | {r['select_round_s']:.1f} | "
            f"{clicks_share(r):.1%} |"
        )
    first, last = rounds[0], rounds[-1]
    memory = last["driver_traced_peak_bytes"] / max(first["driver_traced_peak_bytes"], 1)
    lines += [
        "",
        f"- driver peak memory (traced) at {last['pool_images']:,} images / {first['pool_images']:,}: "
        f"{memory:.2f}x (goal: within 1.10x: {'met' if memory <= 1.10 else 'MISSED'}); peak RSS "
        f"{last['driver_peak_rss_bytes'] / max(first['driver_peak_rss_bytes'], 1):.2f}x",
    ]
    spread = max(r["train_job_bytes"] for r in rounds) - min(r["train_job_bytes"] for r in rounds)
    sent = ", ".join(f"{r['train_job_bytes']:,}" for r in rounds)
    held = ", ".join(f"{r['store_labeled_pixels']:,.0f}" for r in rounds)
    lines.append(
        f"- bytes sent to a Train worker: {sent} with {held} labeled pixels in the store (goal: independent "
        f"of them: {'met' if spread <= 16 else 'MISSED'}; they differ by {spread} B: the digits of the "
        f"pool size and folder names in the job)"
    )
    share = clicks_share(last)
    lines.append(
        f"- counting clicks at {last['pool_images']:,} images: {last['clicks_s']:.2f} s, {share:.1%} of the "
        f"ranking's {last['ranking_s']:.1f} s (goal: at most {CLICKS_SHARE_GOAL:.0%}: "
        f"{'met' if share <= CLICKS_SHARE_GOAL else 'MISSED'})"
    )
    if selectors:
        lines += [
            "",
            f"Selectors against a {selectors['model']} forward pass + softmax of the same image size "
            f"({1000 * selectors['forward_s']:.0f} ms, {selectors['threads']} thread(s)):",
            "",
            "| selector | time per image | / forward pass | goal <= 0.25 |",
            "|---|---|---|---|",
        ]
        for name, t in selectors["selectors"].items():
            lines.append(
                f"| {name} | {1000 * t['s']:.1f} ms | {t['ratio']:.3f} | {'met' if t['ratio'] <= 0.25 else 'MISSED'} |"
            )
    return lines


def clicks_share(r: dict) -> float:
    """Click counting's seconds as a share of the ranking's (start-up left out)."""
    return r["clicks_s"] / max(r["ranking_s"], 1e-9)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="256 x 512 images, a 128-image pool, one sample image: the whole path in minutes",
    )
    parser.add_argument("--pool", type=int, default=None, help=f"full pool size (default {CITYSCAPES_TRAIN_IMAGES})")
    parser.add_argument(
        "--fractions",
        default="16,4,1",
        help="pool sizes as fractions of --pool, largest divisor first (default 16,4,1)",
    )
    parser.add_argument("--height", type=int, default=None, help=f"image height (default {CITYSCAPES_SIZE[0]})")
    parser.add_argument("--width", type=int, default=None, help=f"image width (default {CITYSCAPES_SIZE[1]})")
    parser.add_argument(
        "--selector",
        default="labor_spl",
        choices=sorted(RULES),
        help="the selector of the ranking round (default labor_spl)",
    )
    parser.add_argument("--actors", type=int, default=2, help="ranking actors (default 2)")
    parser.add_argument(
        "--images-per-shard",
        type=int,
        default=2,
        help="images an actor forwards at once (default 2; its memory grows with it)",
    )
    parser.add_argument(
        "--budget-pixels",
        type=int,
        default=0,
        help="pixels bought by the round at every pool size (default: 2.2%% of the smallest pool)",
    )
    parser.add_argument("--worker-items", type=int, default=16, help="images whose labels a Train worker reads (16)")
    parser.add_argument("--sample-images", type=int, default=None, help="images the selectors are timed on (2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the selector timings (1)")
    parser.add_argument(
        "--model",
        default="",
        help=f"the network whose forward pass selectors are compared with (default {FORWARD_MODEL})",
    )
    parser.add_argument("--skip-selectors", action="store_true", help="no selector timings")
    parser.add_argument("--work-dir", default="", help="where label stores go (default: a temporary folder)")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    parser.add_argument("--one-pool", type=int, default=0, help=argparse.SUPPRESS)  # a child: one round
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"pool": 128, "height": 256, "width": 512, "sample_images": 1}
    full = {
        "pool": CITYSCAPES_TRAIN_IMAGES,
        "height": CITYSCAPES_SIZE[0],
        "width": CITYSCAPES_SIZE[1],
        "sample_images": 2,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args: argparse.Namespace) -> str | None:
    try:
        fractions = [int(f) for f in args.fractions.split(",")]
    except ValueError:
        return f"--fractions must be integers separated by commas, got '{args.fractions}'"
    if not fractions or min(fractions) < 1 or fractions != sorted(fractions, reverse=True):
        return f"--fractions must be integers >= 1, largest first, got '{args.fractions}'"
    args.fraction_list = fractions
    for name in ("pool", "height", "width", "actors", "images_per_shard", "worker_items", "sample_images", "threads"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    if args.height < 16 or args.width < 16:
        return "--height and --width must be >= 16"
    if args.budget_pixels < 0:
        return "--budget-pixels must be >= 0"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.one_pool:  # a child process: one round, figures to --result
        figures = measure_round(args, args.one_pool, Path(args.work_dir) / "labels", args.budget_pixels)
        Path(args.result).write_text(json.dumps(figures))
        return 0

    sizes = pool_sizes(args.pool, args.fraction_list)
    budget = args.budget_pixels or int(SPL_FRACTION * sizes[0] * args.height * args.width)
    print(
        f"scale benchmark: pools of {', '.join(map(str, sizes))} images at {args.height} x {args.width}, "
        f"budget {budget:,} pixels a round",
        flush=True,
    )
    rounds = []
    with tempfile.TemporaryDirectory(prefix="activeda-scale-") as scratch:
        root = Path(args.work_dir or scratch)
        for size in sizes:
            work = root / f"pool-{size}"
            if (work / "labels").exists():
                print(f"error: {work / 'labels'} exists; give an empty --work-dir", file=sys.stderr)
                return 2
            pool = GeneratedPool(size, args.height, args.width, CITYSCAPES_CLASSES, distinct_scenes=DISTINCT_SCENES)
            print(f"pool of {size} images: writing the earlier round", flush=True)
            earlier = write_earlier_round(pool, work / "labels")
            print(f"pool of {size} images: a selection round in a fresh driver process", flush=True)
            result = work / "round.json"
            child = [
                sys.executable,
                "-m",
                "benchmarks.scale",
                "--one-pool",
                str(size),
                "--result",
                str(result),
                "--work-dir",
                str(work),
                "--budget-pixels",
                str(budget),
                "--pool",
                str(args.pool),
                "--height",
                str(args.height),
                "--width",
                str(args.width),
                "--selector",
                args.selector,
                "--actors",
                str(args.actors),
                "--images-per-shard",
                str(args.images_per_shard),
                "--worker-items",
                str(args.worker_items),
                "--sample-images",
                str(args.sample_images),
            ]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
                ),
            }
            if subprocess.run(child, env=env).returncode != 0:
                print(f"error: the round on the pool of {size} images failed (see above)", file=sys.stderr)
                return 1
            rounds.append({**earlier, **json.loads(result.read_text())})
            print(f"pool of {size} images: done ({rounds[-1]['select_round_s']:.0f} s)", flush=True)
    selectors = None if args.skip_selectors else measure_selectors(args)
    lines = report(args, rounds, selectors)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "fraction_list"},
                    "rounds": rounds,
                    "selectors": selectors,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
