"""The label store (what was bought, per image and round) and the oracle that reveals ground truth.

Layout: one directory per trial holding one parquet file per round, ``round-0001.parquet``, with a
row per labeled image: ``image_id, round, strategy, height, width, ys, xs, mask_rle, labels,
num_pixels, clicks``. Points are coordinate lists (``ys``, ``xs``); regions are a run-length mask
(``mask_rle``: start, length pairs over the row-major image; see ``pixel_selectors.encoding``) and
``labels`` follow the pixels in ascending flat order. Both stay compact on disk and are never
Python objects in bulk on the driver.

A round is written once, atomically (temporary file, fsync, rename): a crash leaves either the
whole round or nothing, and writing a round that exists is refused, so budget is never spent twice.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixel_selectors.encoding import rle_decode, rle_encode

SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("round", pa.int32()),
    ("strategy", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("ys", pa.list_(pa.int32())),
    ("xs", pa.list_(pa.int32())),
    ("mask_rle", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.uint8())),
    ("num_pixels", pa.int64()),
    ("clicks", pa.float64()),
])


class LabelStoreError(ValueError):
    """A label-store operation that would lose or duplicate labels."""


@dataclass(frozen=True)
class LabeledPixels:
    """The pixels of one image labeled in one round: coordinates, the revealed classes, their cost.

    ``regions=True`` stores them as a run-length mask (labels then follow ascending flat order);
    otherwise as a point list in selection order. ``clicks`` is the annotation cost
    (``pixel_selectors.cost``: a point is one click, a region the clicks of its outline).
    """

    image_id: int
    ys: np.ndarray
    xs: np.ndarray
    labels: np.ndarray
    height: int
    width: int
    clicks: float
    regions: bool = False


def _row(p: LabeledPixels) -> dict:
    if not p.regions:
        return {"ys": np.asarray(p.ys, np.int32), "xs": np.asarray(p.xs, np.int32),
                "mask_rle": np.zeros(0, np.int32), "labels": np.asarray(p.labels, np.uint8)}
    flat = np.asarray(p.ys, np.int64) * p.width + np.asarray(p.xs, np.int64)
    order = np.argsort(flat, kind="stable")
    return {"ys": np.zeros(0, np.int32), "xs": np.zeros(0, np.int32),
            "mask_rle": rle_encode(flat[order], p.height * p.width),
            "labels": np.asarray(p.labels, np.uint8)[order]}


class LabelStore:
    """Append-only, round-by-round store of labeled target pixels for one trial."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _round_path(self, round_index: int) -> Path:
        return self.root / f"round-{round_index:04d}.parquet"

    def rounds(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.root.glob("round-*.parquet"))

    def append_round(self, round_index: int, strategy: str, labeled: Iterable[LabeledPixels]) -> Path:
        """Record one round's labels atomically; refuses a round that is already recorded."""
        final = self._round_path(round_index)
        if final.exists():
            raise LabelStoreError(f"round {round_index} is already in the label store at '{self.root}'")
        rows = sorted(labeled, key=lambda p: p.image_id)
        if len({p.image_id for p in rows}) != len(rows):
            raise LabelStoreError(f"round {round_index} names an image twice")
        encoded = [_row(p) for p in rows]
        table = pa.table({
            "image_id": pa.array([p.image_id for p in rows], pa.int64()),
            "round": pa.array([round_index] * len(rows), pa.int32()),
            "strategy": pa.array([strategy] * len(rows), pa.string()),
            "height": pa.array([p.height for p in rows], pa.int32()),
            "width": pa.array([p.width for p in rows], pa.int32()),
            **{key: pa.array([e[key] for e in encoded], SCHEMA.field(key).type)
               for key in ("ys", "xs", "mask_rle", "labels")},
            "num_pixels": pa.array([len(p.ys) for p in rows], pa.int64()),
            "clicks": pa.array([p.clicks for p in rows], pa.float64()),
        }, schema=SCHEMA)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return final

    def table(self, upto_round: int | None = None, only_round: int | None = None) -> pa.Table:
        """All rounds (or rounds <= ``upto_round``, or just ``only_round``) as one table; empty with
        the schema when none."""
        paths = [self._round_path(r) for r in self.rounds()
                 if (upto_round is None or r <= upto_round) and (only_round is None or r == only_round)]
        if not paths:
            return SCHEMA.empty_table()
        return pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in paths)

    def sparse_labels(self, upto_round: int | None = None, only_round: int | None = None
                      ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """image id -> (ys, xs, labels) over all rounds (or up to one, or of one): what training may
        see of the pool."""
        out: dict[int, list[list[np.ndarray]]] = {}
        table = self.table(upto_round, only_round)
        columns = {name: table[name].to_numpy(zero_copy_only=False)
                   for name in ("image_id", "height", "width", "ys", "xs", "mask_rle", "labels")}
        for i in range(table.num_rows):
            ys, xs = np.asarray(columns["ys"][i], np.int32), np.asarray(columns["xs"][i], np.int32)
            if len(columns["mask_rle"][i]):
                height, width = int(columns["height"][i]), int(columns["width"][i])
                flat = rle_decode(np.asarray(columns["mask_rle"][i]), height * width)
                ys, xs = (flat // width).astype(np.int32), (flat % width).astype(np.int32)
            parts = out.setdefault(int(columns["image_id"][i]), [[], [], []])
            parts[0].append(ys)
            parts[1].append(xs)
            parts[2].append(np.asarray(columns["labels"][i], np.uint8))
        return {i: tuple(np.concatenate(p) for p in parts) for i, parts in out.items()}  # type: ignore[misc]

    def labeled_coordinates(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """image id -> (ys, xs) already labeled, for selectors to exclude."""
        return {i: (ys, xs) for i, (ys, xs, _) in self.sparse_labels().items()}

    def copy_to(self, destination: str | Path, upto_round: int | None = None) -> None:
        """Copy rounds (<= ``upto_round``) into another store folder, each file atomically."""
        target = LabelStore(destination)
        target.root.mkdir(parents=True, exist_ok=True)
        for r in self.rounds():
            if upto_round is None or r <= upto_round:
                tmp = target.root / f".{self._round_path(r).name}.tmp-{os.getpid()}"
                shutil.copyfile(self._round_path(r), tmp)
                os.replace(tmp, target._round_path(r))

    def set_aside(self, keep_if_same_as: "LabelStore", folder: str = "superseded") -> list[Path]:
        """Move every round that ``keep_if_same_as`` does not hold byte for byte into ``root/folder``
        (kept, never deleted: they were paid for), so the store can take over another store's rounds.
        Returns where they went. Used when a PBT clone continues another trial with that trial's labels."""
        moved = []
        for r in self.rounds():
            mine, theirs = self._round_path(r), keep_if_same_as._round_path(r)
            if theirs.is_file() and theirs.read_bytes() == mine.read_bytes():
                continue
            aside = self.root / folder
            aside.mkdir(exist_ok=True)
            destination = aside / f"set-aside-{mine.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.parquet"
            os.replace(mine, destination)
            moved.append(destination)
        return moved

    def totals(self, upto_round: int | None = None) -> dict[str, float]:
        table = self.table(upto_round)
        return {"labeled_pixels": float(pc.sum(table["num_pixels"]).as_py() or 0),
                "clicks": float(pc.sum(table["clicks"]).as_py() or 0)}


class Oracle:
    """Reveals the ground truth of a dataset, exactly at the queried pixels and nowhere else.

    ``withheld_classes`` (class ids) are never revealed: a queried pixel of such a class is recorded
    with label 255 (ignored by training), so it is paid for, never queried again, and teaches
    nothing -- the semi-supervised setting where some classes have no target labels at all.
    """

    def __init__(self, dataset, withheld_classes: Iterable[int] = ()):
        self.dataset = dataset
        self.withheld = np.asarray(sorted(set(int(c) for c in withheld_classes)), dtype=np.uint8)

    def reveal(self, image_id: int, ys: np.ndarray, xs: np.ndarray, clicks: float | None = None,
               regions: bool = False) -> LabeledPixels:
        """The truth at (ys, xs) of one image; ``clicks`` defaults to one per pixel (points)."""
        truth = self.dataset.label(image_id)
        height, width = truth.shape
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        if len(ys) and (ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width):
            raise ValueError(f"query outside image {image_id} ({height}x{width})")
        labels = truth[ys, xs].numpy().astype(np.uint8)
        if len(self.withheld):
            labels[np.isin(labels, self.withheld)] = 255
        return LabeledPixels(image_id=int(image_id), ys=ys.astype(np.int32), xs=xs.astype(np.int32), labels=labels,
                             height=int(height), width=int(width),
                             clicks=float(len(ys) if clicks is None else clicks), regions=regions)
