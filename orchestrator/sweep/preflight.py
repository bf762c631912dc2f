"""Every check a run can make up front, made before it writes its first byte.

A run that is going to be refused must be refused before it has created a folder, generated data or
touched the tracking store, so that bad input costs one line and leaves nothing behind. In order:

1. the config (done by the caller while it is loaded: one line naming the key or the config file), the
   dataset YAMLs of source and target and ``data.class_set`` against them (``resolve_class_set``), the
   classes the config withholds from the oracle against the class set, and the model's initial weights
   (a DeepLab model never trains from random weights unless ``model.allow_random_init`` says so; an
   ``s3://`` ``model.pretrained`` exists);
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

import pyarrow.fs as pafs

from experiment_config import ConfigError, ExperimentConfig
from experiment_config.choices import IMAGENET_MODELS
from experiment_config.schema import S3_OBJECT
from orchestrator.cluster.folder_lock import check_sweep_folder_free
from orchestrator.cluster.storage import Storage, check_storage, open_storage
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
    check_initial_weights(cfg)
    check_pretrained_object(cfg)
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


def check_initial_weights(cfg: ExperimentConfig) -> None:
    """A model with ImageNet weights (the DeepLabs) that would train from random weights is refused:
    ``model.pretrained`` is '' and no ``source.checkpoint`` gives the model. DeepLab-V2's batch norm
    is frozen, so a random ResNet-101 would not learn what the papers' tables measure.
    ``model.allow_random_init: true`` allows it (tests, CPU demos)."""
    model = cfg.model
    if model.name not in IMAGENET_MODELS or model.pretrained or cfg.source.checkpoint or model.allow_random_init:
        return
    raise ConfigError(
        "model.pretrained",
        f"is '' and no source.checkpoint is given, so model '{model.name}' would train from random weights; "
        f"set model.pretrained: imagenet (or a file, or s3://bucket/key), or model.allow_random_init: true",
    )


def check_pretrained_object(cfg: ExperimentConfig) -> None:
    """An ``s3://`` ``model.pretrained`` names an object that exists, seen through the project's
    storage settings (``storage.endpoint``, ``storage.region``); the nodes fetch it when they build the model."""
    match = S3_OBJECT.match(cfg.model.pretrained)
    if match is None:
        return
    endpoint = cfg.storage.endpoint.rstrip("/")
    where = f"'{cfg.model.pretrained}'" + (f" at {endpoint}" if endpoint else "")
    try:
        storage = Storage(cfg.output_dir, f"s3://{match['bucket']}", endpoint, cfg.storage.region, quick=True)
        info = storage.filesystem.get_file_info(f"{match['bucket']}/{match['key']}")
    except OSError as err:
        raise ConfigError("model.pretrained", f"cannot reach {where}: {' '.join(str(err).split())[:300]}") from None
    if info.type != pafs.FileType.File:
        raise ConfigError("model.pretrained", f"no object at {where} (or these credentials may not see it)")
