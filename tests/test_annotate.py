"""Human annotation round trip: export queries, answer them, import; tampered answers are refused."""

import json

import numpy as np
import pytest

from orchestrator.labels.annotation import AnnotationError, export_queries, import_answers
from orchestrator.labels.store import LabeledPixels, LabelStore

CLASSES = ("road", "car", "sky")


def queries():
    points = LabeledPixels(
        2, np.array([0, 3], np.int32), np.array([1, 2], np.int32), np.full(2, 255, np.uint8), 4, 4, 2.0
    )
    square = LabeledPixels(
        5,
        np.array([1, 1, 2, 2], np.int32),
        np.array([1, 2, 1, 2], np.int32),
        np.full(4, 255, np.uint8),
        4,
        4,
        4.0,
        regions=True,
    )
    return [points, square]


@pytest.fixture
def exported(tmp_path):
    path = export_queries(tmp_path / "q.json", 1, "labor_ppl", CLASSES, queries(), {2: "/pool/2.png"})
    document = json.loads(path.read_text())
    return path, document


def answer(document, tmp_path, edit=None):
    for entry in document["images"]:
        size = len(entry["points"]) if "points" in entry else sum(entry["mask_rle"][1::2])
        entry["labels"] = [1] * size
    if edit:
        edit(document)
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(document))
    return path


def test_round_trip(exported, tmp_path):
    path, document = exported
    assert document["images"][1]["mask_rle"] == [5, 2, 9, 2] and document["images"][0]["points"] == [[0, 1], [3, 2]]
    store = LabelStore(tmp_path / "labels")
    assert import_answers(answer(document, tmp_path), path, store) == 1
    sparse = store.sparse_labels()
    assert sparse[2][2].tolist() == [1, 1] and sorted(zip(*sparse[5][:2])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert store.totals() == {"labeled_pixels": 6.0, "clicks": 6.0}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["images"][0]["points"].__setitem__(0, [1, 1]), "'points' differs from the exported queries"),
        (lambda d: d["images"][1]["labels"].pop(), "needs 4 labels, got 3"),
        (lambda d: d["images"][0]["labels"].__setitem__(0, 7), "labels must be class indices 0..2 or 255"),
        (lambda d: d["images"].pop(), "have no answer"),
        (lambda d: d["images"].append(dict(d["images"][0], image_id=99)), "not among the queried images"),
        (lambda d: d.__setitem__("round", 2), "answers round 2"),
        (lambda d: d.__setitem__("format", "pickle"), "is not an activeda-queries file"),
        # Image ids are the exported integers only: not a path, not a float or bool that equals one.
        (lambda d: d["images"][0].__setitem__("image_id", "../../etc/passwd"), "image '../../etc/passwd': not among"),
        (lambda d: d["images"][0].__setitem__("image_id", 2.0), "image 2.0: not among the queried images"),
        (lambda d: d["images"].append("../x.png"), "'images' must be a list of objects"),
    ],
)
def test_tampered_answers_are_refused_and_nothing_is_written(exported, tmp_path, edit, message):
    path, document = exported
    store = LabelStore(tmp_path / "labels")
    with pytest.raises(AnnotationError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        import_answers(answer(document, tmp_path, edit), path, store)
    assert store.rounds() == []


def test_cli_reports_one_line(tmp_path):
    from conftest import run_cli

    result = run_cli(
        "orchestrator.annotate",
        "import",
        "--trial-dir",
        str(tmp_path),
        "--round",
        "1",
        "--answers",
        str(tmp_path / "missing.json"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("error: '") and "does not exist" in result.stderr


def test_an_image_path_in_the_answers_is_never_used(exported, tmp_path):
    path, document = exported
    untampered = LabelStore(tmp_path / "reference")
    import_answers(answer(document, tmp_path), path, untampered)
    moved = answer(document, tmp_path, lambda d: [e.__setitem__("image", "../../../etc/shadow") for e in d["images"]])
    store = LabelStore(tmp_path / "labels")
    import_answers(moved, path, store)
    assert store.table().equals(untampered.table())
    assert [f.name for f in store.table().schema if str(f.type) == "string"] == ["strategy"]  # no path is stored


@pytest.mark.parametrize(
    "round_value, expected, message",
    [
        (-1, None, "holds the queries of round -1, not of round >= 1"),
        ("../1", None, "holds the queries of round '../1'"),
        (2, 1, "holds the queries of round 2, not of round 1"),
    ],
)
def test_a_queries_file_of_another_or_impossible_round_is_refused(exported, tmp_path, round_value, expected, message):
    path, document = exported
    answers = answer(document, tmp_path, lambda d: d.__setitem__("round", round_value))
    document["round"] = round_value
    path.write_text(json.dumps(document))
    store = LabelStore(tmp_path / "labels")
    with pytest.raises(AnnotationError, match=message.replace(".", r"\.")):
        import_answers(answers, path, store, expected_round=expected)
    assert not (tmp_path / "labels").exists()


def test_cli_refuses_a_round_below_one(tmp_path):
    from conftest import run_cli

    result = run_cli(
        "orchestrator.annotate",
        "import",
        "--trial-dir",
        str(tmp_path),
        "--round",
        "0",
        "--answers",
        str(tmp_path / "a.json"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip() == "error: --round must be >= 1, got 0"
    assert list(tmp_path.iterdir()) == []
