"""Telling a full or unwritable disk from a bug, whatever error it caused, and the one line that says so."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from experiment_config import (
    ExperimentConfig,
)

log = logging.getLogger("activeda")


STORAGE_PROBLEMS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
}


def storage_problem(error: BaseException | None) -> str | None:
    """'No space left on device' (or quota, read-only, permission) when that is what ``error`` comes down
    to, however deep in Ray or Tune it was raised; else None."""
    if error is None:
        return None
    if isinstance(error, OSError) and error.errno in STORAGE_PROBLEMS:
        return STORAGE_PROBLEMS[error.errno]
    text = str(error)
    return next((problem for problem in STORAGE_PROBLEMS.values() if problem in text), None)


def output_storage_problem(cfg: ExperimentConfig, low_bytes: int = 1 << 20) -> str | None:
    """What is wrong with the output folder's file system right now (full, read-only, not writable), if
    anything: when a sweep fails, this tells a full disk from a bug, whatever error the full disk caused."""
    path = Path(cfg.output_dir).resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    info = os.statvfs(existing)
    if info.f_flag & os.ST_RDONLY:
        return STORAGE_PROBLEMS[errno.EROFS]
    if info.f_bavail * info.f_frsize < low_bytes:
        return STORAGE_PROBLEMS[errno.ENOSPC]
    if not os.access(existing, os.W_OK):
        return STORAGE_PROBLEMS[errno.EACCES]
    return None


def storage_problem_line(problem: str, cfg: ExperimentConfig) -> str:
    return (
        f"error: {problem} under the output folder '{cfg.output_dir}': the labels and checkpoints of finished "
        f"rounds are intact; free some space (or make it writable), then run the same command with --resume"
    )


def _without_trial_tracebacks(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Trial task failed")


def failure_line(error: BaseException) -> str:
    """One line for a failed trial: a training job's own one-line message, else the error's last line."""
    from trainers.train_loop import last_error_line

    line = last_error_line(str(error))
    prefix = "trainers.train_loop.TrainingJobError: "
    return line[len(prefix) :] if line.startswith(prefix) else line
