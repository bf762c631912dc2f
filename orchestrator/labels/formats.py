"""A round's queries for annotation tools, and their answers back: Label Studio, COCO, PNG masks.

Exports (``python -m orchestrator.annotate export --format ...``) turn the queries file of a round
(``orchestrator.labels.annotation``: points, or a run-length mask of regions, on the selection grid) into what people
label with, **in the original image's coordinates**:

- ``labelstudio``: ``tasks.json`` (one task per image, the queries as pre-annotations labeled
  ``unsure``: key points, or one brush mask in Label Studio's RLE) and ``labeling_config.xml``
  (the class names in the Cityscapes palette);
- ``coco``: ``coco.json`` with the queries as keypoints (point rules) or as a compressed RLE
  mask (region rules, written by pycocotools), category ``unsure``;
- ``png``: ``masks/<image id>.png``, 255 on the queried pixels, 0 elsewhere, and ``images.csv``.

Imports (``annotate import --format ...``) read what the tool exports after people labeled
(a Label Studio JSON export, a COCO file with one category per class whose masks pycocotools reads
as polygons or RLE, or a folder of label-map PNGs
``<image id>.png`` holding class indices) and turn it into the activeda answers document, which then
goes through the same checks as a hand-written one (``annotate.import_answers``). Every queried
pixel needs an answer (a class, or ``unsure`` / 255); a point that moved off its queried pixel, an
image that was not queried, a label the class list lacks or a missing image refuses the whole file.
Labels painted outside the queried pixels are not recorded: nothing moves the budget.

The grid -> original mapping is ``grid_to_original`` (cell centres; identity when the queries file
gives no original size).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.labels import FORMATS
from pixel_selectors.encoding import rle_decode
from trainers.data.coordinates import label_coordinates
from trainers.data.palette import class_palette
from trainers.files import atomic_write_json, atomic_write_text, staged

UNSURE = "unsure"
IGNORE = 255


class FormatError(ValueError):
    """An annotation-tool file that cannot be turned into answers; names the file and the problem."""


# ------------------------------------------------------------------------ grid <-> original image


def original_size(entry: dict) -> tuple[int, int]:
    """(H, W) of the original image of a queries entry (the grid size when the file does not say)."""
    return int(entry.get("original_height", entry["height"])), int(entry.get("original_width", entry["width"]))


def grid_to_original(ys, xs, grid: tuple[int, int], original: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The original-image pixel at the centre of each grid pixel (the grid is the original resized):
    the project's one mapping, the one the simulated oracle reads labels at."""
    return label_coordinates(ys, xs, grid, original)


def original_to_grid(oys, oxs, grid: tuple[int, int], original: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The grid pixel an original-image position (float pixels allowed) falls in."""
    (h, w), (big_h, big_w) = grid, original
    oys, oxs = np.asarray(oys, float), np.asarray(oxs, float)
    return np.floor(oys * h / big_h).astype(np.int64), np.floor(oxs * w / big_w).astype(np.int64)


def grid_mask_to_original(mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A (h, w) bool grid mask as an (H, W) mask of the original image (each original pixel takes its
    grid cell's value, the nearest-neighbour resize)."""
    h, w = mask.shape
    big_h, big_w = original
    rows = np.minimum(np.arange(big_h) * h // big_h, h - 1)
    cols = np.minimum(np.arange(big_w) * w // big_w, w - 1)
    return mask[rows[:, None], cols[None, :]]


def queried_pixels(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """The queried grid pixels of an entry, in the order its ``labels`` follow: points as exported,
    a region mask in ascending row-major order."""
    if "points" in entry:
        points = np.asarray(entry["points"], np.int64).reshape(-1, 2)
        return points[:, 0], points[:, 1]
    flat = rle_decode(np.asarray(entry["mask_rle"]), entry["height"] * entry["width"])
    return flat // entry["width"], flat % entry["width"]


def _grid_mask(entry: dict) -> np.ndarray:
    mask = np.zeros((entry["height"], entry["width"]), bool)
    ys, xs = queried_pixels(entry)
    mask[ys, xs] = True
    return mask


# ---------------------------------------------------------------------- Label Studio brush RLE
# Label Studio stores brush masks as the RGBA bytes of the image (4 per pixel, row-major), packed with
# the run-length bit format of thi.ng's rle-pack: a 32-bit count, a 5-bit word size - 1, four 4-bit run
# sizes - 1, then per chunk a flag bit (1: a run of one word, 0: literal words), a 2-bit index into the
# run sizes, the chunk length - 1 in that many bits, and the word(s). Bits are most significant first.


class _BitWriter:
    def __init__(self):
        self.bits: list[str] = []

    def write(self, value: int, size: int) -> None:
        self.bits.append(format(value, f"0{size}b"))

    def bytes(self) -> list[int]:
        text = "".join(self.bits)
        text += "0" * (-len(text) % 8)
        return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


class _BitReader:
    def __init__(self, data: Sequence[int]):
        self.text = "".join(format(int(b), "08b") for b in data)
        self.pos = 0

    def read(self, size: int) -> int:
        if self.pos + size > len(self.text):
            raise ValueError("the RLE data ends early")
        value = int(self.text[self.pos : self.pos + size], 2) if size else 0
        self.pos += size
        return value


_RUN_BITS = 16  # every run is written with 16-bit lengths (runs are split at 65536)


def brush_rle_encode(mask: np.ndarray) -> list[int]:
    """A bool (H, W) mask as Label Studio brush RLE (alpha and colour 255 on the mask, 0 elsewhere)."""
    values = np.repeat(np.where(np.asarray(mask, bool).ravel(), 255, 0).astype(np.int64), 4)
    writer = _BitWriter()
    writer.write(len(values), 32)
    writer.write(8 - 1, 5)
    for _ in range(4):
        writer.write(_RUN_BITS - 1, 4)
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(values)]])
    for start, end in zip(starts, ends):
        while start < end:
            length = min(end - start, 1 << _RUN_BITS)
            writer.write(1, 1)
            writer.write(0, 2)
            writer.write(length - 1, _RUN_BITS)
            writer.write(int(values[start]), 8)
            start += length
    return writer.bytes()


def brush_rle_decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> bool (H, W) mask (a pixel is on when its alpha byte is not 0)."""
    reader = _BitReader(rle)
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if count != height * width * 4:
        raise ValueError(f"the RLE holds {count} bytes, not the {height}x{width}x4 of the image")
    out = np.zeros(count, np.int64)
    i = 0
    while i < count:
        repeat = reader.read(1)
        end = i + 1 + reader.read(sizes[reader.read(2)])
        if end > count:
            raise ValueError("a run goes past the end of the image")
        if repeat:
            out[i:end] = reader.read(word)
            i = end
        else:
            while i < end:
                out[i] = reader.read(word)
                i += 1
    return out.reshape(height, width, 4)[..., 3] > 0


# ------------------------------------------------------------------------------- COCO masks
# COCO's own reader and writer (pycocotools) handle every form of segmentation a COCO tool writes:
# polygons, uncompressed RLE (a list of counts) and compressed RLE (a string).


def coco_rle_encode(mask: np.ndarray) -> dict:
    """A bool (H, W) mask as COCO's compressed RLE (``counts`` a string), written by pycocotools."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_mask_decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation -> bool (H, W) mask, read by pycocotools: polygons ``[[x, y, ...], ...]``,
    uncompressed RLE ``{"size", "counts": [...]}`` or compressed RLE ``{"size", "counts": "..."}``.
    Raises ValueError naming what is wrong (a size that is not the image's, counts that do not cover
    it, a polygon with fewer than 3 points)."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        if not segmentation or not all(
            isinstance(p, list)
            and len(p) >= 6
            and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
            for p in segmentation
        ):
            raise ValueError("polygons must be lists [x1, y1, x2, y2, ...] of at least 3 points")
        rle = coco_mask.merge(coco_mask.frPyObjects([[float(v) for v in p] for p in segmentation], height, width))
        return coco_mask.decode(rle).astype(bool)
    if not isinstance(segmentation, dict):
        raise ValueError("a segmentation is a list of polygons or an RLE object {size, counts}")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(f"mask size {size} is not the image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise ValueError(f"the RLE counts cover {sum(counts)} pixels, not {height * width}")
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return coco_mask.decode(rle).astype(bool)
    if not isinstance(counts, str) or not counts.isascii():
        raise ValueError("RLE counts must be a list of integers or a compressed RLE string")
    rle = {"size": [height, width], "counts": counts.encode("ascii")}
    mask = coco_mask.decode(rle)  # refuses counts that run past the image
    # Counts that stop short of the image leave part of the decoded mask undefined: a string that
    # covers the image exactly is the one pycocotools writes back for the mask it decoded.
    if coco_mask.encode(np.asfortranarray(mask))["counts"] != rle["counts"]:
        raise ValueError(f"the compressed RLE does not cover the {height}x{width} image exactly")
    return mask.astype(bool)


# -------------------------------------------------------------------------------------- exports


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def export_label_studio(queries: dict, out_dir: Path, image_url_prefix: str = "") -> list[Path]:
    """``tasks.json`` and ``labeling_config.xml`` for a Label Studio project."""
    classes = list(queries["classes"])
    regions = any("mask_rle" in entry for entry in queries["images"])
    tag, kind = ("BrushLabels", "brushlabels") if regions else ("KeyPointLabels", "keypointlabels")
    colours = class_palette(classes)
    labels = "\n".join(
        f'    <Label value="{name}" background="{_hex(colour)}"/>' for name, colour in zip(classes, colours)
    )
    config = (
        f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <{tag} name="label" toName="image">\n'
        f'{labels}\n    <Label value="{UNSURE}" background="#ffffff"/>\n  </{tag}>\n</View>\n'
    )
    tasks = []
    for entry in queries["images"]:
        big_h, big_w = original_size(entry)
        common = {
            "from_name": "label",
            "to_name": "image",
            "type": kind,
            "original_width": big_w,
            "original_height": big_h,
            "image_rotation": 0,
        }
        if regions:
            mask = grid_mask_to_original(_grid_mask(entry), (big_h, big_w))
            results = [
                {**common, "id": "query", "value": {"format": "rle", "rle": brush_rle_encode(mask), kind: [UNSURE]}}
            ]
        else:
            ys, xs = queried_pixels(entry)
            oys, oxs = grid_to_original(ys, xs, (entry["height"], entry["width"]), (big_h, big_w))
            # Percentages of the image; the point sits at the centre of its original pixel.
            results = [
                {
                    **common,
                    "id": f"q{k}",
                    "value": {
                        "x": 100 * (ox + 0.5) / big_w,
                        "y": 100 * (oy + 0.5) / big_h,
                        "width": 0.4,
                        kind: [UNSURE],
                    },
                }
                for k, (oy, ox) in enumerate(zip(oys.tolist(), oxs.tolist()))
            ]
        tasks.append(
            {
                "data": {
                    "image": image_url_prefix + str(entry.get("image", "")),
                    "activeda_image_id": entry["image_id"],
                    "activeda_round": queries["round"],
                },
                "predictions": [
                    {"model_version": f"activeda-{queries['strategy']}-round-{queries['round']}", "result": results}
                ],
            }
        )
    return [
        atomic_write_json(out_dir / "tasks.json", tasks, indent=1),
        atomic_write_text(out_dir / "labeling_config.xml", config),
    ]


def _coco_categories(classes: Sequence[str]) -> list[dict]:
    # COCO ids start at 1: class k is id k + 1; 'unsure' comes last.
    return [{"id": k + 1, "name": name, "supercategory": "class"} for k, name in enumerate(classes)] + [
        {"id": len(classes) + 1, "name": UNSURE, "supercategory": "query"}
    ]


def export_coco(queries: dict, out_dir: Path) -> list[Path]:
    """``coco.json``: the queries as keypoints or a compressed RLE mask of category ``unsure``."""
    classes = list(queries["classes"])
    unsure_id = len(classes) + 1
    images, annotations = [], []
    for entry in queries["images"]:
        big_h, big_w = original_size(entry)
        images.append(
            {"id": entry["image_id"], "file_name": str(entry.get("image", "")), "width": big_w, "height": big_h}
        )
        annotation = {"id": len(annotations) + 1, "image_id": entry["image_id"], "category_id": unsure_id, "iscrowd": 0}
        if "mask_rle" in entry:
            from pycocotools import mask as coco_mask

            rle = coco_rle_encode(grid_mask_to_original(_grid_mask(entry), (big_h, big_w)))
            encoded = {**rle, "counts": rle["counts"].encode("ascii")}
            annotation.update(
                segmentation=rle,
                area=int(coco_mask.area(encoded)),
                bbox=[float(v) for v in coco_mask.toBbox(encoded)],
            )
        else:
            ys, xs = queried_pixels(entry)
            oys, oxs = grid_to_original(ys, xs, (entry["height"], entry["width"]), (big_h, big_w))
            keypoints = [v for oy, ox in zip(oys.tolist(), oxs.tolist()) for v in (ox + 0.5, oy + 0.5, 2)]
            annotation.update(
                keypoints=keypoints,
                num_keypoints=len(ys),
                area=0,
                bbox=[float(oxs.min()), float(oys.min()), float(np.ptp(oxs) + 1), float(np.ptp(oys) + 1)],
            )
        annotations.append(annotation)
    document = {
        "info": {
            "description": f"activeda queries of round {queries['round']}",
            "activeda_round": queries["round"],
            "activeda_strategy": queries["strategy"],
        },
        "images": images,
        "annotations": annotations,
        "categories": _coco_categories(classes),
    }
    return [atomic_write_json(out_dir / "coco.json", document)]


def export_png_masks(queries: dict, out_dir: Path) -> list[Path]:
    """``masks/<image id>.png`` (255: queried, 0: not), original size, and ``images.csv``."""
    from PIL import Image

    written = []
    for entry in queries["images"]:
        mask = grid_mask_to_original(_grid_mask(entry), original_size(entry))
        path = out_dir / "masks" / f"{entry['image_id']:05d}.png"
        with staged(path) as tmp:
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp)
        written.append(path)
    listing = out_dir / "images.csv"
    rows = [["image_id", "mask", "image"]] + [
        [e["image_id"], f"masks/{e['image_id']:05d}.png", e.get("image", "")] for e in queries["images"]
    ]
    with staged(listing) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return written + [listing]


def export(queries: dict, fmt: str, out_dir: Path, image_url_prefix: str = "") -> list[Path]:
    if fmt == "labelstudio":
        return export_label_studio(queries, out_dir, image_url_prefix)
    if fmt == "coco":
        return export_coco(queries, out_dir)
    if fmt == "png":
        return export_png_masks(queries, out_dir)
    raise FormatError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")


# -------------------------------------------------------------------------------------- imports


def _answers(queries: dict, labels: dict[int, list[int]]) -> dict:
    """The activeda answers document: the queries with each image's labels filled in."""
    images = [{**entry, "labels": labels[entry["image_id"]]} for entry in queries["images"]]
    return {**queries, "images": images}


def _label_index(name: Any, classes: Sequence[str], where: str) -> int:
    if name == UNSURE:
        return IGNORE
    if name not in classes:
        raise FormatError(f"{where}: label {name!r} is not a class ({', '.join(classes)}) or '{UNSURE}'")
    return classes.index(name)


def _check_ids(given: Iterable[Any], queries: dict, where: str) -> dict[int, dict]:
    asked = {entry["image_id"]: entry for entry in queries["images"]}
    seen = set()
    for image_id in given:
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in asked:
            raise FormatError(f"{where}, image {image_id!r}: not among the queried images")
        if image_id in seen:
            raise FormatError(f"{where}, image {image_id!r}: answered twice")
        seen.add(image_id)
    missing = sorted(set(asked) - seen)
    if missing:
        raise FormatError(f"{where}: images {missing[:5]}{'...' if len(missing) > 5 else ''} have no answer")
    return asked


def _point_labels(entry: dict, marks: list[tuple[float, float, int]], where: str) -> list[int]:
    """Match marked positions (original-image x, y, label) to the queried points: each mark must fall
    in a queried grid pixel, each queried pixel must get exactly one mark."""
    ys, xs = queried_pixels(entry)
    index = {(int(y), int(x)): k for k, (y, x) in enumerate(zip(ys, xs))}
    labels: list[int | None] = [None] * len(index)
    grid, big = (entry["height"], entry["width"]), original_size(entry)
    for x, y, label in marks:
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < big[1] and 0 <= y < big[0]):
            raise FormatError(f"{where}: a point at ({x}, {y}) lies outside the {big[1]}x{big[0]} image")
        gy, gx = (int(v[0]) for v in original_to_grid([y], [x], grid, big))
        k = index.get((gy, gx))
        if k is None:
            raise FormatError(f"{where}: a point at x={x:.1f}, y={y:.1f} is not on a queried pixel (moved or added)")
        if labels[k] is not None:
            raise FormatError(f"{where}: the queried point at x={x:.1f}, y={y:.1f} is answered twice")
        labels[k] = label
    missing = [k for k, value in enumerate(labels) if value is None]
    if missing:
        y, x = grid_to_original([ys[missing[0]]], [xs[missing[0]]], grid, big)
        raise FormatError(
            f"{where}: {len(missing)} queried point(s) have no answer, e.g. at x={int(x[0])}, "
            f"y={int(y[0])}: label it, or give it '{UNSURE}'"
        )
    return labels  # type: ignore[return-value]


def _mask_labels(entry: dict, label_map: np.ndarray, where: str) -> list[int]:
    """Labels of the queried pixels from an (H, W) map of the original image (-1: no answer)."""
    ys, xs = queried_pixels(entry)
    oys, oxs = grid_to_original(ys, xs, (entry["height"], entry["width"]), original_size(entry))
    values = label_map[oys, oxs]
    if (values < 0).any():
        k = int(np.flatnonzero(values < 0)[0])
        raise FormatError(
            f"{where}: {int((values < 0).sum())} queried pixel(s) have no answer, e.g. at "
            f"x={int(oxs[k])}, y={int(oys[k])}: paint them with a class or '{UNSURE}'"
        )
    return [int(v) for v in values]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"'{path}' does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"'{path}' is not a JSON document: {err}") from None


def answers_from_label_studio(path: Path, queries: dict) -> dict:
    """A Label Studio JSON export (a list of tasks, each with one annotation) -> answers."""
    tasks = _read_json(path)
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise FormatError(f"'{path}' is not a Label Studio JSON export (a list of tasks)")
    classes = list(queries["classes"])
    by_id = {}
    for number, task in enumerate(tasks, start=1):
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if data.get("activeda_round") != queries["round"]:
            raise FormatError(
                f"'{path}' task {number}: it belongs to round {data.get('activeda_round')!r}, the "
                f"queries are of round {queries['round']}"
            )
        by_id.setdefault(data.get("activeda_image_id"), []).append(task)
    asked = _check_ids([key for key, group in by_id.items() for _ in group], queries, f"'{path}'")
    labels = {}
    for image_id, (task,) in by_id.items():
        entry, where = asked[image_id], f"'{path}', image {image_id}"
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if len(annotations) != 1:
            raise FormatError(f"{where}: needs exactly one annotation, has {len(annotations)}")
        results = annotations[0].get("result") or []
        big_h, big_w = original_size(entry)
        if "points" in entry:
            marks = []
            for result in results:
                value = result.get("value") or {}
                names = value.get("keypointlabels") or []
                if result.get("type") != "keypointlabels" or len(names) != 1:
                    raise FormatError(
                        f"{where}: every result must be one key point with one label, got {result.get('type')!r}"
                    )
                marks.append(
                    (
                        float(value["x"]) * big_w / 100,
                        float(value["y"]) * big_h / 100,
                        _label_index(names[0], classes, where),
                    )
                )
            labels[image_id] = _point_labels(entry, marks, where)
        else:
            label_map = np.full((big_h, big_w), -1, np.int64)
            for result in results:  # in painting order: a later stroke covers an earlier one
                value = result.get("value") or {}
                names = value.get("brushlabels") or []
                if result.get("type") != "brushlabels" or value.get("format") != "rle" or len(names) != 1:
                    raise FormatError(f"{where}: every result must be one brush mask (RLE) with one label")
                if (result.get("original_height"), result.get("original_width")) != (big_h, big_w):
                    raise FormatError(
                        f"{where}: a brush mask is {result.get('original_width')}x"
                        f"{result.get('original_height')}, the image {big_w}x{big_h}"
                    )
                try:
                    mask = brush_rle_decode(value["rle"], big_h, big_w)
                except (ValueError, TypeError) as err:
                    raise FormatError(f"{where}: a brush mask cannot be decoded: {err}") from None
                label_map[mask] = _label_index(names[0], classes, where)
            labels[image_id] = _mask_labels(entry, label_map, where)
    return _answers(queries, labels)


def answers_from_coco(path: Path, queries: dict) -> dict:
    """A COCO file whose categories are the classes (by name; ``unsure`` allowed) -> answers: keypoints
    for point queries; masks (polygons, uncompressed or compressed RLE) for region queries, later
    annotations covering earlier ones."""
    document = _read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        raise FormatError(f"'{path}' is not a COCO document (no 'annotations' list)")
    if (document.get("info") or {}).get("activeda_round") not in (None, queries["round"]):
        raise FormatError(
            f"'{path}' answers round {document['info']['activeda_round']}, the queries are of round {queries['round']}"
        )
    classes = list(queries["classes"])
    names = {c.get("id"): c.get("name") for c in document.get("categories") or [] if isinstance(c, dict)}
    image_sizes = {
        i.get("id"): (i.get("height"), i.get("width")) for i in document.get("images") or [] if isinstance(i, dict)
    }
    asked = _check_ids(list(image_sizes), queries, f"'{path}'")
    per_image: dict[int, list[dict]] = {image_id: [] for image_id in asked}
    for annotation in document["annotations"]:
        if not isinstance(annotation, dict) or annotation.get("image_id") not in per_image:
            raise FormatError(
                f"'{path}': an annotation names image {annotation.get('image_id')!r}, which was not queried"
            )
        per_image[annotation["image_id"]].append(annotation)
    labels = {}
    for image_id, entry in asked.items():
        where = f"'{path}', image {image_id}"
        big_h, big_w = original_size(entry)
        if tuple(image_sizes[image_id]) != (big_h, big_w):
            raise FormatError(
                f"{where}: size {image_sizes[image_id][1]}x{image_sizes[image_id][0]} is not the "
                f"image's {big_w}x{big_h}"
            )
        if "points" in entry:
            marks = []
            for annotation in per_image[image_id]:
                label = _label_index(names.get(annotation.get("category_id")), classes, where)
                keypoints = annotation.get("keypoints")
                if not isinstance(keypoints, list) or len(keypoints) % 3:
                    raise FormatError(f"{where}: an annotation has no keypoints [x, y, v, ...]")
                marks += [
                    (float(x), float(y), label)
                    for x, y, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3])
                    if v
                ]
            labels[image_id] = _point_labels(entry, marks, where)
        else:
            label_map = np.full((big_h, big_w), -1, np.int64)
            for annotation in per_image[image_id]:
                label = _label_index(names.get(annotation.get("category_id")), classes, where)
                try:
                    mask = coco_mask_decode(annotation.get("segmentation"), big_h, big_w)
                except (ValueError, TypeError) as err:
                    raise FormatError(f"{where}: a mask cannot be read: {err}") from None
                label_map[mask] = label
            labels[image_id] = _mask_labels(entry, label_map, where)
    return _answers(queries, labels)


def answers_from_png(folder: Path, queries: dict) -> dict:
    """A folder of label maps ``<image id>.png`` (class index per pixel, 255 unsure; the original size
    or the grid size) -> answers. A file for an image that was not queried refuses the folder."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FormatError(f"'{folder}' is not a folder of label-map PNGs")
    files = {}
    for path in sorted(folder.glob("*.png")):
        try:
            files[int(path.stem)] = path
        except ValueError:
            raise FormatError(f"'{path}': label maps are named <image id>.png, e.g. 00003.png") from None
    asked = _check_ids(list(files), queries, f"'{folder}'")
    classes = list(queries["classes"])
    labels = {}
    for image_id, path in files.items():
        entry, where = asked[image_id], f"'{path}'"
        try:
            with Image.open(path) as image:
                if image.mode not in ("L", "P"):
                    raise FormatError(f"{where}: a label map is a single-channel 8-bit PNG, this one is {image.mode}")
                label_map = np.asarray(image, dtype=np.int64)
        except (OSError, UnidentifiedImageError) as err:
            raise FormatError(f"{where}: cannot read it: {err}") from None
        big, grid = original_size(entry), (entry["height"], entry["width"])
        if label_map.shape == grid and grid != big:
            label_map = grid_mask_to_original(label_map, big)
        if label_map.shape != big:
            raise FormatError(
                f"{where}: {label_map.shape[1]}x{label_map.shape[0]} is neither the image's "
                f"{big[1]}x{big[0]} nor the grid's {grid[1]}x{grid[0]}"
            )
        picked = np.asarray(_mask_labels(entry, label_map, where))
        bad = sorted(set(picked[(picked >= len(classes)) & (picked != IGNORE)].tolist()))
        if bad:
            raise FormatError(
                f"{where}: values {bad[:5]} at queried pixels are not class indices 0..{len(classes) - 1} or {IGNORE}"
            )
        labels[image_id] = picked.tolist()
    return _answers(queries, labels)


def answers_from(fmt: str, path: Path, queries: dict) -> dict:
    readers = {"labelstudio": answers_from_label_studio, "coco": answers_from_coco, "png": answers_from_png}
    if fmt not in readers:
        raise FormatError(f"unknown format '{fmt}'; choose one of: activeda, {', '.join(FORMATS)}")
    return readers[fmt](Path(path), queries)
