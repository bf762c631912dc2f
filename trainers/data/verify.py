"""Every file of an experiment's data decoded once, before a run writes anything.

Reading headers finds a missing label or an image that is not a PNG, but not pixel data truncated after
a valid header, nor a label whose ids the dataset's id table does not define: those used to fail
inside a Ray Train worker, minutes into a run. ``verify_splits`` decodes every image and every label
of the splits a run uses (and maps the label's ids), so each such file is named in one line up front.

Decoding a large real dataset takes a while (GTA5 has about 25,000 full-size pairs), so files that
passed once are remembered in ``<data.cache_dir>/verified-files.json`` by path, size and modification
time, and only new or changed files are decoded again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torch.utils.data import Dataset

from trainers.files import atomic_write_json

from .segmentation_pairs import read_rgb_image

VERIFIED_CACHE = "verified-files.json"
# Pillow and numpy release the GIL while they decode and map, so threads overlap the work.
VERIFY_THREADS = min(8, os.cpu_count() or 1)
PROGRESS_EVERY_S = 10.0


def _stamp(dataset: Dataset, path: str) -> str:
    """What must not change for a file to count as verified: its loader, its id mapping (a dataset YAML
    may change while the files stay), size and mtime."""
    info = os.stat(path)
    loader = getattr(dataset, "dataset", dataset)  # the loader under a SeededSubset
    return f"{type(loader).__name__}:{loader.mapping.fingerprint}:{info.st_size}:{info.st_mtime_ns}"


def _pairs(splits: dict[str, Dataset]) -> list[tuple[Dataset, int, str, str]]:
    """(split, index, image path, label path) of every item the splits use, each file pair once."""
    out, seen = [], set()
    for dataset in splits.values():
        for index in range(len(dataset)):
            image_path, label_path = dataset.files[index]  # a SeededSubset lists its own items' files
            if (image_path, label_path) not in seen:
                seen.add((image_path, label_path))
                out.append((dataset, index, image_path, label_path))
    return out


def verify_splits(
    splits: dict[str, Dataset], cache_dir: str | Path | None = None, progress: Callable[[str], None] | None = None
) -> tuple[int, int]:
    """Decode every image and label the splits use; ``DatasetError`` naming the first bad file.

    Returns (files decoded now, files known good from the cache). The cache is written only when
    every file passed, so a failed check leaves nothing behind.
    """
    cache_path = Path(cache_dir).resolve() / VERIFIED_CACHE if cache_dir else None
    known: dict[str, str] = {}
    if cache_path is not None and cache_path.is_file():
        try:
            known = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}  # a damaged cache only costs a full check
    pairs = _pairs(splits)
    todo = []
    for loader, index, image_path, label_path in pairs:
        stamps = {str(Path(path).resolve()): _stamp(loader, path) for path in (image_path, label_path)}
        if any(known.get(path) != stamp for path, stamp in stamps.items()):
            todo.append((loader, index, stamps))

    def check(item) -> dict[str, str]:
        loader, index, stamps = item
        read_rgb_image(loader.files[index][0])  # every pixel decoded: truncated data fails here
        loader.label(index)  # decoded, checked against the image's size, ids mapped (undefined ids fail)
        return stamps

    verified: dict[str, str] = {}
    last_said = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=VERIFY_THREADS)
    try:
        futures = [pool.submit(check, item) for item in todo]
        for done, future in enumerate(futures, start=1):  # in order: the first bad file is the one named
            verified.update(future.result())
            if progress is not None and time.monotonic() - last_said > PROGRESS_EVERY_S:
                progress(f"data: decoded {done}/{len(todo)} image/label pairs")
                last_said = time.monotonic()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a bad file stops the check without decoding the rest
    if verified and cache_path is not None:
        atomic_write_json(cache_path, {**known, **verified}, sort_keys=True)
    return len(todo), len(pairs) - len(todo)
