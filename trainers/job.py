"""The Train job: what ``trainers.engine.run_job`` runs and what crosses Ray to every Train worker.

A ``TrainJob`` is built by the driver (``orchestrator.round``: the source model, the warm-up, the
oracle reference, each round's adaptation), handed to Ray Train as it is (pickled, inside
``train_loop_config``), and read by ``trainers.train_loop`` and ``trainers.engine``. It is frozen:
a worker that needs another form of a field (an S3 start checkpoint fetched to a local folder) makes
a copy with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from experiment_config.schema import ExperimentConfig, TrainingStageConfig

from .labels import NO_LABELS, TargetLabels

if TYPE_CHECKING:
    import ray.train

# source: source-only training of G and the selector network S; adapt: adaptation on source + the
# target pool's revealed pixels; evaluate: target validation mIoU of a checkpoint, no training.
MODES = ("source", "adapt", "evaluate")
# rounds: a round's adaptation (or any job outside the warm-up); warmup: the label-free adaptation
# before round 1, with its own loss weights (``trainers.engine.loss_weights``).
STAGES = ("rounds", "warmup")


def stage_section(cfg: ExperimentConfig, mode: str) -> TrainingStageConfig:
    """The config section of a job mode's training stage: ``source`` for source jobs, else ``adapt``."""
    return cfg.source if mode == "source" else cfg.adapt


@dataclass(frozen=True)
class TrainJob:
    """One training job of one trial (or of the sweep's shared models)."""

    mode: str
    """``"source"``, ``"adapt"`` or ``"evaluate"`` (``MODES``)."""

    config: ExperimentConfig
    """The trial's whole configuration; ``train`` gives the workers, the stage section the steps."""

    init_checkpoint: str | ray.train.Checkpoint | None = None
    """Where the job starts: a checkpoint folder (local path or ``s3://`` URI; ``run_training`` turns
    an S3 one into a ``ray.train.Checkpoint`` that each worker fetches); None: fresh weights."""

    stage: str = "rounds"
    """``"rounds"``, or ``"warmup"`` for the label-free adaptation before round 1 (``STAGES``)."""

    round: int = 0
    """The round this job trains (0: the source model and the warm-up); recorded in its checkpoint."""

    steps: int | None = None
    """Optimizer steps of this job; None: the stage section's ``steps`` (a warm-up, or one round's
    share of ``adapt.total_steps``, sets its own)."""

    labels: TargetLabels = NO_LABELS
    """The revealed target pixels an adapt job trains on: the trial's ``LabelReader`` (by
    reference: each worker reads the images it loads), or ``InMemoryLabels`` in tests."""

    full_target_labels: bool = False
    """Train on every pool pixel (the pool's own label maps: the oracle reference) instead of
    ``labels``."""

    train_selector_network: bool = True
    """Whether an adapt job updates LabOR's selector network S; False carries S over untrained (no
    later round ranks with it: a step is about 2.4x cheaper on the CPU). Source jobs always train S."""

    trial: str = ""
    """The trial's name, for progress lines (empty: a model shared by the sweep's trials)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown job mode '{self.mode}'; choose one of: {', '.join(MODES)}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown job stage '{self.stage}'; choose one of: {', '.join(STAGES)}")
        if not isinstance(self.config, ExperimentConfig):
            raise TypeError(f"a TrainJob's config is an ExperimentConfig, got {type(self.config).__name__}")
        if not isinstance(self.labels, TargetLabels):
            raise TypeError(f"a TrainJob's labels implement trainers.labels.TargetLabels, got {type(self.labels)}")
        if self.full_target_labels and self.labels is not NO_LABELS:
            raise ValueError("a job trains on full_target_labels or on labels, not both")

    @property
    def section(self) -> TrainingStageConfig:
        """The config section of this job's training stage: ``source`` for source jobs, else ``adapt``."""
        return stage_section(self.config, self.mode)

    @property
    def given_source_model(self) -> bool:
        """A source job whose G comes from ``source.checkpoint`` (loaded, not trained)."""
        return self.mode == "source" and bool(self.config.source.checkpoint)

    @property
    def planned_steps(self) -> int:
        """Optimizer steps this job trains: none to evaluate or for a given source model, else
        ``steps`` or the stage section's."""
        if self.mode == "evaluate" or self.given_source_model:
            return 0
        return self.section.steps if self.steps is None else int(self.steps)

    @property
    def trains_selector_network(self) -> bool:
        return self.mode == "source" or self.train_selector_network

    def describe(self) -> str:
        """A short name for progress lines: "source model", "warm-up", "round 3", "oracle reference"."""
        if self.mode == "source":
            what = "source model"
        elif self.stage == "warmup":
            what = "warm-up"
        elif self.full_target_labels and not self.trial:
            return "oracle reference"
        else:
            what = f"round {self.round}"
        return f"{self.trial} {what}" if self.trial else what
