"""Running a sweep: start or join Ray, train or reuse the models every trial starts from, run the trials
under Tune (each logging a child MLflow run), and summarise."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

from experiment_config import (
    ExperimentConfig,
    with_overrides,
)
from orchestrator.command_line import (
    EXIT_AWAITING_ANNOTATION,
    EXIT_TRIALS_FAILED,
)
from orchestrator.sweep.failures import (
    _without_trial_tracebacks,
    failure_line,
    output_storage_problem,
    storage_problem,
    storage_problem_line,
)
from orchestrator.sweep.state import (
    SWEEP_STATE,
    _write_json,
    load_sweep_state,
    restorable_tune_state,
)
from orchestrator.sweep.summary import (
    _trial_dir,
    budget_label,
    format_table,
    summarize,
    write_sweep_report,
)
from orchestrator.sweep.tune_setup import (
    EARLY_STOPS,
    build_param_space,
    build_scheduler,
    parameter_columns,
    read_early_stops,
)

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
    from orchestrator.cluster.ray_session import start_ray
    from orchestrator.cluster.storage import open_storage

    sweep_dir = Path(cfg.output_dir).resolve() / cfg.sweep.name
    storage = open_storage(cfg)
    if resume:  # the sweep may have been started from another machine sharing storage.uri
        storage.pull(sweep_dir / SWEEP_STATE)
    state = load_sweep_state(sweep_dir, cfg) if resume else None
    # A remote tracking server that goes away must cost seconds per call, not minutes of retries:
    # the trial logger buffers what it cannot send.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    started = time.perf_counter()
    from orchestrator.cluster.folder_lock import SweepFolderLock
    from orchestrator.cluster.processes import end_run_processes, mark_this_run

    run_mark = mark_this_run()  # before Ray starts: every process of this run inherits it
    lock = None
    start_ray(address, num_cpus, quiet, dashboard=dashboard)
    import ray
    from ray import tune

    from orchestrator.round.start_models import (
        ensure_oracle_reference,
        ensure_source_model,
        ensure_warmup_model,
    )
    from orchestrator.sweep.resources import plan_resources, with_node_types
    from orchestrator.sweep.trainable import tune_trial
    from orchestrator.tracking.mlflow_runs import (
        MlflowTrialLogger,
        SweepTracking,
        display_uri,
        provenance_tags,
    )
    from orchestrator.tracking.tensorboard import RoundTensorBoard
    from trainers.data import domain_roots
    from trainers.models import pretrained_status

    say = (lambda msg: None) if quiet else (lambda msg: print(f"[activeda] {msg}", flush=True))
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        if node_types:
            total, nodes = with_node_types(total, nodes, node_types)
        plan = plan_resources(cfg, total, nodes)
        say(f"Ray ready in {time.perf_counter() - started:.0f} s; {plan.note}")
        lock = SweepFolderLock.acquire(sweep_dir, progress=say)  # the first write of the run

        tracking = SweepTracking(tracking_uri, cfg.sweep.name)
        roots = domain_roots(cfg.data, progress=say)
        say(f"data: source {cfg.data.source.format} at {roots[0]}, target {cfg.data.target.format} at {roots[1]}")
        say(pretrained_status(cfg.model.name, cfg.model.pretrained))
        source_checkpoint, source_metrics = ensure_source_model(cfg, progress=say)
        # Once here, before the trials, which all start from it (a trial whose settings change it trains its own).
        _, warmup_metrics = ensure_warmup_model(cfg, source_checkpoint, {}, progress=say)
        oracle_metrics = (
            ensure_oracle_reference(cfg, source_checkpoint, progress=say) if cfg.sweep.oracle_reference else {}
        )
        provenance = provenance_tags()  # git commit and user, on the sweep's run and every trial's
        if state is None:
            parent = tracking.start_parent(
                f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                cfg.flat(),
                {"activeda.sweep": cfg.sweep.name, **provenance, "activeda.source_checkpoint": source_checkpoint},
            )
            tracking.log_metrics(
                parent,
                {f"source_only/{k}": v for k, v in source_metrics.items()}
                | {f"oracle/{k}": v for k, v in oracle_metrics.items()}
                | {f"warmup/{k}": v for k, v in warmup_metrics.items() if k != "warmup/steps"},
                step=0,
                context="source model",
            )
            _write_json(sweep_dir / SWEEP_STATE, {"parent_run_id": parent, "config": cfg.to_dict()})
            storage.push(sweep_dir / SWEEP_STATE)
        else:
            parent = state["parent_run_id"]
            try:
                tracking.client.update_run(parent, status="RUNNING")
            except Exception as err:  # MLflow went away since the pre-flight check: the sweep's end sets it
                log.warning("could not mark the sweep's MLflow run as running again (%s)", type(err).__name__)
            say(f"resuming the sweep at {sweep_dir}")

        def trial_params(sampled: dict) -> tuple[dict, dict]:
            trial_cfg = with_overrides(cfg, sampled)
            tags = {
                **provenance,
                "selector": trial_cfg.selection.selector,
                "budget": f"{budget_label(trial_cfg)} x {trial_cfg.selection.rounds} rounds",
            }
            return trial_cfg.flat(), tags

        # Trials keep the sweep's search space: a PBT trial's config is only valid with its mutable axes.
        base = cfg.to_dict()
        trainable = tune.with_parameters(
            tune_trial,
            base=base,
            source_checkpoint=source_checkpoint,
            source_metrics=source_metrics,
            sweep_dir=str(sweep_dir),
        )
        trainable = tune.with_resources(trainable, plan.trial_resources)
        # Tune keeps its experiment state and trial checkpoints in cluster-wide storage: a trial that
        # moves to another node restores from there.
        tune_path = storage.fs_path(storage.location(sweep_dir / "tune"))
        if state is not None and restorable_tune_state(storage, sweep_dir, say):
            tuner = tune.Tuner.restore(
                tune_path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=storage.ray_filesystem,
            )
        else:
            from orchestrator.sweep.state import STATE_BACKUP
            from orchestrator.sweep.tune_setup import SweepReporter, TuneStateKeeper

            reporter = SweepReporter(
                metric_columns={"round": "round", "budget/labeled_pixels": "labeled px", "target/miou": "mIoU"},
                parameter_columns=parameter_columns(cfg.sweep.search_space),
                max_report_frequency=30,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=build_param_space(cfg.sweep.search_space),
                tune_config=tune.TuneConfig(
                    num_samples=cfg.sweep.num_samples,
                    max_concurrent_trials=plan.max_concurrent,
                    metric="target/miou",
                    mode="max",
                    scheduler=build_scheduler(cfg, sweep_dir / EARLY_STOPS),
                ),
                run_config=tune.RunConfig(
                    name="tune",
                    storage_path=storage.fs_path(storage.location(sweep_dir)),
                    storage_filesystem=storage.ray_filesystem,
                    verbose=0 if quiet else 1,
                    callbacks=[
                        MlflowTrialLogger(
                            tracking_uri,
                            cfg.sweep.name,
                            parent,
                            trial_params,
                            trial_dir=functools.partial(_trial_dir, sweep_dir),
                            unsent_path=str(sweep_dir / "mlflow-unsent.jsonl"),
                        ),
                        RoundTensorBoard(),  # TensorBoard files with step = round
                        TuneStateKeeper(cfg.to_dict(), str(sweep_dir / "tune"), str(sweep_dir / STATE_BACKUP)),
                    ],
                    progress_reporter=reporter,
                    # A failed trial starts again from its last round checkpoint (its bought labels kept).
                    failure_config=tune.FailureConfig(max_failures=cfg.sweep.trial_retries),
                    # Round checkpoints are small (a JSON file and the label store); keep them all.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                ),
            )
        # A failed trial is one line below the table, not Tune's traceback (its error file keeps that).
        logging.getLogger("ray.tune.execution.tune_controller").addFilter(_without_trial_tracebacks)
        results = tuner.fit()
        from orchestrator.labels.annotation import pending_annotations

        waiting = pending_annotations(sweep_dir / "trials")
        rows = summarize(
            results,
            cfg,
            source_metrics,
            stopped_early=read_early_stops(sweep_dir),
            awaiting={trial: r for trial, (r, _) in waiting.items()},
        )
        failed = sum(1 for r in rows if r["status"].startswith("failed"))
        report_dir = write_sweep_report(
            results, cfg, sweep_dir, source_metrics.get("target/miou"), oracle_metrics.get("target/miou"), say
        )
        tracking.finish_sweep(
            parent, "FAILED" if failed else "FINISHED", report_dir, unsent_path=str(sweep_dir / "mlflow-unsent.jsonl")
        )
        print(format_table(rows, source_metrics, oracle_metrics))
        for result in results:
            trial = (result.metrics or {}).get("trial_id", Path(result.path).name)
            if result.error is not None and trial not in waiting:  # waiting for people is no failure
                print(f"[activeda] trial {trial} failed: {failure_line(result.error)}")
        print(
            f"[activeda] {len(rows)} trial(s), {failed} failed, in {time.perf_counter() - started:.0f} s; "
            f"MLflow: {display_uri(tracking_uri)} (experiment '{cfg.sweep.name}')"
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
    finally:
        ray.shutdown()
        end_run_processes(run_mark)
        if lock is not None:
            lock.release()


# What a full or unwritable output folder looks like, in an OSError or in a trial's error text.
