"""An interrupted write leaves the previous version readable; a partial file is never picked up."""

import numpy as np
import pytest
import torch

from orchestrator.labels.store import LabeledPixels, LabelStore, LabelStoreError
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.data.synthetic import ensure_synthetic_domains


def test_label_store_ignores_a_partial_round(tmp_path):
    store = LabelStore(tmp_path)
    store.append_round(
        1, "labor_ppl", [LabeledPixels(0, np.array([1]), np.array([2]), np.array([3], np.uint8), 4, 4, 1.0)]
    )
    (tmp_path / ".round-0002.parquet.tmp-999").write_bytes(b"PAR1 half a file")  # a crash mid-write
    assert store.rounds() == [1] and store.totals()["labeled_pixels"] == 1


def test_label_store_refuses_a_round_another_writer_recorded_meanwhile(tmp_path):
    def pixels(image_id):
        return LabeledPixels(image_id, np.array([1]), np.array([2]), np.array([3], np.uint8), 4, 4, 1.0)

    def stream():  # while this round is being written, another writer records the same round whole
        LabelStore(tmp_path).append_round(1, "random", [pixels(5)])
        yield pixels(0)

    with pytest.raises(LabelStoreError, match="round 1 is already in the label store"):
        LabelStore(tmp_path).append_round(1, "labor_ppl", stream())
    assert LabelStore(tmp_path).image_ids(1).tolist() == [5]  # the round first recorded stays, whole
    assert [p.name for p in tmp_path.iterdir()] == ["round-0001.parquet"]  # and no staging file is left


def test_checkpoint_keeps_the_previous_version_when_a_write_dies(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"model": {"name": "x"}, "modules": {}, "step": 1})

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    try:
        save_checkpoint(tmp_path, {"model": {"name": "x"}, "modules": {}, "step": 2})
    except OSError:
        pass
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # the half-written file is gone


def test_generated_domains_are_used_only_when_complete(tmp_path):
    settings = dict(source_images=1, target_train_images=1, target_val_images=1, seed=0, difficulty=1.0)
    source, _target = ensure_synthetic_domains(tmp_path, 16, 32, settings)
    (source.parent / "complete").unlink()  # as if generation had died before finishing
    (source / "images" / "000000.png").write_bytes(b"truncated")
    source, _ = ensure_synthetic_domains(tmp_path, 16, 32, settings)
    assert (source.parent / "complete").is_file()
    assert (source / "images" / "000000.png").read_bytes()[:4] == b"\x89PNG"
