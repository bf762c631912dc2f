"""Selection-grid pixels and the original label: the oracle, the label store and the exports agree on
where a grid pixel lies when the label is larger (or smaller) than the grid."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.annotate import export_queries, import_answers
from orchestrator.experiment import PendingOracle
from orchestrator.labels import LabelStore, Oracle
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


def test_exports_give_original_coordinates_and_the_import_maps_answers_back(tmp_path):
    classes = random_classes(8, 16, seed=3)
    write_scene(tmp_path / "city", "bonn", 0, np.asarray(TRAIN_IDS)[classes])
    pool = CityscapesSegmentation(tmp_path / "city", "train", size=(4, 8))
    pending = PendingOracle(pool)
    points = pending.reveal(0, np.array([0, 3]), np.array([0, 5]))
    square = pending.reveal(0, np.array([1, 1, 2, 2]), np.array([1, 2, 1, 2]), regions=True)
    path = export_queries(tmp_path / "q.json", 1, "random", tuple(str(c) for c in range(19)), [points],
                          {0: pool.files[0][0]})
    entry = json.loads(path.read_text())["images"][0]
    assert (entry["height"], entry["width"]) == (8, 16) and entry["points"] == [[1, 1], [7, 11]]
    assert entry["grid"] == {"height": 4, "width": 8, "points": [[0, 0], [3, 5]]}
    document = json.loads(path.read_text())
    document["images"][0]["labels"] = [int(classes[1, 1]), int(classes[7, 11])]  # what a person reads off the image
    (tmp_path / "a.json").write_text(json.dumps(document))
    store = LabelStore(tmp_path / "labels")
    import_answers(tmp_path / "a.json", path, store)
    ys, xs, labels = store.sparse_labels()[0]
    assert (ys.tolist(), xs.tolist()) == ([0, 3], [0, 5])
    assert labels.tolist() == Oracle(pool).reveal(0, ys, xs).labels.tolist()

    region_path = export_queries(tmp_path / "r.json", 2, "random_regions", tuple(str(c) for c in range(19)),
                                 [square], {0: pool.files[0][0]})
    document = json.loads(region_path.read_text())
    region = document["images"][0]
    original = [(int(f) // 16, int(f) % 16) for start, length in zip(region["mask_rle"][::2], region["mask_rle"][1::2])
                for f in range(start, start + length)]
    assert original == [(3, 3), (3, 5), (5, 3), (5, 5)]
    region["labels"] = [int(classes[y, x]) for y, x in original]
    (tmp_path / "b.json").write_text(json.dumps(document))
    import_answers(tmp_path / "b.json", region_path, store)
    ys, xs, labels = store.sparse_labels(only_round=2)[0]
    assert labels.tolist() == Oracle(pool).reveal(0, ys, xs).labels.tolist()


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
