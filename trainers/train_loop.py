"""Ray Train entry point: the one module below ``orchestrator/`` that touches Ray.

``train_loop_per_worker`` runs ``trainers.engine.run_job`` on every Train worker with Ray's
context: DDP through ``ray.train.torch.prepare_model``, each worker on its shard of the data, the
validation confusion matrix summed over workers with ``all_reduce`` (so mIoU is exact for any
worker count), rank 0 writing the checkpoint, every rank reporting. After a worker failure Ray
Train restarts the group and ``ray.train.get_checkpoint()`` hands back the last checkpoint of the
job, from which it continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .engine import build_adaptation_models, load_models, model_identity, run_job
from .job import TrainJob
from .progress import StepProgress

if TYPE_CHECKING:
    import pyarrow.fs

__all__ = [
    "TrainJob",
    "TrainingJobError",
    "TrainingResult",
    "build_adaptation_models",
    "load_models",
    "model_identity",
    "run_training",
    "train_loop_per_worker",
]


def train_loop_per_worker(config: dict) -> dict | None:
    """What every Train worker runs: ``config["job"]`` is the ``TrainJob`` (Ray Train wants a dict)."""
    import ray.train

    _quiet_train_worker_logs()
    job: TrainJob = config["job"]
    cfg = job.config
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    if isinstance(job.init_checkpoint, ray.train.Checkpoint):
        # On shared storage (S3): every worker fetches the start checkpoint onto its own node.
        with job.init_checkpoint.as_directory() as directory:
            return _run_on_worker(dataclasses.replace(job, init_checkpoint=directory))
    return _run_on_worker(job)


def _run_on_worker(job: TrainJob) -> dict | None:
    """``run_job`` with Ray's context: the restored checkpoint, DDP, periodic checkpoints, reports."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    resume_state = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            resume_state = load_checkpoint(directory)

    def prepare(module: torch.nn.Module) -> torch.nn.Module:
        # The selector network's MCD step trains the heads alone, so some parameters get no gradient then.
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})

    every = job.config.adapt.checkpoint_every if job.mode == "adapt" else 0

    def on_step(done: int, state_fn) -> None:
        if every and done % every == 0 and done < job.planned_steps:
            _report({"train/job_step": done}, state_fn() if rank == 0 else None)

    try:
        result = run_job(
            job,
            rank=rank,
            world=world,
            device=ray.train.torch.get_device(),
            prepare_model=prepare,
            resume_state=resume_state,
            on_step=on_step,
            progress=step_progress(job, world) if rank == 0 else None,
        )
    except Exception:
        # Ray Train hands the driver the exception without its traceback: carry the traceback as the message.
        raise WorkerFailure(traceback.format_exc()) from None
    _report(result.metrics, result.state if rank == 0 else None)
    # Ray Train keeps only reports that carry a checkpoint; the return value always arrives.
    return result.metrics if rank == 0 else None


def step_progress(job: TrainJob, world: int) -> StepProgress:
    """Progress lines of this job (printed by rank 0 only; Ray forwards them to the driver)."""
    return StepProgress(job.describe(), job.section.batch_size * world, job.config.train.progress_every_s)


def _quiet_train_worker_logs() -> None:
    """Drop Ray Train's INFO line per report (its logger is named by file, not by module), and its
    traceback per failed attempt (the driver writes the last attempt's to a log file and says one line)."""
    try:
        import ray.train.v2._internal.execution.context as train_context
        import ray.train.v2._internal.util as train_util
    except ImportError:  # a Ray without Train V2 internals: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_util.__name__).setLevel(logging.CRITICAL)


def _report(metrics: dict[str, Any], state: dict | None) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (written atomically to a temp dir first)."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="activeda-ckpt-") as tmp:
        save_checkpoint(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@dataclass
class TrainingResult:
    metrics: dict[str, Any]
    checkpoint_dir: str | None
    seconds: float


@contextlib.contextmanager
def _ctrl_c_stays_with_the_command():
    """Ray Train's ``fit`` in the main thread installs its own SIGINT handler (a graceful abort of its
    run) and never removes it: a Ctrl-C after the job went to a finished run and was lost (the sweep
    went on), and one during it ended as a failed job. So the command's handler comes back after
    ``fit``, and a Ctrl-C that came during it is raised as ``KeyboardInterrupt`` once the run has
    stopped (Python's wake-up fd is written for every signal, whichever Python handler runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray Train installs no handler outside the main thread (as in a Tune trial)
        return
    previous = signal.getsignal(signal.SIGINT)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, previous)
        try:
            seen = os.read(read_fd, 4096)
        except BlockingIOError:
            seen = b""
        os.close(read_fd)
        os.close(write_fd)
        if signal.SIGINT in seen:
            raise KeyboardInterrupt


def run_training(
    job: TrainJob, storage_path: str | Path, name: str, filesystem: pyarrow.fs.FileSystem | None = None
) -> TrainingResult:
    """Run one job on Ray Train (``TorchTrainer``) and return its metrics and checkpoint directory.

    The ``train`` section of ``job.config`` gives the scaling (workers, GPU, CPUs per worker). With
    ``filesystem`` (e.g. an S3 filesystem), ``storage_path`` and ``job.init_checkpoint`` are URIs on
    it (``s3://bucket/key``) and the returned checkpoint directory is one too; otherwise all three
    are local paths.
    """
    from ray.train import Checkpoint, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    if filesystem is not None:
        scheme = str(storage_path).partition("://")[0] if "://" in str(storage_path) else ""
        ray_storage_path = _without_scheme(str(storage_path))
        if job.init_checkpoint:
            job = dataclasses.replace(job, init_checkpoint=Checkpoint(_without_scheme(job.init_checkpoint), filesystem))
    else:
        scheme, ray_storage_path = "", str(Path(storage_path).resolve())

    train_cfg = job.config.train
    resources = {"CPU": float(train_cfg.cpus_per_worker)}
    if train_cfg.use_gpu:
        resources["GPU"] = 1.0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},  # the TrainJob, pickled as it is
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker=resources,
        ),
        # A run name that exists in storage resumes that run (Ray Train's own snapshot): names are
        # per job (source hash, trial and round), so an interrupted round continues where it stopped.
        run_config=RunConfig(
            storage_path=ray_storage_path,
            storage_filesystem=filesystem,
            name=name,
            failure_config=FailureConfig(max_failures=train_cfg.max_failures, controller_failure_limit=3),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    started = time.perf_counter()
    try:
        with _ctrl_c_stays_with_the_command():
            result = trainer.fit()
    except TrainingFailedError as err:  # the job failed for good, after train.max_failures retries
        raise TrainingJobError.from_failure(err, name, failure_log_path(job, name)) from None
    if job.mode != "evaluate" and result.checkpoint is None:
        raise RuntimeError(f"training job '{name}' finished without a checkpoint")
    checkpoint_dir = None
    if result.checkpoint is not None:
        checkpoint_dir = f"{scheme}://{result.checkpoint.path}" if scheme else result.checkpoint.path
    return TrainingResult(
        metrics=dict(result.return_value or result.metrics),
        checkpoint_dir=checkpoint_dir,
        seconds=time.perf_counter() - started,
    )


class WorkerFailure(RuntimeError):
    """What a Train worker raises when its job fails: the message is the full traceback of the error."""


class TrainingJobError(RuntimeError):
    """A training job that failed for good: ``str(err)`` is one line naming the job, the error and the
    log file that holds every failed worker's full traceback."""

    @classmethod
    def from_failure(cls, failure: BaseException, name: str, log_path: Path) -> TrainingJobError:
        worker_failures = getattr(failure, "worker_failures", None) or {}
        sections = [f"rank {rank}:\n{error}" for rank, error in sorted(worker_failures.items())]
        text = "\n\n".join(sections) or "".join(traceback.format_exception(failure))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"training job '{name}' failed for good\n\n{text}\n")
        return cls(f"training job '{name}' failed: {last_error_line(text)} (full traceback: {log_path})")


def last_error_line(traceback_text: str) -> str:
    """The ``ExceptionType: message`` line a Python traceback ends with (its last non-blank line)."""
    lines = [line.strip() for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def failure_log_path(job: TrainJob, name: str) -> Path:
    """Where a failed job's tracebacks go: ``output_dir/logs``, a local folder of the process that ran it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(job.config.output_dir).resolve() / "logs" / f"{stamp}-{name}-{os.getpid()}.log"


def _without_scheme(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key``: Ray wants paths without the scheme with a custom filesystem."""
    return uri.partition("://")[2] if "://" in uri else uri
