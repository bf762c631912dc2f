import numpy as np
import pytest
import torch

from orchestrator.labels.oracle import Oracle
from orchestrator.labels.store import LabeledPixels, LabelReader, LabelStore, LabelStoreError
from trainers.labels import NO_LABELS, InMemoryLabels, TargetLabels, labeled_coordinates


def points(image_id, coords, labels, regions=False, clicks=None):
    ys, xs = zip(*coords)
    return LabeledPixels(
        image_id,
        np.array(ys, np.int32),
        np.array(xs, np.int32),
        np.array(labels, np.uint8),
        height=8,
        width=8,
        clicks=float(len(ys) if clicks is None else clicks),
        regions=regions,
    )


def test_round_trip_merges_rounds(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_ppl", [points(3, [(0, 1), (2, 2)], [4, 5]), points(1, [(1, 1)], [0])])
    store.append_round(2, "labor_ppl", [points(3, [(5, 5)], [7])])
    sparse = store.sparse_labels()
    assert sorted(sparse) == [1, 3]
    ys, xs, labels = sparse[3]
    assert ys.tolist() == [0, 2, 5] and xs.tolist() == [1, 2, 5] and labels.tolist() == [4, 5, 7]
    assert store.totals() == {"labeled_pixels": 4.0, "clicks": 4.0}
    table = store.table()
    assert table.num_rows == 3
    assert table["round"].to_pylist() == [1, 1, 2]
    assert set(table["strategy"].to_pylist()) == {"labor_ppl"}
    # A fresh store object on the same folder reads the same thing back.
    assert LabelStore(tmp_path / "labels").totals() == store.totals()


def test_regions_are_stored_as_run_lengths_and_read_back_as_pixels(tmp_path):
    store = LabelStore(tmp_path)
    # A 2x2 square at rows 1-2, columns 3-4, given out of order with its labels.
    square = points(5, [(2, 4), (1, 3), (1, 4), (2, 3)], [9, 6, 7, 8], regions=True, clicks=4)
    store.append_round(1, "labor_spl", [square, points(6, [(0, 0)], [1])])
    table = store.table()
    row = table.to_pylist()[0]
    assert row["mask_rle"] == [11, 2, 19, 2] and row["ys"] == [] and row["clicks"] == 4.0
    ys, xs, labels = store.sparse_labels()[5]
    assert list(zip(ys.tolist(), xs.tolist(), labels.tolist())) == [(1, 3, 6), (1, 4, 7), (2, 3, 8), (2, 4, 9)]
    assert store.totals() == {"labeled_pixels": 5.0, "clicks": 5.0}


def test_rounds_can_be_read_up_to_one_and_copied(tmp_path):
    store = LabelStore(tmp_path / "a")
    store.append_round(1, "labor_ppl", [points(0, [(0, 0)], [1])])
    store.append_round(2, "labor_ppl", [points(0, [(1, 1)], [2])])
    assert store.totals(upto_round=1)["labeled_pixels"] == 1
    store.copy_to(tmp_path / "b", upto_round=1)
    assert LabelStore(tmp_path / "b").rounds() == [1]
    store.append_round(3, "labor_ppl", [points(4, [(2, 3)], [5])])
    only = store.sparse_labels(only_round=2)  # one round's pixels, not the ones before or after
    assert list(only) == [0] and [a.tolist() for a in only[0]] == [[1], [1], [2]]
    assert store.sparse_labels(only_round=9) == {}


def test_an_image_twice_in_a_round_is_refused(tmp_path):
    with pytest.raises(LabelStoreError, match="names an image twice"):
        LabelStore(tmp_path).append_round(1, "x", [points(0, [(0, 0)], [1]), points(0, [(1, 1)], [1])])


def test_a_round_is_written_once(tmp_path):
    store = LabelStore(tmp_path)
    store.append_round(1, "labor_ppl", [points(0, [(0, 0)], [1])])
    with pytest.raises(LabelStoreError, match="round 1 is already in the label store"):
        store.append_round(1, "labor_ppl", [points(0, [(1, 1)], [1])])
    assert store.totals()["labeled_pixels"] == 1


def test_empty_store(tmp_path):
    store = LabelStore(tmp_path / "none")
    assert store.sparse_labels() == {} and store.totals() == {"labeled_pixels": 0.0, "clicks": 0.0}


def test_no_temporary_files_are_left(tmp_path):
    store = LabelStore(tmp_path)
    store.append_round(1, "labor_ppl", [points(0, [(0, 0)], [1])])
    assert [p.name for p in tmp_path.iterdir()] == ["round-0001.parquet"]


class _Truth:
    def label(self, index):
        return torch.arange(12).reshape(3, 4) + 10 * index


def test_oracle_reveals_exactly_the_queried_pixels():
    revealed = Oracle(_Truth()).reveal(2, np.array([0, 2]), np.array([3, 1]))
    assert revealed.labels.tolist() == [23, 29]
    with pytest.raises(ValueError, match="outside image 2"):
        Oracle(_Truth()).reveal(2, np.array([3]), np.array([0]))


def test_a_withheld_class_is_paid_for_but_never_revealed(tmp_path):
    oracle = Oracle(_Truth(), withheld_classes=[23, 25])
    revealed = oracle.reveal(2, np.array([0, 0, 2]), np.array([3, 2, 1]))
    assert revealed.labels.tolist() == [255, 22, 29]
    assert revealed.clicks == 3  # the annotator was asked about all three pixels
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_ppl", [revealed])
    assert store.labeled_coordinates()[2][0].tolist() == [0, 0, 2]  # never queried again
    assert store.sparse_labels()[2][2].tolist() == [255, 22, 29]  # 255: ignored by training


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 12), width=st.integers(1, 12), data=st.data())
def test_store_round_trip_property(tmp_path_factory, height, width, data):
    """Any set of pixels, as points or as a region, reads back as exactly those pixels and labels."""
    pixels = height * width
    chosen = data.draw(st.lists(st.integers(0, pixels - 1), min_size=1, max_size=pixels, unique=True))
    labels = data.draw(st.lists(st.integers(0, 18), min_size=len(chosen), max_size=len(chosen)))
    regions = data.draw(st.booleans())
    flat = np.asarray(chosen)
    item = LabeledPixels(
        3,
        (flat // width).astype(np.int32),
        (flat % width).astype(np.int32),
        np.asarray(labels, np.uint8),
        height,
        width,
        1.0,
        regions=regions,
    )
    store = LabelStore(tmp_path_factory.mktemp("prop"))
    store.append_round(1, "x", [item])
    ys, xs, got = store.sparse_labels()[3]
    assert sorted(zip((ys * width + xs).tolist(), got.tolist())) == sorted(zip(chosen, labels))
    assert store.totals()["labeled_pixels"] == len(chosen)


def test_a_pbt_clone_sets_its_own_rounds_aside_and_keeps_them(tmp_path):
    def pixels(image_id, label):
        return [
            LabeledPixels(
                image_id,
                np.array([0], np.int32),
                np.array([image_id], np.int32),
                np.array([label], np.uint8),
                4,
                4,
                1.0,
            )
        ]

    donor, clone = LabelStore(tmp_path / "donor"), LabelStore(tmp_path / "clone")
    donor.append_round(1, "labor_ppl", pixels(1, 2))
    clone.append_round(1, "labor_ppl", pixels(1, 2))  # the same file content: nothing to set aside
    clone.append_round(2, "labor_ppl", pixels(3, 1))  # its own, bought with its own model
    aside = clone.set_aside(keep_if_same_as=donor)
    assert [p.parent.name for p in aside] == ["superseded"] and len(aside) == 1
    assert clone.rounds() == [1] and LabelStore(aside[0].parent).rounds() == []  # out of the store's view
    assert aside[0].is_file()  # kept: it was paid for


# --- labels by reference ------------------------------------------------------------------------

import pickle

from orchestrator.labels.store import ROWS_PER_GROUP


def _many_images(round_index, count, pixels_each, width=64):
    """``count`` images of 8 x ``width``, each with ``pixels_each`` labeled pixels (a region)."""
    return [
        LabeledPixels(
            i,
            np.zeros(pixels_each, np.int32) + (i + round_index) % 8,
            np.arange(pixels_each, dtype=np.int32),
            np.full(pixels_each, i % 19, np.uint8),
            8,
            width,
            4.0,
            regions=True,
        )
        for i in range(count)
    ]


def test_a_reader_reads_only_the_images_asked_for_and_agrees_with_the_whole_store(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_spl", _many_images(1, 48, 5))
    store.append_round(2, "labor_ppl", [points(7, [(0, 9)], [3]), points(40, [(1, 1), (2, 2)], [4, 5])])
    import pyarrow.parquet as pq

    assert pq.ParquetFile(store.root / "round-0001.parquet").metadata.num_row_groups == -(-48 // ROWS_PER_GROUP)
    whole = store.sparse_labels()
    reader = store.reader()
    got = reader.read([40, 7, 999])  # 999 has no labels: simply absent
    assert sorted(got) == [7, 40]
    for image_id in (7, 40):
        assert all(np.array_equal(a, b) for a, b in zip(got[image_id], whole[image_id]))  # both rounds, in order
    assert labeled_coordinates(reader, [7])[7][1].tolist() == [0, 1, 2, 3, 4, 9]
    assert reader.read([7], with_labels=False)[7][2] is None  # what a ranking actor reads: no classes
    assert reader.read([999]) == {} and reader.read([3])[3][2].tolist() == [3] * 5
    assert store.reader(upto_round=1).read([40])[40][0].tolist() == [1] * 5  # round 2 is not in its view
    assert list(store.reader(only_round=2).read(range(100))) == [7, 40]
    # Only the row groups that can hold the ids are read: image 7's rows of round 1 are in one group.
    opened = reader._open()[0][0]
    calls = []
    original = opened.read_row_groups
    opened.read_row_groups = lambda groups, **kw: calls.append(list(groups)) or original(groups, **kw)
    reader.read([7])
    assert calls == [[7 // ROWS_PER_GROUP]]


def test_a_reader_is_the_same_few_bytes_whatever_was_bought(tmp_path):
    sizes = []
    for pixels_each in (1, 2000):
        store = LabelStore(tmp_path / f"labels-{pixels_each}")
        store.append_round(1, "labor_spl", _many_images(1, 50, pixels_each, width=4096))
        reader = store.reader(storage={"output_dir": str(tmp_path), "storage": {"uri": ""}})
        reader.read([3])  # opened files stay behind: they are not part of what is sent
        sent = pickle.dumps(reader)
        sizes.append(len(sent) - len(str(store.root.resolve())))
        copy = pickle.loads(sent)
        assert np.array_equal(copy.read([49])[49][1], reader.read([49])[49][1])
    assert sizes[0] == sizes[1] < 400


def test_a_reader_refuses_a_missing_round_instead_of_training_without_it(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "x", [points(0, [(0, 0)], [1])])
    reader = store.reader()
    (store.root / "round-0001.parquet").unlink()
    with pytest.raises(LabelStoreError, match="round 1 of the label store .* is missing on this node"):
        reader.read([0])


def test_totals_and_image_ids_read_single_columns(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_spl", _many_images(1, 20, 3))
    assert store.totals() == {"labeled_pixels": 60.0, "clicks": 80.0}
    assert store.image_ids(1).tolist() == list(range(20)) and store.image_ids(5).tolist() == []


def test_a_streamed_round_is_written_a_row_group_at_a_time_and_refused_out_of_order(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_spl", (p for p in _many_images(1, 40, 3)))  # a generator, ids ascending
    assert store.totals()["labeled_pixels"] == 120 and store.image_ids(1).tolist() == list(range(40))
    backwards = (p for p in reversed(_many_images(2, 40, 3)))
    with pytest.raises(LabelStoreError, match="ascending id order"):
        store.append_round(2, "labor_spl", backwards)
    assert store.rounds() == [1] and sorted(p.name for p in store.root.iterdir()) == ["round-0001.parquet"]


def test_the_label_reader_and_the_in_memory_labels_are_the_protocol_trainers_read(tmp_path):
    import inspect

    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "labor_ppl", [points(3, [(0, 1), (2, 2)], [4, 5])])
    store.append_round(2, "labor_ppl", [points(3, [(5, 5)], [6])])
    reader = store.reader()
    # Declared in trainers/, implemented in orchestrator/: the same method, the same arguments.
    assert issubclass(LabelReader, TargetLabels) and isinstance(pickle.loads(pickle.dumps(reader)), TargetLabels)
    assert (
        inspect.signature(LabelReader.read).parameters.keys() == inspect.signature(TargetLabels.read).parameters.keys()
    )
    assert isinstance(InMemoryLabels(), TargetLabels) and isinstance(NO_LABELS, TargetLabels)
    assert not isinstance({3: ([0], [1], [4])}, TargetLabels)  # a plain dict is not labels
    for labels in (reader, InMemoryLabels(store.sparse_labels())):
        got = labels.read([5, 3])
        assert list(got) == [3]  # an image without labels is absent
        ys, xs, classes = got[3]
        assert (ys.tolist(), xs.tolist(), classes.tolist()) == ([0, 2, 5], [1, 2, 5], [4, 5, 6])
        assert ys.dtype == xs.dtype == np.int32 and classes.dtype == np.uint8
        assert labels.read([3], with_labels=False)[3][2] is None
    assert NO_LABELS.read(range(10)) == {}
