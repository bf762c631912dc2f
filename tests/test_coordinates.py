"""Selection-grid pixels and the original label: the oracle, the label store and the exports agree on
where a grid pixel lies when the label is larger (or smaller) than the grid."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.labels.annotation import export_queries, import_tool_answers, queries_path
from orchestrator.labels.formats import grid_to_original
from orchestrator.labels.oracle import Oracle, PendingOracle
from orchestrator.labels.store import LabelStore
from trainers.data import SeededSubset
from trainers.data.cityscapes import CityscapesSegmentation
from trainers.data.coordinates import label_coordinates

# Cityscapes label ids of the 19 classes (road 7 ... bicycle 33): index = class.
TRAIN_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def write_scene(root, city, frame, ids, split="train"):
    stem = f"{city}_000000_{frame:06d}"
    image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    label = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*ids.shape, 3), np.uint8), mode="RGB").save(image)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(label)


def random_classes(height, width, seed):
    """A label whose every pixel is a random class: a wrong pixel mapping shows as a wrong class."""
    return np.random.default_rng(seed).integers(0, 19, (height, width))


@pytest.mark.parametrize("native, grid", [((8, 16), (4, 8)), ((13, 29), (4, 8)), ((3, 5), (4, 8))])
def test_the_oracle_reveals_the_original_pixel_under_each_grid_pixel(tmp_path, native, grid):
    classes = random_classes(*native, seed=native[1])
    write_scene(tmp_path, "aachen", 0, np.asarray(TRAIN_IDS)[classes])
    pool = CityscapesSegmentation(tmp_path, "train", size=grid)
    ys, xs = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    revealed = Oracle(pool).reveal(0, ys, xs)
    # By hand: grid pixel (y, x) covers original rows [y * H / h, (y + 1) * H / h); its centre row is
    # floor((y + 0.5) * H / h). For 8x16 from 4x8 that is (2y + 1, 2x + 1).
    centre_y = np.floor((ys + 0.5) * native[0] / grid[0]).astype(int)
    centre_x = np.floor((xs + 0.5) * native[1] / grid[1]).astype(int)
    assert revealed.labels.tolist() == classes[centre_y, centre_x].tolist()
    assert revealed.labels.tolist() == pool.label(0)[ys, xs].tolist()  # what training sees there
    assert (revealed.height, revealed.width, revealed.label_height, revealed.label_width) == (*grid, *native)
    if native == (8, 16):
        label_ys, label_xs = label_coordinates([0, 3], [0, 7], grid, native)
        assert (label_ys.tolist(), label_xs.tolist()) == ([1, 7], [1, 15])

    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "random", [revealed])
    table = store.table()
    assert table["label_height"].to_pylist() == [native[0]] and table["label_width"].to_pylist() == [native[1]]
    assert store.sparse_labels()[0][0].max() == grid[0] - 1  # the store keeps grid coordinates


def test_exports_give_original_coordinates_and_answers_come_back_from_the_original_image(tmp_path):
    """What a person is shown is the original pixel the oracle reads; labeling the original image there
    records exactly what the simulated oracle would have revealed."""
    classes = random_classes(8, 16, seed=3)
    write_scene(tmp_path / "city", "bonn", 0, np.asarray(TRAIN_IDS)[classes])
    pool = CityscapesSegmentation(tmp_path / "city", "train", size=(4, 8))
    pending = PendingOracle(pool)
    names = tuple(str(c) for c in range(19))
    for round_index, query in (
        (1, pending.reveal(0, np.array([0, 3]), np.array([0, 5]))),
        (2, pending.reveal(0, np.array([1, 1, 2, 2]), np.array([1, 2, 1, 2]), regions=True)),
    ):
        path = export_queries(
            queries_path(tmp_path / "trial", round_index), round_index, "random", names, [query], {0: pool.files[0][0]}
        )
        entry = json.loads(path.read_text())["images"][0]
        assert (entry["height"], entry["width"], entry["original_height"], entry["original_width"]) == (4, 8, 8, 16)
        if round_index == 1:
            assert grid_to_original([0, 3], [0, 5], (4, 8), (8, 16))[0].tolist() == [1, 7]  # rows by hand:
            assert grid_to_original([0, 3], [0, 5], (4, 8), (8, 16))[1].tolist() == [1, 11]  # floor((y+.5)*2)
        # A person labels the original image (here: its truth) and hands in label maps at its size.
        answers = tmp_path / f"maps-{round_index}"
        answers.mkdir()
        Image.fromarray(classes.astype(np.uint8), mode="L").save(answers / "00000.png")
        import_tool_answers("png", answers, tmp_path / "trial", round_index)
    store = LabelStore(tmp_path / "trial" / "labels")
    for round_index in (1, 2):
        ys, xs, labels = store.sparse_labels(only_round=round_index)[0]
        assert labels.tolist() == Oracle(pool).reveal(0, ys, xs).labels.tolist()
    table = store.table()
    assert table["label_height"].to_pylist() == [8, 8] and table["label_width"].to_pylist() == [16, 16]


def test_subsets_are_drawn_across_the_split_with_a_seed(tmp_path):
    for city in ("aachen", "bochum", "cologne", "dresden"):
        for frame in range(3):
            write_scene(tmp_path, city, frame, np.full((4, 8), 7))
    split = CityscapesSegmentation(tmp_path, "train", size=(4, 8))
    first = SeededSubset(split, 4, seed=0)
    cities = {path.split("/")[-2] for path, _ in first.files}
    assert len(cities) > 1  # not the first four files, which are one city's
    assert first.files == SeededSubset(split, 4, seed=0).files and first.files != SeededSubset(split, 4, seed=1).files
    assert first.files == sorted(first.files)  # kept in the split's order
    assert torch.equal(first.label(2), split.label(first.indices[2]))
    assert first.native_size(0) == (4, 8)
    with pytest.raises(IndexError):
        first[4]
