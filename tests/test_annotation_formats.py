"""Annotation tools: a round's queries exported for Label Studio, COCO and as PNG masks in the original
image's coordinates, and their answers imported back through the strict checks (round trips)."""

import copy
import json
import re

import numpy as np
import pytest
from PIL import Image

from orchestrator.labels import formats
from orchestrator.labels.annotation import AnnotationError, export_queries, import_tool_answers, queries_path
from orchestrator.labels.store import LabeledPixels, LabelStore

CLASSES = ("road", "car", "sky")
GRID = (4, 6)  # the selection grid (data.height x data.width)
ORIGINAL = (8, 18)  # the image files: 2x taller, 3x wider


@pytest.fixture
def trial(tmp_path):
    """A trial folder whose round 1 asks for points (image 2) and round 2... is set up per test."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for image_id in (2, 5):
        Image.new("RGB", ORIGINAL[::-1], (90, 90, 90)).save(pool / f"{image_id}.png")
    return tmp_path / "trial", {i: str(pool / f"{i}.png") for i in (2, 5)}


def _export(trial_dir, paths, regions: bool):
    h, w = GRID
    if regions:
        queries = [
            LabeledPixels(
                2,
                np.array([1, 1, 2], np.int32),
                np.array([1, 4, 4], np.int32),
                np.full(3, 255, np.uint8),
                h,
                w,
                4.0,
                regions=True,
            ),
            LabeledPixels(
                5,
                np.array([0, 3], np.int32),
                np.array([0, 5], np.int32),
                np.full(2, 255, np.uint8),
                h,
                w,
                4.0,
                regions=True,
            ),
        ]
    else:
        queries = [
            LabeledPixels(
                2, np.array([0, 3], np.int32), np.array([1, 5], np.int32), np.full(2, 255, np.uint8), h, w, 2.0
            ),
            LabeledPixels(5, np.array([2], np.int32), np.array([3], np.int32), np.full(1, 255, np.uint8), h, w, 1.0),
        ]
    path = export_queries(
        queries_path(trial_dir, 1), 1, "labor_spl" if regions else "labor_ppl", CLASSES, queries, paths
    )
    return json.loads(path.read_text())


def _truth(oy, ox):
    """The annotator's answer at an original pixel: car on the left third, road below, sky elsewhere."""
    return 1 if ox < 6 else (0 if oy >= 4 else 2)


def _expected(queries):
    out = {}
    for entry in queries["images"]:
        ys, xs = formats.queried_pixels(entry)
        oys, oxs = formats.grid_to_original(ys, xs, GRID, ORIGINAL)
        out[entry["image_id"]] = [_truth(y, x) for y, x in zip(oys, oxs)]
    return out


def _stored(trial_dir):
    labels = LabelStore(trial_dir / "labels").sparse_labels()
    return {i: (ys.tolist(), xs.tolist(), v.tolist()) for i, (ys, xs, v) in labels.items()}


def _check_recorded(trial_dir, queries):
    stored, expected = _stored(trial_dir), _expected(queries)
    assert set(stored) == {2, 5}
    for entry in queries["images"]:
        ys, xs = formats.queried_pixels(entry)
        order = np.argsort(ys * GRID[1] + xs, kind="stable") if "mask_rle" in entry else np.arange(len(ys))
        assert stored[entry["image_id"]] == (
            ys[order].tolist(),
            xs[order].tolist(),
            np.asarray(expected[entry["image_id"]])[order].tolist(),
        )
    totals = LabelStore(trial_dir / "labels").totals()
    assert totals["labeled_pixels"] == sum(len(formats.queried_pixels(e)[0]) for e in queries["images"])


def test_grid_and_original_coordinates_map_both_ways():
    ys, xs = np.arange(4).repeat(6), np.tile(np.arange(6), 4)
    oys, oxs = formats.grid_to_original(ys, xs, GRID, ORIGINAL)
    assert oys.max() < 8 and oxs.max() < 18
    back = formats.original_to_grid(oys + 0.9, oxs + 0.9, GRID, ORIGINAL)  # anywhere inside the original pixel
    assert (back[0] == ys).all() and (back[1] == xs).all()
    assert formats.grid_to_original([3], [5], GRID, GRID) == (np.array([3]), np.array([5]))  # identity


def test_brush_and_coco_rle_round_trip():
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (5, 7), (300, 301)):
        mask = rng.random(shape) < 0.3
        mask[0, 0] = True
        assert (formats.brush_rle_decode(formats.brush_rle_encode(mask), *shape) == mask).all()
        rle = formats.coco_rle_encode(mask)  # compressed, by pycocotools
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        assert (formats.coco_mask_decode(rle, *shape) == mask).all()
        uncompressed = {"size": list(shape), "counts": _uncompressed_counts(mask)}
        assert (formats.coco_mask_decode(uncompressed, *shape) == mask).all()


def _uncompressed_counts(mask):
    """COCO's uncompressed RLE of a mask: column-major run lengths, starting with a run of zeros."""
    flat = np.asarray(mask, bool).T.ravel()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat.astype(np.int8))) + 1, [flat.size]])
    return ([0] if flat[0] else []) + np.diff(bounds).tolist()


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ({"size": [5, 7], "counts": "03"}, "does not cover the 5x7 image exactly"),  # stops short
        ({"size": [5, 7], "counts": "0g05b08J4M2N2"}, "Invalid RLE"),  # runs past the end
        ({"size": [5, 7], "counts": [3, 40]}, "cover 43 pixels, not 35"),
        ({"size": [5, 7], "counts": [3, -1, 33]}, "non-negative integers"),
        ({"size": [7, 5], "counts": [35]}, "mask size [7, 5] is not the image's [5, 7]"),
        ([[1, 1, 4, 1]], "at least 3 points"),
        ([[1, 1, 4, 1, 4, float("nan")]], "at least 3 points"),
        ("x", "a list of polygons or an RLE object"),
    ],
)
def test_malformed_coco_masks_are_refused(segmentation, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        formats.coco_mask_decode(segmentation, 5, 7)


@pytest.mark.parametrize("regions", [False, True], ids=["points", "regions"])
def test_label_studio_round_trip(trial, tmp_path, regions):
    trial_dir, paths = trial
    queries = _export(trial_dir, paths, regions)
    tasks_path, config_path = formats.export(
        queries, "labelstudio", tmp_path / "ls", image_url_prefix="/data/local-files/?d="
    )
    assert '<Label value="car" background="#00008e"/>' in config_path.read_text()
    tasks = json.loads(tasks_path.read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=" + paths[2]
    for task in tasks:  # the annotator's work in Label Studio
        prediction = copy.deepcopy(task.pop("predictions")[0]["result"])
        if regions:
            width, height = prediction[0]["original_width"], prediction[0]["original_height"]
            assert (width, height) == ORIGINAL[::-1]
            truth = np.fromfunction(lambda y, x: np.vectorize(_truth)(y, x), ORIGINAL, dtype=int)
            strokes = [
                {
                    **prediction[0],
                    "id": f"s{k}",
                    "value": {
                        "format": "rle",
                        "brushlabels": [CLASSES[k]],
                        "rle": formats.brush_rle_encode(truth == k),
                    },
                }
                for k in range(3)
            ]
            result = prediction + strokes  # painted over the 'unsure' query mask
        else:
            result = prediction
            for mark in result:
                x = mark["value"]["x"] / 100 * ORIGINAL[1]
                y = mark["value"]["y"] / 100 * ORIGINAL[0]
                mark["value"]["keypointlabels"] = [CLASSES[_truth(int(y), int(x))]]
        task["annotations"] = [{"id": 1, "result": result, "was_cancelled": False}]
    export_file = tmp_path / "ls-export.json"
    export_file.write_text(json.dumps(tasks))
    assert import_tool_answers("labelstudio", export_file, trial_dir, 1) == 1
    _check_recorded(trial_dir, queries)


@pytest.mark.parametrize("regions", [False, True], ids=["keypoints", "rle-masks"])
def test_coco_round_trip(trial, tmp_path, regions):
    trial_dir, paths = trial
    queries = _export(trial_dir, paths, regions)
    (coco_path,) = formats.export(queries, "coco", tmp_path / "coco")
    document = json.loads(coco_path.read_text())
    assert [c["name"] for c in document["categories"]] == [*CLASSES, "unsure"]
    assert {(i["width"], i["height"]) for i in document["images"]} == {ORIGINAL[::-1]}
    answers = []
    for image in document["images"]:  # the annotator's work: one annotation per class
        if regions:
            truth = np.fromfunction(lambda y, x: np.vectorize(_truth)(y, x), ORIGINAL, dtype=int)
            answers += [
                {"image_id": image["id"], "category_id": k + 1, "segmentation": formats.coco_rle_encode(truth == k)}
                for k in range(3)
            ]
        else:
            (query,) = [a for a in document["annotations"] if a["image_id"] == image["id"]]
            points = list(zip(query["keypoints"][0::3], query["keypoints"][1::3]))
            for k in range(3):
                mine = [v for x, y in points if _truth(int(y), int(x)) == k for v in (x, y, 2)]
                if mine:
                    answers.append({"image_id": image["id"], "category_id": k + 1, "keypoints": mine})
    document["annotations"] = answers
    answered = tmp_path / "coco-answers.json"
    answered.write_text(json.dumps(document))
    assert import_tool_answers("coco", answered, trial_dir, 1) == 1
    _check_recorded(trial_dir, queries)


def test_png_masks_round_trip(trial, tmp_path):
    trial_dir, paths = trial
    queries = _export(trial_dir, paths, regions=True)
    written = formats.export(queries, "png", tmp_path / "png")
    mask = np.asarray(Image.open(tmp_path / "png" / "masks" / "00002.png"))
    assert mask.shape == ORIGINAL and set(np.unique(mask)) == {0, 255}
    assert (tmp_path / "png" / "images.csv") in written
    answers = tmp_path / "label-maps"
    answers.mkdir()
    truth = np.fromfunction(lambda y, x: np.vectorize(_truth)(y, x), ORIGINAL, dtype=int).astype(np.uint8)
    for image_id in (2, 5):
        Image.fromarray(truth, mode="L").save(answers / f"{image_id:05d}.png")
    assert import_tool_answers("png", answers, trial_dir, 1) == 1
    _check_recorded(trial_dir, queries)


def _ls_points_export(trial_dir, paths, tmp_path, edit):
    queries = _export(trial_dir, paths, regions=False)
    tasks_path, _ = formats.export(queries, "labelstudio", tmp_path / "ls")
    tasks = json.loads(tasks_path.read_text())
    for task in tasks:
        result = task.pop("predictions")[0]["result"]
        for mark in result:
            mark["value"]["keypointlabels"] = ["car"]
        task["annotations"] = [{"result": result}]
    edit(tasks)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def _move_first_point(tasks):
    tasks[0]["annotations"][0]["result"][0]["value"]["x"] += 100 * 3 / ORIGINAL[1]  # one grid pixel to the right


@pytest.mark.parametrize(
    "edit, message",
    [
        (_move_first_point, "is not on a queried pixel (moved or added)"),
        (lambda t: t[0]["annotations"][0]["result"].pop(), "1 queried point(s) have no answer"),
        (
            lambda t: t[0]["annotations"][0]["result"][0]["value"].update(keypointlabels=["truck"]),
            "label 'truck' is not a class",
        ),
        (lambda t: t.pop(), "have no answer"),
        (lambda t: t[0]["data"].update(activeda_image_id=7), "image 7: not among the queried images"),
        (lambda t: t[0]["data"].update(activeda_round=2), "belongs to round 2"),
        (lambda t: t[0]["annotations"].append({"result": []}), "needs exactly one annotation, has 2"),
    ],
)
def test_tool_answers_that_do_not_match_the_queries_are_refused_and_nothing_is_written(trial, tmp_path, edit, message):
    trial_dir, paths = trial
    path = _ls_points_export(trial_dir, paths, tmp_path, edit)
    with pytest.raises(AnnotationError, match=re.escape(message)):
        import_tool_answers("labelstudio", path, trial_dir, 1)
    assert LabelStore(trial_dir / "labels").rounds() == []
    assert sorted(p.name for p in (trial_dir / "queries").iterdir()) == ["round-0001.json"]


def test_label_maps_must_cover_the_queries_and_only_them(trial, tmp_path):
    trial_dir, paths = trial
    _export(trial_dir, paths, regions=True)
    answers = tmp_path / "maps"
    answers.mkdir()
    for image_id in (2, 5, 9):
        Image.fromarray(np.zeros(ORIGINAL, np.uint8), mode="L").save(answers / f"{image_id:05d}.png")
    with pytest.raises(AnnotationError, match="image 9: not among the queried images"):
        import_tool_answers("png", answers, trial_dir, 1)
    (answers / "00009.png").unlink()
    Image.fromarray(np.full(ORIGINAL, 7, np.uint8), mode="L").save(answers / "00005.png")
    with pytest.raises(AnnotationError, match=r"values \[7\] at queried pixels are not class indices 0..2 or 255"):
        import_tool_answers("png", answers, trial_dir, 1)
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(answers / "00005.png")
    with pytest.raises(AnnotationError, match="is neither the image's 18x8 nor the grid's 6x4"):
        import_tool_answers("png", answers, trial_dir, 1)
    assert LabelStore(trial_dir / "labels").rounds() == []


def test_cli_exports_and_imports_in_one_line_each(trial, tmp_path, capsys):
    from orchestrator.annotate import main

    trial_dir, paths = trial
    _export(trial_dir, paths, regions=True)
    assert (
        main(
            ["export", "--trial-dir", str(trial_dir), "--round", "1", "--format", "png", "--out", str(tmp_path / "out")]
        )
        == 0
    )
    assert "wrote 3 file(s)" in capsys.readouterr().out
    assert (
        main(
            [
                "import",
                "--trial-dir",
                str(trial_dir),
                "--round",
                "1",
                "--format",
                "coco",
                "--answers",
                str(tmp_path / "nothing.json"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip().splitlines() == [f"error: '{tmp_path / 'nothing.json'}' does not exist"]


# --- a real round through COCO's own reader and writer (pycocotools) ------------------------------


@pytest.mark.parametrize("regions", [False, True], ids=["keypoints", "masks"])
def test_coco_round_trip_through_pycocotools_equals_the_oracle(tmp_path, regions, capsys):
    """A round's queries (the synthetic target pool at 2.5-2.75x the grid) exported with the command,
    read by pycocotools' COCO API as a COCO tool reads them, answered with the ground truth as COCO
    tools write answers (polygons, compressed and uncompressed RLE, keypoints), imported with the
    command: the label store then holds the simulated oracle's label at every queried pixel."""
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    from benchmarks.annotation_roundtrip import make_round, mismatches
    from orchestrator.annotate import main

    round_ = make_round(tmp_path, regions)
    trial = ["--trial-dir", str(round_.trial_dir), "--round", "1"]
    assert main(["export", *trial, "--format", "coco", "--out", str(tmp_path / "coco")]) == 0
    coco = COCO(str(tmp_path / "coco" / "coco.json"))
    names = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    assert list(names) == [*round_.classes, "unsure"]
    answers = []
    for image_id in coco.getImgIds():
        (query,) = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        truth = round_.native_labels[image_id]
        image = coco.loadImgs([image_id])[0]
        assert (image["height"], image["width"]) == truth.shape
        if regions:
            asked = coco.annToMask(query).astype(bool)  # the query mask as a COCO tool shows it
            assert asked.sum() == query["area"] > 0
            # The annotator covers the image with its most common class (a polygon), then paints every
            # other class over it, alternating compressed and uncompressed RLE.
            height, width = truth.shape
            common = int(np.bincount(truth[asked]).argmax())
            answers.append(
                {
                    "image_id": image_id,
                    "category_id": names[round_.classes[common]],
                    "segmentation": [[0, 0, width, 0, width, height, 0, height]],
                }
            )
            for k in sorted(set(np.unique(truth[asked]).tolist()) - {common}):
                painted = np.asfortranarray((truth == k).astype(np.uint8))
                if k % 2:
                    rle = coco_mask.encode(painted)
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                else:
                    segmentation = {"size": [height, width], "counts": _uncompressed_counts(painted.astype(bool))}
                answers.append(
                    {"image_id": image_id, "category_id": names[round_.classes[k]], "segmentation": segmentation}
                )
        else:
            points = list(zip(query["keypoints"][0::3], query["keypoints"][1::3]))
            assert len(points) == query["num_keypoints"] > 0
            by_class = {}
            for x, y in points:  # the annotator looks at the image where the point is drawn
                by_class.setdefault(int(truth[int(y), int(x)]), []).extend([x, y, 2])
            answers += [
                {"image_id": image_id, "category_id": names[round_.classes[k]], "keypoints": keypoints}
                for k, keypoints in by_class.items()
            ]
    document = json.loads((tmp_path / "coco" / "coco.json").read_text())
    document["annotations"] = [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(answers)]
    answered = tmp_path / "answers.json"
    answered.write_text(json.dumps(document))
    COCO(str(answered))  # still a COCO file its own reader loads
    capsys.readouterr()
    assert main(["import", *trial, "--format", "coco", "--answers", str(answered)]) == 0
    assert "recorded round 1" in capsys.readouterr().out
    assert mismatches(round_) == []
