"""Running a sweep: start or join Ray, train or reuse the models every trial starts from, run the trials
under Tune (each logging a child MLflow run), and summarise.

``run_sweep`` is the list of steps; each step is a function below, in the order they run. Ray and the
rest of the heavy machinery are imported here at module level: the sweep command imports this module
only once it is about to run a sweep, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from experiment_config import ExperimentConfig, with_overrides
from orchestrator.cluster.folder_lock import SweepFolderLock
from orchestrator.cluster.processes import end_run_processes, mark_this_run
from orchestrator.cluster.ray_connection import start_ray
from orchestrator.cluster.storage import Storage, open_storage
from orchestrator.command_line import EXIT_AWAITING_ANNOTATION, EXIT_TRIALS_FAILED
from orchestrator.labels.annotation import pending_annotations
from orchestrator.round.start_models import (
    ensure_oracle_reference,
    ensure_source_model,
    ensure_warmup_model,
    no_warmup_line,
)
from orchestrator.sweep.failures import (
    _without_trial_tracebacks,
    failure_line,
    output_storage_problem,
    storage_problem,
    storage_problem_line,
)
from orchestrator.sweep.plan import trial_configs
from orchestrator.sweep.resources import ResourcePlan, plan_resources, with_node_types
from orchestrator.sweep.state import STATE_BACKUP, SWEEP_STATE, _write_json, load_sweep_state, restorable_tune_state
from orchestrator.sweep.summary import (
    _trial_dir,
    budget_label,
    format_table,
    summarize,
    warmup_lines,
    warmup_tracking_metrics,
    write_sweep_report,
)
from orchestrator.sweep.trainable import tune_trial
from orchestrator.sweep.tune_setup import (
    EARLY_STOPS,
    SweepReporter,
    TuneStateKeeper,
    build_param_space,
    build_scheduler,
    parameter_columns,
    read_early_stops,
)
from orchestrator.tracking.mlflow_runs import UNSENT_FILE, SweepTracking, display_uri, provenance_tags
from orchestrator.tracking.tensorboard import RoundTensorBoard
from orchestrator.tracking.trial_logger import MlflowTrialLogger
from trainers.data import domain_roots
from trainers.models import pretrained_status

log = logging.getLogger("activeda")


def run_sweep(
    cfg: ExperimentConfig,
    tracking_uri: str,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = False,
    resume: bool = False,
    node_types: list[dict] | None = None,
    dashboard: bool | None = None,
) -> int:
    """Run the sweep of ``cfg`` (or, with ``resume``, continue it); returns the exit code: 0,
    ``EXIT_TRIALS_FAILED`` or ``EXIT_AWAITING_ANNOTATION``."""
    sweep = _open_sweep(cfg, tracking_uri, quiet, resume)
    run_mark = mark_this_run()  # before Ray starts: every process of this run inherits it
    lock = None
    # A caller that connected Ray itself (a benchmark training the next sweep's references beside this
    # one, a notebook) keeps it: only a Ray this run started is shut down at its end.
    ray_started_here = not ray.is_initialized()
    start_ray(address, num_cpus, quiet, dashboard=dashboard)
    try:
        plan = _plan_resources(sweep, node_types)
        lock = SweepFolderLock.acquire(sweep.folder, progress=sweep.say)  # the first write of the run
        tracking = SweepTracking(tracking_uri, cfg.sweep.name, sweep.folder)
        models = _prepare_data_and_start_models(sweep)
        provenance = provenance_tags()  # git commit and user, on the sweep's run and every trial's
        parent = _start_or_resume_parent_run(sweep, tracking, models, provenance)
        tuner = _build_or_restore_tuner(sweep, plan, models, parent, provenance)
        results = _fit(tuner)
        outcome = _summarise_and_report(sweep, results, models, tracking, parent)
        return _print_outcome(sweep, results, models, outcome)
    finally:
        if ray_started_here:
            ray.shutdown()
        end_run_processes(run_mark)
        if lock is not None:
            lock.release()


@dataclass
class _Sweep:
    """What every step of one run of a sweep needs."""

    cfg: ExperimentConfig
    tracking_uri: str
    quiet: bool
    folder: Path
    storage: Storage
    state: dict | None  # the saved state (sweep.json) of a sweep being resumed; None for a new one
    started: float  # time.perf_counter() at the start, for the durations printed
    say: Callable[[str], None]

    @property
    def unsent_path(self) -> str:
        return str(self.folder / UNSENT_FILE)


@dataclass
class _StartModels:
    """The models every trial starts from, with the levels the report draws."""

    source_checkpoint: str
    source_metrics: dict
    warmup_metrics: dict  # {} without a warm-up (warmup.steps 0)
    oracle_metrics: dict  # {} without sweep.oracle_reference


@dataclass
class _Outcome:
    rows: list[dict]  # one per trial, from ``summarize``
    failed: int
    waiting: dict  # trial id -> (round, queries file) of trials waiting for people's labels


def _open_sweep(cfg: ExperimentConfig, tracking_uri: str, quiet: bool, resume: bool) -> _Sweep:
    """The sweep's folder and storage, and with ``resume`` its saved state (refused here, before Ray
    starts, when the sweep cannot be resumed)."""
    folder = Path(cfg.output_dir).resolve() / cfg.sweep.name
    storage = open_storage(cfg)
    if resume:  # the sweep may have been started from another machine sharing storage.uri
        storage.pull(folder / SWEEP_STATE)
    state = load_sweep_state(folder, cfg) if resume else None
    # A remote tracking server that goes away must cost seconds per call, not minutes of retries:
    # the trial logger buffers what it cannot send.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[activeda] {msg}", flush=True))
    return _Sweep(cfg, tracking_uri, quiet, folder, storage, state, time.perf_counter(), say)


def _plan_resources(sweep: _Sweep, node_types: list[dict] | None) -> ResourcePlan:
    """How many trials run at once and what each reserves, from the Ray cluster's resources (or the
    node types a cluster file declares, for nodes an autoscaler has not started yet)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    if node_types:
        total, nodes = with_node_types(total, nodes, node_types)
    plan = plan_resources(sweep.cfg, total, nodes)
    sweep.say(f"Ray ready in {time.perf_counter() - sweep.started:.0f} s; {plan.note}")
    return plan


def _prepare_data_and_start_models(sweep: _Sweep) -> _StartModels:
    """The domains (generated or checked), then the source model, the warm-up and the oracle
    reference, each trained once or taken from its cache."""
    cfg, say = sweep.cfg, sweep.say
    roots = domain_roots(cfg.data, progress=say)
    say(f"data: source {cfg.data.source.format} at {roots[0]}, target {cfg.data.target.format} at {roots[1]}")
    say(pretrained_status(cfg.model.name, cfg.model.pretrained, cfg.model.weights_cache))
    source_checkpoint, source_metrics = ensure_source_model(cfg, progress=say)
    # Once here, before the trials, which all start from it (a trial whose settings change it trains its own).
    _, warmup_metrics = ensure_warmup_model(cfg, source_checkpoint, {}, progress=say)
    # One line, here, when a LabOR trial's first selection ranks with an S that never saw the target.
    missing = no_warmup_line(option for options in trial_configs(cfg)[0] for option in options)
    if missing is not None:
        say(missing)
    for line in warmup_lines(source_metrics, warmup_metrics):  # the warm-up beside source-only; a warning if below
        say(line)
    oracle_metrics = ensure_oracle_reference(cfg, source_checkpoint, progress=say) if cfg.sweep.oracle_reference else {}
    return _StartModels(source_checkpoint, source_metrics, warmup_metrics, oracle_metrics)


def _start_or_resume_parent_run(sweep: _Sweep, tracking: SweepTracking, models: _StartModels, provenance: dict) -> str:
    """The sweep's MLflow run: a new one (with the start models' figures, and its id saved in
    sweep.json for --resume), or the resumed sweep's own, marked running again."""
    cfg = sweep.cfg
    if sweep.state is not None:
        parent = sweep.state["parent_run_id"]
        try:
            tracking.client.update_run(parent, status="RUNNING")
        except Exception as err:  # MLflow went away since the pre-flight check: the sweep's end sets it
            log.warning("could not mark the sweep's MLflow run as running again (%s)", type(err).__name__)
        sweep.say(f"resuming the sweep at {sweep.folder}")
        return parent
    parent = tracking.start_parent(
        f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        cfg.flat(),
        {"activeda.sweep": cfg.sweep.name, **provenance, "activeda.source_checkpoint": models.source_checkpoint},
    )
    tracking.log_metrics(
        parent,
        {f"source_only/{k}": v for k, v in models.source_metrics.items()}
        | {f"oracle/{k}": v for k, v in models.oracle_metrics.items()}
        | warmup_tracking_metrics(models.source_metrics, models.warmup_metrics),
        step=0,
        context="source model",
    )
    _write_json(sweep.folder / SWEEP_STATE, {"parent_run_id": parent, "config": cfg.to_dict()})
    sweep.storage.push(sweep.folder / SWEEP_STATE)
    return parent


def _build_or_restore_tuner(
    sweep: _Sweep, plan: ResourcePlan, models: _StartModels, parent: str, provenance: dict
) -> tune.Tuner:
    """Tune's run of the trials: restored from its saved state when resuming (and the state is
    readable), else a new one."""
    cfg, storage = sweep.cfg, sweep.storage
    # Trials keep the sweep's search space: a PBT trial's config is only valid with its mutable axes.
    trainable = tune.with_parameters(
        tune_trial,
        base=cfg.to_dict(),
        source_checkpoint=models.source_checkpoint,
        source_metrics=models.source_metrics,
        sweep_dir=str(sweep.folder),
    )
    trainable = tune.with_resources(trainable, plan.trial_resources)
    # Tune keeps its experiment state and trial checkpoints in cluster-wide storage: a trial that
    # moves to another node restores from there.
    if sweep.state is not None and restorable_tune_state(storage, sweep.folder, sweep.say):
        return tune.Tuner.restore(
            storage.fs_path(storage.location(sweep.folder / "tune")),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=storage.ray_filesystem,
        )
    return tune.Tuner(
        trainable,
        param_space=build_param_space(cfg.sweep.search_space),
        tune_config=tune.TuneConfig(
            num_samples=cfg.sweep.num_samples,
            max_concurrent_trials=plan.max_concurrent,
            metric="target/miou",
            mode="max",
            scheduler=build_scheduler(cfg, sweep.folder / EARLY_STOPS),
        ),
        run_config=_run_config(sweep, parent, provenance),
    )


def _run_config(sweep: _Sweep, parent: str, provenance: dict) -> tune.RunConfig:
    """Where Tune keeps its state, what it prints, and the callbacks: MLflow (one child run per
    trial), TensorBoard (step = round), and the keeper of a readable copy of Tune's state."""
    cfg, storage = sweep.cfg, sweep.storage
    reporter = SweepReporter(
        metric_columns={"round": "round", "budget/labeled_pixels": "labeled px", "target/miou": "mIoU"},
        parameter_columns=parameter_columns(cfg.sweep.search_space),
        max_report_frequency=30,
    )
    return tune.RunConfig(
        name="tune",
        storage_path=storage.fs_path(storage.location(sweep.folder)),
        storage_filesystem=storage.ray_filesystem,
        verbose=0 if sweep.quiet else 1,
        callbacks=[
            MlflowTrialLogger(
                sweep.tracking_uri,
                cfg.sweep.name,
                parent,
                functools.partial(_trial_params, cfg, provenance),
                trial_dir=functools.partial(_trial_dir, sweep.folder),
                unsent_path=sweep.unsent_path,
            ),
            RoundTensorBoard(),  # TensorBoard files with step = round
            TuneStateKeeper(cfg.to_dict(), str(sweep.folder / "tune"), str(sweep.folder / STATE_BACKUP)),
        ],
        progress_reporter=reporter,
        # A failed trial starts again from its last round checkpoint (its bought labels kept).
        failure_config=tune.FailureConfig(max_failures=cfg.sweep.trial_retries),
        # Round checkpoints are small (a JSON file and the label store); keep them all.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )


def _trial_params(cfg: ExperimentConfig, provenance: dict, sampled: dict) -> tuple[dict, dict]:
    """A trial's MLflow params (its flattened config) and tags (provenance, rule, budget)."""
    trial_cfg = with_overrides(cfg, sampled)
    tags = {
        **provenance,
        "rule": trial_cfg.selection.rule,
        "budget": f"{budget_label(trial_cfg)} x {trial_cfg.selection.rounds} rounds",
    }
    return trial_cfg.flat(), tags


def _fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """Run the trials until each is done, failed, stopped early or waiting for people's labels."""
    # A failed trial is one line below the table, not Tune's traceback (its error file keeps that).
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_without_trial_tracebacks)
    return tuner.fit()


def _summarise_and_report(
    sweep: _Sweep, results: tune.ResultGrid, models: _StartModels, tracking: SweepTracking, parent: str
) -> _Outcome:
    """One row per trial, the report folder, and the sweep's MLflow run finished with the report."""
    cfg = sweep.cfg
    waiting = pending_annotations(sweep.folder / "trials")
    rows = summarize(
        results,
        cfg,
        models.source_metrics,
        stopped_early=read_early_stops(sweep.folder),
        awaiting={trial: r for trial, (r, _) in waiting.items()},
    )
    failed = sum(1 for r in rows if r["status"].startswith("failed"))
    report_dir = write_sweep_report(
        results,
        cfg,
        sweep.folder,
        models.source_metrics.get("target/miou"),
        models.oracle_metrics.get("target/miou"),
        sweep.say,
        warmup=models.warmup_metrics.get("target/miou"),
    )
    tracking.finish_sweep(parent, "FAILED" if failed else "FINISHED", report_dir, unsent_path=sweep.unsent_path)
    return _Outcome(rows, failed, waiting)


def _print_outcome(sweep: _Sweep, results: tune.ResultGrid, models: _StartModels, outcome: _Outcome) -> int:
    """The table, a line per failed trial, the totals and what to do next; returns the exit code."""
    cfg, rows, failed, waiting = sweep.cfg, outcome.rows, outcome.failed, outcome.waiting
    print(format_table(rows, models.source_metrics, models.oracle_metrics, models.warmup_metrics))
    for result in results:
        trial = (result.metrics or {}).get("trial_id", Path(result.path).name)
        if result.error is not None and trial not in waiting:  # waiting for people is no failure
            print(f"[activeda] trial {trial} failed: {failure_line(result.error)}")
    print(
        f"[activeda] {len(rows)} trial(s), {failed} failed, in {time.perf_counter() - sweep.started:.0f} s; "
        f"MLflow: {display_uri(sweep.tracking_uri)} (experiment '{cfg.sweep.name}')"
    )
    incomplete = sum(1 for r in rows if r["status"] == "failed: incomplete")
    if incomplete:  # stopped without an error of their own: Ctrl-C, or the driver was stopped
        print(
            f"[activeda] {incomplete} trial(s) did not finish; to continue them where they stopped, run the "
            f"same command with --resume"
        )
    problems = {storage_problem(r.error) for r in results} - {None}
    if failed and not problems and output_storage_problem(cfg):
        problems = {output_storage_problem(cfg)}
    if problems:
        print(storage_problem_line(sorted(problems)[0], cfg), file=sys.stderr)
    if waiting and not failed:
        for trial, (round_index, path) in sorted(waiting.items()):
            print(
                f"[activeda] {trial} waits for the answers of round {round_index}: label the pixels in '{path}', "
                f"then python -m orchestrator.annotate import --trial-dir {path.parent.parent} --round "
                f"{round_index} --answers FILE"
            )
        print("[activeda] once every answer is imported: the same command with --resume")
        return EXIT_AWAITING_ANNOTATION
    return EXIT_TRIALS_FAILED if failed else 0
