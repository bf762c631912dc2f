"""Every check a run can make up front, made before it writes its first byte.

A run that is going to be refused must be refused before it has created a folder, generated data or
touched the tracking store, so that bad input costs one line and leaves nothing behind. In order:

1. the config (done by the caller while it is loaded: one line naming the key or the config file), the
   dataset YAMLs of source and target and ``data.class_set`` against them (``resolve_class_set``), and
   the classes the config withholds from the oracle against the class set;
2. the tracking store (reachable and writable);
3. cluster-wide storage (``storage.uri``: the bucket exists and takes a write, removed at once);
4. ``output_dir`` can be created and written;
5. with ``--resume``: a sweep was started there, with the same settings, and its MLflow outbox reads;
6. the sweep folder is not in use by another run;
7. the data: roots, layouts, and every image and label decoded (ids mapped);
8. a given source model (``source.checkpoint``) fits the configured model.

What can only be known once Ray runs (whether the cluster can ever schedule the config) is checked
right after Ray starts, still before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from experiment_config import ConfigError, ExperimentConfig
from orchestrator.cluster.folder_lock import check_sweep_folder_free
from orchestrator.cluster.storage import check_storage, open_storage
from orchestrator.sweep.state import SWEEP_STATE, sweep_state_from_text
from orchestrator.tracking.mlflow_runs import (
    UNSENT_FILE,
    check_tracking_uri,
    read_outbox,
)
from trainers.data import ClassSet, DatasetError, check_domains, check_writable_folder, resolve_class_set
from trainers.engine import check_given_source_model


def preflight(
    cfg: ExperimentConfig,
    tracking_uri: str,
    *,
    resume: bool = False,
    sweep: bool = True,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Raise the first problem found (``ConfigError``, ``TrackingError``, ``DatasetError``,
    ``SweepFolderBusy``, ``StartCheckpointError``); write nothing. ``sweep=False`` (``orchestrator.run``) skips the sweep
    folder's checks."""
    class_set = resolve_class_set(cfg.data)
    check_unlabeled_classes(cfg, class_set)
    check_tracking_uri(tracking_uri)
    check_storage(cfg)
    try:
        check_writable_folder(cfg.output_dir, "output_dir")
    except DatasetError as err:
        raise ConfigError("output_dir", str(err).removeprefix(f"output_dir '{cfg.output_dir}': ")) from None
    sweep_dir = Path(cfg.output_dir).resolve() / cfg.sweep.name
    if sweep and resume:
        check_resume_state(cfg, sweep_dir)
        if (sweep_dir / UNSENT_FILE).is_file():
            read_outbox(sweep_dir / UNSENT_FILE)  # what the resumed driver sends first must be readable
    if sweep:
        check_sweep_folder_free(sweep_dir)
    check_domains(cfg.data, progress=progress)
    check_given_source_model(cfg, len(class_set.names))


def check_resume_state(cfg: ExperimentConfig, sweep_dir: Path) -> dict:
    """The saved state of the sweep to resume, read where it lives (this node or ``storage.uri``)
    without copying it here; ``ConfigError`` if there is none or it was started with other settings."""

    path = sweep_dir / SWEEP_STATE
    if path.is_file():
        text = path.read_text()
    else:  # the sweep may have been started from another machine sharing storage.uri
        storage = open_storage(cfg)
        text = storage.read_text(storage.location(path)) if storage.remote else None
    return sweep_state_from_text(text, sweep_dir, cfg)


def check_unlabeled_classes(cfg: ExperimentConfig, class_set: ClassSet | None = None) -> None:
    """The classes ``selection.unlabeled_classes`` withholds exist in the class set, and some class is left."""
    class_set = class_set or resolve_class_set(cfg.data)
    classes = class_set.names
    for name in cfg.selection.unlabeled_classes:
        if name not in classes:
            raise ConfigError(
                "selection.unlabeled_classes",
                f"unknown class '{name}' in class set '{class_set.name}'; choose from: {', '.join(classes)}",
            )
    if len(set(cfg.selection.unlabeled_classes)) == len(classes):
        raise ConfigError("selection.unlabeled_classes", "withholds every class: nothing could ever be labeled")
