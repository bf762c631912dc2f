"""Checkpoints: one ``state.pt`` per checkpoint directory, written atomically, read with weights_only.

A checkpoint holds plain state dicts and numbers only (no pickled objects), so loading it with
``torch.load(weights_only=True)`` is safe and a truncated or foreign file is refused with a clear
message instead of half-loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainers.files import staged

STATE_FILE = "state.pt"
FORMAT = "activeda-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` via a temporary file and an atomic rename."""
    final = Path(directory) / STATE_FILE
    # Saved through a handle, the archive's inner folder is "archive" whatever the staging file is
    # called, so the same state gives the same bytes in every process.
    with staged(final, fsync=True) as tmp, open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
    return final


def load_checkpoint(directory: str | Path, expect_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint directory; ``expect_model`` (name/width/num_classes) must match if given."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{directory}' has no {STATE_FILE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable (truncated or not a checkpoint): {type(err).__name__}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' is not an activeda checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint '{path}' has format version {state.get('version')}, expected {VERSION}")
    if expect_model is not None:
        found = state.get("model", {})
        for key, want in expect_model.items():
            if found.get(key) != want:
                raise CheckpointError(
                    f"checkpoint '{path}' was made for model.{key}={found.get(key)!r}, the config asks for {want!r}"
                )
    return state
