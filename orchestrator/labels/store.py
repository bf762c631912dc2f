"""The label store (what was bought, per image and round) and the oracle that reveals ground truth.

Layout: one directory per trial holding one parquet file per round, ``round-0001.parquet``, with a
row per labeled image: ``image_id, round, strategy, height, width, ys, xs, mask_rle, labels,
num_pixels, clicks, label_height, label_width``. Points are coordinate lists (``ys``, ``xs``);
regions are a run-length mask (``mask_rle``: start, length pairs over the row-major image; see
``pixel_selectors.encoding``) and ``labels`` follow the pixels in ascending flat order. Both stay
compact on disk and are never Python objects in bulk on the driver.

Coordinates are on the selection grid (``height x width``, the image as training sees it);
``label_height x label_width`` is the original label's size, so the scale is on record: grid
pixel (y, x) stands for the original pixel ``trainers.data.coordinates.label_coordinates`` gives,
which is where the oracle read its class (rounds written before these columns existed read back
with the grid size there).

A round is written once, atomically (temporary file, fsync, rename): a crash leaves either the
whole round or nothing, and writing a round that exists is refused, so budget is never spent twice.

Labels travel by reference: ranking actors and Train workers get a ``LabelReader`` (a folder, the
round numbers and the storage settings: a few hundred bytes whatever was bought) and read only the
rows of the images they work on. Rows are sorted by image id and written in row groups of
``ROWS_PER_GROUP`` images, so a reader finds an image's rows from the files' footers and reads
those row groups alone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from experiment_config.schema import ExperimentConfig
from pixel_selectors.encoding import rle_decode, rle_encode
from trainers.files import staged
from trainers.labels import LabeledArrays, TargetLabels

SCHEMA = pa.schema(
    [
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
        ("label_height", pa.int32()),
        ("label_width", pa.int32()),
    ]
)


# Images per parquet row group: the unit a reader fetches. Small, so that a Train worker reading
# one image's labels reads a few images' worth. Measured on 1024 x 2048 images with about 2% of
# their pixels labeled: one image read in 69 ms with groups of 16, 7 ms with 4, 4.5 ms with 1; the
# file grows by a third from 16 to 4 (less to compress at once) and the footer by one entry a group.
ROWS_PER_GROUP = 4

LABEL_COLUMNS = ("image_id", "height", "width", "ys", "xs", "mask_rle", "labels")


class LabelStoreError(ValueError):
    """A label-store operation that would lose or duplicate labels."""


@dataclass(frozen=True)
class LabeledPixels:
    """The pixels of one image labeled in one round: coordinates, the revealed classes, their cost.

    ``regions=True`` stores them as a run-length mask (labels then follow ascending flat order);
    otherwise as a point list in selection order. ``clicks`` is the annotation cost
    (``pixel_selectors.cost``: a point is one click, a region the clicks of its outline).
    ``ys, xs`` are on the ``height x width`` grid; ``label_height x label_width`` is the original
    label's size (0: the grid's).
    """

    image_id: int
    ys: np.ndarray
    xs: np.ndarray
    labels: np.ndarray
    height: int
    width: int
    clicks: float
    regions: bool = False
    label_height: int = 0
    label_width: int = 0

    @property
    def label_size(self) -> tuple[int, int]:
        return self.label_height or self.height, self.label_width or self.width


def _row(p: LabeledPixels) -> dict:
    if not p.regions:
        return {
            "ys": np.asarray(p.ys, np.int32),
            "xs": np.asarray(p.xs, np.int32),
            "mask_rle": np.zeros(0, np.int32),
            "labels": np.asarray(p.labels, np.uint8),
        }
    flat = np.asarray(p.ys, np.int64) * p.width + np.asarray(p.xs, np.int64)
    order = np.argsort(flat, kind="stable")
    return {
        "ys": np.zeros(0, np.int32),
        "xs": np.zeros(0, np.int32),
        "mask_rle": rle_encode(flat[order], p.height * p.width),
        "labels": np.asarray(p.labels, np.uint8)[order],
    }


def _chunks(items: Iterable, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rows_table(rows: list[LabeledPixels], round_index: int, strategy: str) -> pa.Table:
    encoded = [_row(p) for p in rows]
    return pa.table(
        {
            "image_id": pa.array([p.image_id for p in rows], pa.int64()),
            "round": pa.array([round_index] * len(rows), pa.int32()),
            "strategy": pa.array([strategy] * len(rows), pa.string()),
            "height": pa.array([p.height for p in rows], pa.int32()),
            "width": pa.array([p.width for p in rows], pa.int32()),
            **{
                key: pa.array([e[key] for e in encoded], SCHEMA.field(key).type)
                for key in ("ys", "xs", "mask_rle", "labels")
            },
            "num_pixels": pa.array([len(p.ys) for p in rows], pa.int64()),
            "clicks": pa.array([p.clicks for p in rows], pa.float64()),
            "label_height": pa.array([p.label_size[0] for p in rows], pa.int32()),
            "label_width": pa.array([p.label_size[1] for p in rows], pa.int32()),
        },
        schema=SCHEMA,
    )


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
        """Record one round's labels atomically; refuses a round that is already recorded.

        ``labeled``: a list (sorted here by image id), or any other iterable that yields images in
        ascending id order (a generator: rows are then encoded and written ``ROWS_PER_GROUP`` at a
        time, so a large round never sits in memory whole). An image named twice, or a stream out of
        order, is refused and nothing is written.
        """
        final = self._round_path(round_index)
        if final.exists():
            raise LabelStoreError(f"round {round_index} is already in the label store at '{self.root}'")
        if isinstance(labeled, (list, tuple)):
            labeled = sorted(labeled, key=lambda p: p.image_id)
        try:  # never over a round that exists, even one another writer recorded meanwhile
            with staged(final, fsync=True, overwrite=False) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
                previous = None
                for chunk in _chunks(labeled, ROWS_PER_GROUP):
                    for p in chunk:
                        if previous is not None and p.image_id <= previous:
                            raise LabelStoreError(
                                f"round {round_index} names an image twice"
                                if p.image_id == previous
                                else f"round {round_index}: images must come in ascending id order"
                            )
                        previous = p.image_id
                    writer.write_table(_rows_table(chunk, round_index, strategy), row_group_size=ROWS_PER_GROUP)
        except FileExistsError:
            raise LabelStoreError(f"round {round_index} is already in the label store at '{self.root}'") from None
        return final

    def table(self, upto_round: int | None = None, only_round: int | None = None) -> pa.Table:
        """All rounds (or rounds <= ``upto_round``, or just ``only_round``) as one table; empty with
        the schema when none."""
        paths = [
            self._round_path(r)
            for r in self.rounds()
            if (upto_round is None or r <= upto_round) and (only_round is None or r == only_round)
        ]
        if not paths:
            return SCHEMA.empty_table()
        table = pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in paths)
        for label_key, grid_key in (("label_height", "height"), ("label_width", "width")):
            column = pc.coalesce(table[label_key], table[grid_key])  # rounds written before the column
            table = table.set_column(table.schema.get_field_index(label_key), label_key, column)
        return table

    def sparse_labels(
        self, upto_round: int | None = None, only_round: int | None = None
    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """image id -> (ys, xs, labels) over all rounds (or up to one, or of one): what training may
        see of the pool. Reads everything: for a few images, use ``reader(...).read(ids)``."""
        return _join_rounds(_decode_rows(self.table(upto_round, only_round)))

    def labeled_coordinates(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """image id -> (ys, xs) already labeled, for rules to exclude."""
        return {i: (ys, xs) for i, (ys, xs, _) in self.sparse_labels().items()}

    def reader(
        self, upto_round: int | None = None, only_round: int | None = None, storage: dict[str, Any] | None = None
    ) -> LabelReader:
        """A by-reference reader of the rounds that exist now (<= ``upto_round``, or just
        ``only_round``); ``storage`` (``output_dir`` and the ``storage`` section of a config) lets a
        process on another node fetch the round files from ``storage.uri``."""
        rounds = [
            r
            for r in self.rounds()
            if (upto_round is None or r <= upto_round) and (only_round is None or r == only_round)
        ]
        return LabelReader(self.root.resolve(), rounds, storage)

    def image_ids(self, round_index: int) -> np.ndarray:
        """The ids of the images labeled in one round (one column of one file)."""
        path = self._round_path(round_index)
        if not path.is_file():
            return np.zeros(0, np.int64)
        return pq.read_table(path, columns=["image_id"])["image_id"].to_numpy()

    def copy_to(self, destination: str | Path, upto_round: int | None = None) -> None:
        """Copy rounds (<= ``upto_round``) into another store folder, each file atomically."""
        target = LabelStore(destination)
        target.root.mkdir(parents=True, exist_ok=True)
        for r in self.rounds():
            if upto_round is None or r <= upto_round:
                with staged(target._round_path(r)) as tmp:
                    shutil.copyfile(self._round_path(r), tmp)

    def set_aside(self, keep_if_same_as: LabelStore, folder: str = "superseded") -> list[Path]:
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
        paths = [self._round_path(r) for r in self.rounds() if upto_round is None or r <= upto_round]
        columns = ["num_pixels", "clicks"]  # two numbers a row: never the pixels themselves
        table = (
            pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)
            if paths
            else SCHEMA.empty_table().select(columns)
        )
        return {
            "labeled_pixels": float(pc.sum(table["num_pixels"]).as_py() or 0),
            "clicks": float(pc.sum(table["clicks"]).as_py() or 0),
        }


def storage_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a ``LabelReader`` on another node needs to fetch round files: ``output_dir`` and the
    ``storage`` section (plain values: what ``orchestrator.cluster.storage.open_storage`` reads)."""
    return {"output_dir": cfg.output_dir, "storage": dataclasses.asdict(cfg.storage)}


def _decode_rows(
    table: pa.Table, with_labels: bool = True
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(image id, ys, xs, labels) of every row, in row order; regions decoded from their run lengths."""
    columns = {
        name: table[name].to_numpy(zero_copy_only=False) for name in LABEL_COLUMNS if with_labels or name != "labels"
    }
    rows = []
    for i in range(table.num_rows):
        ys, xs = np.asarray(columns["ys"][i], np.int32), np.asarray(columns["xs"][i], np.int32)
        if len(columns["mask_rle"][i]):
            height, width = int(columns["height"][i]), int(columns["width"][i])
            flat = rle_decode(np.asarray(columns["mask_rle"][i]), height * width)
            ys, xs = (flat // width).astype(np.int32), (flat % width).astype(np.int32)
        labels = np.asarray(columns["labels"][i], np.uint8) if with_labels else None
        rows.append((int(columns["image_id"][i]), ys, xs, labels))
    return rows


def _join_rounds(rows) -> dict[int, tuple]:
    """Rows of several rounds (in round order) -> image id -> the concatenated arrays."""
    parts: dict[int, list[list[np.ndarray]]] = {}
    for image_id, *arrays in rows:
        entry = parts.setdefault(image_id, [[] for _ in arrays])
        for target, array in zip(entry, arrays):
            target.append(array)
    return {i: tuple(np.concatenate(p) if p[0] is not None else None for p in entry) for i, entry in parts.items()}


class LabelReader(TargetLabels):
    """A trial's labels by reference: reads the rows of the images asked for, in the process that asks.

    The implementation of ``trainers.labels.TargetLabels`` that Train workers (``TrainJob.labels``)
    and ranking actors receive.

    What crosses Ray is this object's state: the store folder (a path under ``output_dir``, the same
    on every node), the round numbers and the storage settings -- never the labels, so a message to
    a ranking actor or a Train worker is the same size whatever was bought. Round files are opened
    lazily, once per process (a forked or unpickled copy opens its own). On a node that lacks a round
    file it is fetched from ``storage.uri`` (write-once files; an atomic download); a round that is
    neither here nor there is an error, never an image trained without its labels.
    """

    def __init__(self, root: str | Path, rounds: Sequence[int], storage: dict[str, Any] | None = None):
        self.root = str(root)
        self.rounds = tuple(int(r) for r in rounds)
        self.storage = storage
        self._files: list[tuple[pq.ParquetFile, np.ndarray, np.ndarray]] | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"root": self.root, "rounds": self.rounds, "storage": self.storage}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["rounds"], state["storage"])

    def __repr__(self) -> str:
        return f"LabelReader({self.root!r}, rounds={list(self.rounds)})"

    def _open(self) -> list[tuple[pq.ParquetFile, np.ndarray, np.ndarray]]:
        if self._files is not None and self._pid == os.getpid():
            return self._files
        files = []
        for round_index in self.rounds:
            path = Path(self.root) / f"round-{round_index:04d}.parquet"
            if not path.is_file() and self.storage:
                from orchestrator.cluster.storage import (
                    open_storage,  # only when a node lacks the file
                )

                open_storage(self.storage).pull(path)
            if not path.is_file():
                raise LabelStoreError(
                    f"round {round_index} of the label store '{self.root}' is missing on this node"
                    + (" and in storage.uri" if self.storage else "")
                )
            handle = pq.ParquetFile(path)
            files.append((handle, *_image_id_ranges(handle)))
        self._files, self._pid = files, os.getpid()
        return files

    def read(self, image_ids: Iterable[int], with_labels: bool = True) -> dict[int, LabeledArrays]:
        """image id -> (ys, xs, labels) over the reader's rounds, for the ids that have labels; reads
        only the row groups that can hold them. ``with_labels=False``: labels are None."""
        wanted = np.unique(np.asarray(list(image_ids), dtype=np.int64))
        if not len(wanted):
            return {}
        columns = [c for c in LABEL_COLUMNS if with_labels or c != "labels"]
        rows = []
        for handle, lowest, highest in self._open():
            groups = [g for g in range(len(lowest)) if np.any((wanted >= lowest[g]) & (wanted <= highest[g]))]
            if not groups:
                continue
            table = handle.read_row_groups(groups, columns=columns)
            table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(wanted, pa.int64())))
            rows.extend(_decode_rows(table, with_labels))
        return _join_rounds(rows)


def _image_id_ranges(handle: pq.ParquetFile) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) image id of each row group, from the footer's statistics."""
    column = handle.schema_arrow.get_field_index("image_id")
    lowest, highest = [], []
    for g in range(handle.metadata.num_row_groups):
        stats = handle.metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:  # a file without statistics: read the ids themselves
            ids = handle.read_row_group(g, columns=["image_id"])["image_id"].to_numpy()
            lowest.append(ids.min() if len(ids) else 0)
            highest.append(ids.max() if len(ids) else -1)
        else:
            lowest.append(stats.min)
            highest.append(stats.max)
    return np.asarray(lowest, np.int64), np.asarray(highest, np.int64)
