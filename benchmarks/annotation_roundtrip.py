"""A round of queries as the product writes it for people, and what the simulated oracle says about it:
the fixture of the annotation-tool round trips (tests/test_annotation_formats.py for COCO,
``python -m benchmarks.labelstudio_roundtrip`` for a running Label Studio).

The target pool is the bundled synthetic domain written in the Cityscapes layout at a size larger than
the selection grid, so every export and import goes through the grid <-> original-image mapping. The
queries are written by the product's own ``export_queries`` from ``PendingOracle`` (as a trial with
``selection.oracle: human`` does), and the answers a person must give are ``Oracle.reveal``'s, the
simulated annotator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment_config import load_config
from orchestrator.labels.annotation import export_queries, queries_path
from orchestrator.labels.oracle import Oracle, PendingOracle
from orchestrator.labels.store import LabelStore
from trainers.data import build_domains
from trainers.data.synthetic import write_synthetic_domains

GRID = (24, 48)  # the selection grid (data.height x data.width)
ORIGINAL = (60, 132)  # the image files: 2.5x taller, 2.75x wider
POOL_IMAGES = 3
POINTS_PER_IMAGE = 6


@dataclass
class Round:
    trial_dir: Path
    round_index: int
    queries: Path  # the exported queries file
    truth: dict[int, dict[tuple[int, int], int]]  # image id -> {(grid y, grid x): the oracle's label}
    native_labels: dict[int, np.ndarray]  # image id -> the original (H, W) label map, class indices
    classes: tuple[str, ...]


def make_round(folder: Path, regions: bool, seed: int = 0) -> Round:
    """Round 1 of a trial in ``folder/trial``: points (``regions`` False) or a region mask per image."""
    folder = Path(folder)
    write_synthetic_domains(
        folder / "domains", *ORIGINAL, source_images=1, target_train_images=POOL_IMAGES, target_val_images=1
    )
    overrides = [
        f"data.height={GRID[0]}",
        f"data.width={GRID[1]}",
        f"data.source.root={folder / 'domains' / 'source'}",
        f"data.target.root={folder / 'domains' / 'target'}",
    ]
    data = load_config(None, overrides).data
    domains = build_domains(data)
    pool = domains.target_pool
    rng = np.random.default_rng(seed)
    queries, truth, native = [], {}, {}
    for image_id in range(len(pool)):
        height, width = GRID
        if regions:  # a block and a few scattered pixels: a mask that is not one rectangle
            mask = np.zeros(GRID, bool)
            top, left = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 12))
            mask[top : top + 8, left : left + 12] = True
            mask.flat[rng.choice(height * width, 10, replace=False)] = True
            ys, xs = np.nonzero(mask)
        else:
            flat = rng.choice(height * width, POINTS_PER_IMAGE, replace=False)
            ys, xs = flat // width, flat % width
        clicks = 4.0 if regions else None
        queries.append(PendingOracle(pool).reveal(image_id, ys, xs, clicks=clicks, regions=regions))
        revealed = Oracle(pool).reveal(image_id, ys, xs, clicks=clicks, regions=regions)
        truth[image_id] = {(int(y), int(x)): int(v) for y, x, v in zip(revealed.ys, revealed.xs, revealed.labels)}
        native[image_id] = pool.native_label(image_id).numpy().astype(np.int64)
    trial_dir = folder / "trial"
    path = export_queries(
        queries_path(trial_dir, 1),
        1,
        "random_regions" if regions else "random",
        tuple(domains.classes),
        queries,
        {i: str(pool.files[i][0]) for i in range(len(pool))},
    )
    return Round(trial_dir, 1, path, truth, native, tuple(domains.classes))


def recorded_labels(trial_dir: Path) -> dict[int, dict[tuple[int, int], int]]:
    """What the trial's label store holds: image id -> {(grid y, grid x): label}."""
    sparse = LabelStore(Path(trial_dir) / "labels").sparse_labels()
    return {
        int(i): {(int(y), int(x)): int(v) for y, x, v in zip(ys, xs, labels)} for i, (ys, xs, labels) in sparse.items()
    }


def mismatches(round_: Round) -> list[str]:
    """Where the label store differs from the oracle (empty: every round-trip pixel equals the oracle's)."""
    stored = recorded_labels(round_.trial_dir)
    problems = []
    if set(stored) != set(round_.truth):
        problems.append(f"images recorded {sorted(stored)}, queried {sorted(round_.truth)}")
    for image_id, expected in round_.truth.items():
        got = stored.get(image_id, {})
        if set(got) != set(expected):
            problems.append(f"image {image_id}: {len(got)} pixels recorded, {len(expected)} queried")
            continue
        wrong = [p for p in expected if got[p] != expected[p]]
        if wrong:
            y, x = wrong[0]
            problems.append(
                f"image {image_id}: {len(wrong)} of {len(expected)} labels differ from the oracle's, "
                f"e.g. grid ({y}, {x}): {got[(y, x)]} != {expected[(y, x)]}"
            )
    return problems
