"""An interrupted write leaves the previous version readable; a partial file is never picked up."""

import numpy as np
import torch

from orchestrator.labels.store import LabeledPixels, LabelStore
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.data.synthetic import ensure_synthetic_domains


def test_label_store_ignores_a_partial_round(tmp_path):
    store = LabelStore(tmp_path)
    store.append_round(
        1, "labor_ppl", [LabeledPixels(0, np.array([1]), np.array([2]), np.array([3], np.uint8), 4, 4, 1.0)]
    )
    (tmp_path / ".round-0002.parquet.tmp-999").write_bytes(b"PAR1 half a file")  # a crash mid-write
    assert store.rounds() == [1] and store.totals()["labeled_pixels"] == 1


def test_checkpoint_keeps_the_previous_version_when_a_write_dies(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"model": {"name": "x"}, "modules": {}, "step": 1})

    def crash(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    try:
        save_checkpoint(tmp_path, {"model": {"name": "x"}, "modules": {}, "step": 2})
    except OSError:
        pass
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1


def test_generated_domains_are_used_only_when_complete(tmp_path):
    settings = dict(source_images=1, target_train_images=1, target_val_images=1, seed=0, difficulty=1.0)
    source, _target = ensure_synthetic_domains(tmp_path, 16, 32, settings)
    (source.parent / "complete").unlink()  # as if generation had died before finishing
    (source / "images" / "000000.png").write_bytes(b"truncated")
    source, _ = ensure_synthetic_domains(tmp_path, 16, 32, settings)
    assert (source.parent / "complete").is_file()
    assert (source / "images" / "000000.png").read_bytes()[:4] == b"\x89PNG"
