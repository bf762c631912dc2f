"""Click counting alone, region by region against the round's vectorised pass, on the same bought regions.

The regions are those the scale benchmark's round buys at its full pool (``python -m benchmarks.scale``:
2,975 generated images of 1024 x 2048 with 19 classes, one earlier round of class-boundary bands in
every image, LabOR SPL, a pool-wide budget of 2.2% of the 1/16 pool spread by share), made here
without Ray: the benchmark's own ranking actor (``ScaleRanker``) ranks each of the 32 distinct scenes
once in this process, every image of the pool gets its scene's query (as the benchmark's actors
reuse it), and ``GlobalBudget`` merges them. The merge's picks are then counted twice:

- **region by region**: ``clicks_for_region`` on each bought region (a scipy labelling of its
  bounding box), what the driver ran before;
- **vectorised**: ``clicks_by_image`` over the whole round (``ClickCounter``), what it runs now.

Both must give every image the same clicks; their times (wall and CPU: the machine may be shared),
the ratio, and the vectorised pass's traced peak memory are printed. Then what a ranking actor pays
to count an image's whole mask (``cost.counted``, LabOR SPL without a budget) against its ranking of
the image (forward + selection).

    python -m benchmarks.click_counting            # the full pool (several minutes, most of them the old count)
    python -m benchmarks.click_counting --quick    # 256 x 512, a 128-image pool
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks.scale_scene import CITYSCAPES_SIZE, CITYSCAPES_TRAIN_IMAGES, SPL_FRACTION
from pixel_selectors.rules import REGIONS, RULES

DISTINCT_SCENES = 32  # as benchmarks.scale


class Stopwatch:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bought_regions(args: argparse.Namespace, progress=print):
    """The scale benchmark's round at ``args.pool`` images: (the merge's result, its queries' figures)."""

    from benchmarks import scale
    from pixel_selectors.budget import GlobalBudget, share_cap
    from pixel_selectors.cost import CountedRegions, counted

    height, width = args.height, args.width
    cfg = scale.pool_config(args, args.pool, args.budget_pixels, Path("unused"))
    ranker = scale.ScaleRanker("generated", cfg, threads=args.threads)
    pool = ranker.pool
    scenes = list(range(min(DISTINCT_SCENES, args.pool)))  # image i shows scene i mod 32: images 0..31
    # The earlier round, as benchmarks.scale writes it: each scene's class-boundary band.
    bands = {i: scale.boundary_band(pool.label(i)) for i in scenes}
    labeled = {i: ((b // width).astype(np.int32), (b % width).astype(np.int32)) for i, b in bands.items()}
    max_share = None
    rule = RULES[cfg.selection.rule]
    if rule.tiles and cfg.selection.region_spread == "share":  # as select_round asks a tiling rule
        labeled_before = sum(len(bands[pool.scene(i)]) for i in range(args.pool))
        max_share = share_cap(args.budget_pixels, args.pool * height * width - labeled_before)
    queries, rank_s = {}, 0.0
    for start in range(0, len(scenes), cfg.ranking.images_per_shard):
        shard = scenes[start : start + cfg.ranking.images_per_shard]
        with Stopwatch() as ranked:
            answers = ranker.rank_excluding(shard, labeled, 0, 2, args.budget_pixels, max_share)
        rank_s += ranked.wall
        queries.update(answers)
        progress(f"ranked scenes {shard[0]}-{shard[-1]} of {len(scenes)} ({ranked.wall:.1f} s)")
    with Stopwatch() as whole:  # what an actor pays to count an image's whole mask (no budget)
        whole_masks = [counted(q) for q in queries.values()]
    assert all(isinstance(q, CountedRegions) for q in whole_masks)
    merge = GlobalBudget(args.budget_pixels)
    with Stopwatch() as merged:
        for image_id in range(args.pool):
            merge.add(image_id, queries[pool.scene(image_id)])
        result = merge.result()
    progress(f"merged {args.pool} images' queries in {merged.wall:.1f} s")
    figures = {
        "query_pixels_per_image": float(np.mean([q.num_pixels for q in queries.values()])),
        "query_regions_per_image": float(np.mean([len(q) for q in queries.values()])),
        "rank_s_per_image": rank_s / len(scenes),
        "actor_whole_mask_count_s_per_image": whole.wall / len(scenes),
        "merge_s": merged.wall,
    }
    return result, figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.click_counting",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="256 x 512 images, a 128-image pool")
    parser.add_argument("--pool", type=int, default=None, help=f"pool size (default {CITYSCAPES_TRAIN_IMAGES})")
    parser.add_argument("--height", type=int, default=None, help=f"image height (default {CITYSCAPES_SIZE[0]})")
    parser.add_argument("--width", type=int, default=None, help=f"image width (default {CITYSCAPES_SIZE[1]})")
    parser.add_argument(
        "--selector",
        default="labor_spl",
        choices=sorted(name for name, rule in RULES.items() if rule.kind == REGIONS),
        help="the region rule of the round (default labor_spl)",
    )
    parser.add_argument(
        "--budget-pixels",
        type=int,
        default=0,
        help="pixels the round buys (default: 2.2%% of a 1/16 pool, as benchmarks.scale at every pool size)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the ranking (1)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.actors, args.images_per_shard = 1, 2  # what scale.pool_config reads
    defaults = (
        {"pool": 128, "height": 256, "width": 512}
        if args.quick
        else {"pool": CITYSCAPES_TRAIN_IMAGES, "height": CITYSCAPES_SIZE[0], "width": CITYSCAPES_SIZE[1]}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args: argparse.Namespace) -> str | None:
    for name in ("pool", "threads"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1"
    if args.height < 16 or args.width < 16:
        return "--height and --width must be >= 16"
    if args.budget_pixels < 0:
        return "--budget-pixels must be >= 0"
    if args.budget_pixels > args.pool * args.height * args.width:
        return f"--budget-pixels must be at most the pool's {args.pool * args.height * args.width} pixels"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from pixel_selectors.cost import clicks_by_image, clicks_for_region

    height, width = args.height, args.width
    args.budget_pixels = args.budget_pixels or int(SPL_FRACTION * math.ceil(args.pool / 16) * height * width)
    print(
        f"click counting: {args.pool} images of {height} x {width}, {args.selector}, "
        f"a budget of {args.budget_pixels:,} pixels",
        flush=True,
    )
    result, figures = bought_regions(args, progress=lambda line: print(f"  {line}", flush=True))
    bought = result.regions_by_image()
    regions = sum(len(pieces) for pieces in bought.values())
    pixels = sum(len(p) for pieces in bought.values() for p in pieces)

    tracemalloc.start()
    with Stopwatch() as new:
        vectorised = clicks_by_image(bought.items(), height, width)
    _, new_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  vectorised: {new.wall:.2f} s", flush=True)
    with Stopwatch() as old:
        one_by_one = {i: sum(clicks_for_region(p, height, width) for p in pieces) for i, pieces in bought.items()}
    print(f"  region by region: {old.wall:.2f} s", flush=True)
    same = vectorised == one_by_one
    figures |= {
        "pool_images": args.pool,
        "height": height,
        "width": width,
        "selector": args.selector,
        "budget_pixels": args.budget_pixels,
        "bought_images": len(bought),
        "bought_regions": regions,
        "bought_pixels": pixels,
        "truncated_picks": sum(p.truncated for p in result.picks),
        "clicks": sum(vectorised.values()),
        "same_clicks": same,
        "old_wall_s": old.wall,
        "old_cpu_s": old.cpu,
        "new_wall_s": new.wall,
        "new_cpu_s": new.cpu,
        "new_traced_peak_bytes": new_peak,
    }
    lines = [
        "",
        f"{args.pool:,} images of {height} x {width}, {args.selector}: {pixels:,} pixels bought in {regions:,} regions "
        f"of {len(bought):,} images ({figures['clicks']:,} clicks)",
        "",
        "| count | wall | CPU |",
        "|---|---|---|",
        f"| region by region (`clicks_for_region`) | {old.wall:.2f} s | {old.cpu:.2f} s |",
        f"| vectorised over the round (`clicks_by_image`) | {new.wall:.2f} s | {new.cpu:.2f} s |",
        f"| ratio | {old.wall / max(new.wall, 1e-9):.1f}x | {old.cpu / max(new.cpu, 1e-9):.1f}x |",
        "",
        f"- every image's clicks the same both ways: {'yes' if same else 'NO'}",
        f"- the vectorised pass's traced peak memory: {new_peak / 2**20:.1f} MiB",
        f"- a whole mask counted on its ranking actor (`cost.counted`, no budget): "
        f"{1000 * figures['actor_whole_mask_count_s_per_image']:.1f} ms an image, "
        f"{figures['query_pixels_per_image']:,.0f} pixels in {figures['query_regions_per_image']:,.0f} regions; "
        f"the actor's ranking of the image (forward + selection): {1000 * figures['rank_s_per_image']:.0f} ms",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if not same:
        differ = sorted(i for i in one_by_one if vectorised.get(i) != one_by_one[i])
        print(f"error: the counts differ in {len(differ)} images, first {differ[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
