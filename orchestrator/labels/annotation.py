"""Human annotation: export a round's queries, import the answers into the label store.

With ``selection.oracle: human`` a trial ranks the pool, writes the round's queries to
``<trial dir>/queries/round-NNNN.json`` and stops, waiting. People label exactly those pixels and
fill in the ``labels`` of every image; ``python -m orchestrator.annotate import`` checks the answers
against the queries and records them as the round; ``python -m orchestrator.sweep --resume`` then
trains on them and goes on.

File format (JSON, UTF-8; no pickle anywhere)::

    {"format": "activeda-queries", "version": 1, "round": 1, "strategy": "labor_ppl",
     "classes": ["road", ...],
     "images": [{"image_id": 3, "image": "<path of the pool image, for the annotation tool>",
                 "height": 64, "width": 128,
                 "original_height": 1024, "original_width": 2048,  # the original image's (and label's) size
                 "points": [[y, x], ...]          # point rules, in selection order
                 or "mask_rle": [start, length, ...],  # region rules: run-length mask
                 "clicks": 4.0,
                 "labels": [...]}]}               # the answer: one class index per point, or per mask
                                                  # pixel in ascending row-major order; 255 = unsure

``points`` and ``mask_rle`` are on the selection grid (``height x width``, the label store's
coordinates); grid pixel (y, x) stands for the original pixel under its centre,
``trainers.data.coordinates.label_coordinates`` (what the simulated oracle reveals, and where the
tool exports below put it).

The import never reads a path from the file and refuses anything that does not match the exported
queries pixel for pixel, so an answer file can neither move the budget nor point outside the pool.

Annotation tools: ``export --format labelstudio|coco|png`` writes the round's queries for Label Studio,
a COCO tool or as PNG masks, in the original image's coordinates, and ``import --format ...`` reads
their exports back through the same checks (``orchestrator.labels.formats``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestrator.labels.store import LabeledPixels, LabelStore
from pixel_selectors.encoding import rle_decode, rle_encode
from trainers.files import atomic_write_json

FORMAT, VERSION = "activeda-queries", 1
IGNORE = 255


class AnnotationError(ValueError):
    """An answer file that cannot be recorded; the message names the file and the problem."""


class AwaitingAnnotation(RuntimeError):
    """A trial stopped because a round's queries wait for human labels."""


def queries_path(trial_dir: Path, round_index: int) -> Path:
    return Path(trial_dir) / "queries" / f"round-{round_index:04d}.json"


def pending_annotations(trials_dir: Path) -> dict[str, tuple[int, Path]]:
    """trial id -> (round, queries file) of every trial whose exported queries are not answered yet."""
    pending = {}
    for trial_dir in sorted(Path(trials_dir).glob("*")):
        answered = set(LabelStore(trial_dir / "labels").rounds()) if (trial_dir / "labels").is_dir() else set()
        for path in sorted((trial_dir / "queries").glob("round-*.json")):
            round_index = int(path.stem.split("-")[1])
            if round_index not in answered:
                pending[trial_dir.name] = (round_index, path)
                break
    return pending


def export_queries(
    path: Path,
    round_index: int,
    strategy: str,
    classes: tuple[str, ...],
    queries: list[LabeledPixels],
    image_paths: dict[int, str],
) -> Path:
    """Write a round's queries (``LabeledPixels`` whose labels are not known yet) atomically."""
    images = []
    for q in sorted(queries, key=lambda q: q.image_id):
        entry = {
            "image_id": int(q.image_id),
            "image": image_paths.get(q.image_id, ""),
            "height": q.height,
            "width": q.width,
            "clicks": float(q.clicks),
            "labels": None,
        }
        if q.label_height:  # the original label's size, known to the oracle and the label store
            entry.update(original_height=q.label_height, original_width=q.label_width)
        else:
            entry.update(_original_size(image_paths.get(q.image_id, "")))
        if q.regions:
            flat = np.sort(np.asarray(q.ys, np.int64) * q.width + np.asarray(q.xs, np.int64))
            entry["mask_rle"] = rle_encode(flat, q.height * q.width).tolist()
        else:
            entry["points"] = [[int(y), int(x)] for y, x in zip(q.ys, q.xs)]
        images.append(entry)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "round": round_index,
        "strategy": strategy,
        "classes": list(classes),
        "images": images,
    }
    return atomic_write_json(path, document, indent=1)


def _original_size(image_path: str) -> dict:
    """The original image's size, for exports in its coordinates ({} when the file cannot be read)."""
    from PIL import Image

    try:
        with Image.open(image_path) as image:  # the header only
            return {"original_height": image.height, "original_width": image.width}
    except (OSError, ValueError):
        return {}


def read_queries(path: Path) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"'{path}' does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"'{path}' is not a JSON document: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != VERSION:
        raise AnnotationError(f"'{path}' is not an {FORMAT} file of version {VERSION}")
    return document


def import_answers(answers_path: Path, queries_file: Path, store: LabelStore, expected_round: int | None = None) -> int:
    """Check the answers against the exported queries and record them as that round; returns the round."""
    answers, queries = read_queries(answers_path), read_queries(queries_file)
    round_index, num_classes = queries.get("round"), len(queries["classes"])
    # The round names the label-store file it is recorded in (round-NNNN.parquet): a positive integer only.
    if (
        isinstance(round_index, bool)
        or not isinstance(round_index, int)
        or round_index < 1
        or (expected_round is not None and round_index != expected_round)
    ):
        raise AnnotationError(
            f"'{queries_file}' holds the queries of round {round_index!r}, not of round "
            f"{expected_round if expected_round is not None else '>= 1'}"
        )
    if answers.get("round") != round_index:
        raise AnnotationError(
            f"'{answers_path}' answers round {answers.get('round')}, the queries are of round {round_index}"
        )
    asked = {entry["image_id"]: entry for entry in queries["images"]}
    given = {}
    entries = answers.get("images") or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise AnnotationError(f"'{answers_path}': 'images' must be a list of objects")
    for entry in entries:
        image_id = entry.get("image_id")
        where = f"'{answers_path}', image {image_id!r}"
        # Only the exported integer ids count (True or 2.0 would otherwise match images 1 and 2).
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in asked:
            raise AnnotationError(f"{where}: not among the queried images")
        if image_id in given:
            raise AnnotationError(f"{where}: answered twice")
        query = asked[image_id]
        for key in ("height", "width", "points", "mask_rle"):
            if entry.get(key) != query.get(key):
                raise AnnotationError(f"{where}: '{key}' differs from the exported queries")
        labels = entry.get("labels")
        size = len(query["points"]) if "points" in query else int(np.sum(query["mask_rle"][1::2]))
        if not isinstance(labels, list) or len(labels) != size:
            raise AnnotationError(
                f"{where}: needs {size} labels, got "
                f"{len(labels) if isinstance(labels, list) else type(labels).__name__}"
            )
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and (0 <= v < num_classes or v == IGNORE) for v in labels
        ):
            raise AnnotationError(f"{where}: labels must be class indices 0..{num_classes - 1} or {IGNORE}")
        given[image_id] = entry
    missing = sorted(set(asked) - set(given))
    if missing:
        raise AnnotationError(
            f"'{answers_path}': images {missing[:5]}{'...' if len(missing) > 5 else ''} have no answer"
        )
    labeled = []
    for image_id, entry in sorted(given.items()):
        query = asked[image_id]  # what was asked (and what it costs) comes from the queries, not the answers
        height, width = query["height"], query["width"]
        if "points" in query:
            ys, xs = (np.asarray([p[i] for p in query["points"]], np.int32) for i in (0, 1))
        else:
            flat = rle_decode(np.asarray(query["mask_rle"]), height * width)
            ys, xs = (flat // width).astype(np.int32), (flat % width).astype(np.int32)
        labeled.append(
            LabeledPixels(
                image_id=int(image_id),
                ys=ys,
                xs=xs,
                labels=np.asarray(entry["labels"], np.uint8),
                height=height,
                width=width,
                clicks=float(query["clicks"]),
                regions="mask_rle" in query,
                label_height=int(query.get("original_height", 0)),
                label_width=int(query.get("original_width", 0)),
            )
        )
    store.append_round(round_index, str(queries["strategy"]), labeled)
    return round_index


def import_tool_answers(fmt: str, answers: Path, trial_dir: Path, round_index: int) -> int:
    """Record a round from an annotation tool's export (``fmt``: activeda, labelstudio, coco, png).

    A tool's export is first turned into the activeda answers document, kept beside the queries as
    ``round-NNNN.<fmt>-answers.json`` (what was recorded, for the record), then checked and recorded
    like a hand-written one; if it is refused, that file is removed again.
    """
    from orchestrator.labels.formats import FormatError, answers_from

    queries_file = queries_path(trial_dir, round_index)
    store = LabelStore(trial_dir / "labels")
    if fmt == "activeda":
        return import_answers(answers, queries_file, store, expected_round=round_index)
    try:
        document = answers_from(fmt, answers, read_queries(queries_file))
    except FormatError as err:
        raise AnnotationError(str(err)) from None
    converted = queries_file.with_name(f"{queries_file.stem}.{fmt}-answers.json")
    atomic_write_json(converted, document, indent=1)
    try:
        return import_answers(converted, queries_file, store, expected_round=round_index)
    except BaseException:
        converted.unlink(missing_ok=True)
        raise
