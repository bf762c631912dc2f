"""``python -m orchestrator.sweep``: a Ray Tune sweep of active domain-adaptation trials.

Steps: validate the config -> check the MLflow store -> start or join Ray -> check that the config
can be scheduled -> train (or reuse) the source model -> run the trials under Tune, each logging a
child MLflow run -> print a table of the trials.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli import add_trial_arguments, config_epilog, parse_args, resolve_config
from .config import CASES_AXIS, NO_SELECTION, ConfigError, ExperimentConfig, from_dict, with_overrides

EXIT_BAD_INPUT = 2
EXIT_TRIALS_FAILED = 1
EXIT_AWAITING_ANNOTATION = 3  # human oracle: trials wait for a round's answers; import them, then --resume
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it

log = logging.getLogger("activeda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Run a Ray Tune sweep of active domain-adaptation trials (LabOR pixel selection, "
                    "Ray Train adaptation) and log every trial to MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=config_epilog("python -m orchestrator.sweep"),
    )
    add_trial_arguments(parser)
    parser.add_argument("--cluster-config", metavar="YAML",
                        help="the cluster's `ray up` file: its autoscaling node types count as available "
                             "resources (e.g. GPU workers that start on demand)")
    parser.add_argument("--num-samples", type=int, metavar="N", help="shortcut for --set sweep.num_samples=N")
    parser.add_argument("--max-concurrent", type=int, metavar="N",
                        help="shortcut for --set sweep.max_concurrent=N (default: derived from the cluster)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep of the same name and output dir: finished trials are "
                             "kept, unfinished ones continue after their last finished round")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # table-creation notices on a new store
    from trainers.checkpoint import CheckpointError
    from trainers.data import DatasetError
    from trainers.models import StartCheckpointError
    from trainers.train_loop import TrainingJobError

    from .cluster import ClusterConfigError
    from .lifetime import exit_on_sigterm
    from .preflight import preflight
    from .sweeplock import SweepFolderBusy
    from .tracking import TrackingError, resolve_tracking_uri

    exit_on_sigterm()
    bad_input = (ConfigError, TrackingError, DatasetError, CheckpointError, ClusterConfigError, StartCheckpointError,
                 SweepFolderBusy)
    try:
        cfg = resolve_config(args)
        uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.uri)
        preflight(cfg, uri, resume=args.resume, progress=None if args.quiet else print)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        shapes = None
        if args.cluster_config:
            from .cluster import node_shapes, validate_cluster_file

            shapes = node_shapes(validate_cluster_file(args.cluster_config))
        return run_sweep(cfg, uri, address=args.address, num_cpus=args.num_cpus, quiet=args.quiet, resume=args.resume,
                         node_types=shapes, dashboard=False if args.no_dashboard else None)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingJobError as err:  # the source model or the oracle reference (a trial's own shows in its row)
        problem = output_storage_problem(cfg)  # ... unless the disk is full
        print(storage_problem_line(problem, cfg) if problem else f"error: {err}", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    except Exception as err:  # the driver's own writes (Tune state, the report) on a full disk, and what
        # they break later (Tune reading back a half-written file fails with EOFError, not OSError)
        problem = storage_problem(err) or output_storage_problem(cfg)
        if problem is None:
            raise
        print(storage_problem_line(problem, cfg), file=sys.stderr)
        return EXIT_TRIALS_FAILED
    except KeyboardInterrupt:  # Ctrl-C before Tune took over SIGINT (e.g. while the source model trains)
        print("interrupted; every process of the sweep has ended. To continue: the same command"
              + (" with --resume" if (Path(cfg.output_dir) / cfg.sweep.name / SWEEP_STATE).is_file() else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED


SWEEP_STATE = "sweep.json"
# Sections that may differ when a sweep is resumed: where and how fast it runs, not what it computes.
RESUMABLE_DIFFERENCES = ("train.", "ranking.", "sweep.max_concurrent", "tracking.", "storage.endpoint",
                         "storage.region")


def load_sweep_state(sweep_dir: Path, cfg: ExperimentConfig) -> dict:
    """The saved state of an interrupted sweep; refuses one started with a different experiment."""
    path = sweep_dir / SWEEP_STATE
    return sweep_state_from_text(path.read_text() if path.is_file() else None, sweep_dir, cfg)


def sweep_state_from_text(text: str | None, sweep_dir: Path, cfg: ExperimentConfig) -> dict:
    """``load_sweep_state`` for the text of a ``sweep.json`` (None: there is none)."""
    if text is None:
        raise ConfigError("", f"nothing to resume: no sweep was started at '{sweep_dir}'")
    try:
        state = json.loads(text)
        state["config"]["sweep"]["search_space"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("", f"cannot resume '{sweep_dir}': its {SWEEP_STATE} is damaged") from None
    saved = from_dict(state["config"]).flat()
    changed = sorted(k for k, v in cfg.flat().items()
                     if saved.get(k) != v and not k.startswith(RESUMABLE_DIFFERENCES))
    if changed or state["config"]["sweep"]["search_space"] != cfg.sweep.search_space:
        keys = ", ".join(changed) or "sweep.search_space"
        raise ConfigError("", f"cannot resume '{sweep_dir}': it was started with different settings ({keys}); "
                              f"resume with the same config, or start a new sweep under another sweep.name")
    return state


EARLY_STOPS = "early-stops.jsonl"  # in the sweep folder: the trials ASHA stopped, and at which round


def build_scheduler(cfg: ExperimentConfig, early_stops: Path | None = None):
    """FIFO, ASHA (stops weak trials after ``sweep.grace_rounds``) or PBT (clones strong trials).

    ASHA's decisions to stop a trial before its last round are appended to ``early_stops``: such a
    trial ends without error and short of its rounds, and the summary must tell it from a failure.
    """
    from ray import tune

    kind = cfg.sweep.scheduler
    if kind == "fifo":
        return None
    if kind == "asha":
        from .tune_parts import RecordingASHA

        return RecordingASHA(time_attr="round", max_t=cfg.selection.rounds,
                             grace_period=min(cfg.sweep.grace_rounds, cfg.selection.rounds),
                             early_stops=str(early_stops) if early_stops is not None else None)
    mutations = {key: build_param_space({key: spec})[key] for key, spec in cfg.sweep.search_space.items()
                 if next(iter(spec)) != "grid"}
    # Synchronous: every round, all trials are compared at that same round, so which trial clones which
    # does not depend on which happened to report first (asynchronous PBT could not clone at all when
    # trials finished out of step: a trial is only cloned from after it was compared while in the lead).
    return tune.schedulers.PopulationBasedTraining(time_attr="round", perturbation_interval=1,
                                                   hyperparam_mutations=mutations, synch=True)


def read_early_stops(sweep_dir: Path) -> dict[str, int]:
    """trial id -> the round after which ASHA stopped it."""
    path = sweep_dir / EARLY_STOPS
    if not path.is_file():
        return {}
    stops = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            stops[str(record["trial_id"])] = int(record["round"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut off by a crash: that trial shows as incomplete, which it then is
    return stops


def run_sweep(cfg: ExperimentConfig, tracking_uri: str, address: str | None = None, num_cpus: int | None = None,
              quiet: bool = False, resume: bool = False, node_types: list[dict] | None = None,
              dashboard: bool | None = None) -> int:
    from .raysession import start_ray
    from .storage import open_storage

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
    from .lifetime import end_run_processes, mark_this_run
    from .sweeplock import SweepFolderLock

    run_mark = mark_this_run()  # before Ray starts: every process of this run inherits it
    lock = None
    start_ray(address, num_cpus, quiet, dashboard=dashboard)
    import ray
    from ray import tune

    from trainers.data import domain_roots
    from trainers.models import pretrained_status

    from .experiment import ensure_oracle_reference, ensure_source_model, ensure_warmup_model, tune_trial
    from .resources import plan_resources, with_node_types
    from .tracking import MlflowTrialLogger, SweepTracking, display_uri, provenance_tags
    from .tensorboard_rounds import RoundTensorBoard

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
        roots = domain_roots(cfg.to_dict()["data"], progress=say)
        say(f"data: source {cfg.data.source.format} at {roots[0]}, target {cfg.data.target.format} at {roots[1]}")
        say(pretrained_status(cfg.model.name, cfg.model.pretrained))
        source_checkpoint, source_metrics = ensure_source_model(cfg, progress=say)
        # Once here, before the trials, which all start from it (a trial whose settings change it trains its own).
        _, warmup_metrics = ensure_warmup_model(cfg, source_checkpoint, {}, progress=say)
        oracle_metrics = ensure_oracle_reference(cfg, source_checkpoint, progress=say) if cfg.sweep.oracle_reference else {}
        provenance = provenance_tags()  # git commit and user, on the sweep's run and every trial's
        if state is None:
            parent = tracking.start_parent(f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", cfg.flat(),
                                           {"activeda.sweep": cfg.sweep.name, **provenance,
                                            "activeda.source_checkpoint": source_checkpoint})
            tracking.log_metrics(parent, {f"source_only/{k}": v for k, v in source_metrics.items()}
                                 | {f"oracle/{k}": v for k, v in oracle_metrics.items()}
                                 | {f"warmup/{k}": v for k, v in warmup_metrics.items() if k != "warmup/steps"}, step=0,
                                 context="source model")
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
            tags = {**provenance, "selector": trial_cfg.selection.selector,
                    "budget": f"{budget_label(trial_cfg)} x {trial_cfg.selection.rounds} rounds"}
            return trial_cfg.flat(), tags

        # Trials keep the sweep's search space: a PBT trial's config is only valid with its mutable axes.
        base = cfg.to_dict()
        trainable = tune.with_parameters(tune_trial, base=base, source_checkpoint=source_checkpoint,
                                         source_metrics=source_metrics, sweep_dir=str(sweep_dir))
        trainable = tune.with_resources(trainable, plan.trial_resources)
        # Tune keeps its experiment state and trial checkpoints in cluster-wide storage: a trial that
        # moves to another node restores from there.
        tune_path = storage.fs_path(storage.location(sweep_dir / "tune"))
        if state is not None and restorable_tune_state(storage, sweep_dir, say):
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=storage.ray_filesystem)
        else:
            from .tune_parts import STATE_BACKUP, SweepReporter, TuneStateKeeper

            reporter = SweepReporter(
                metric_columns={"round": "round", "budget/labeled_pixels": "labeled px", "target/miou": "mIoU"},
                parameter_columns=parameter_columns(cfg.sweep.search_space), max_report_frequency=30)
            tuner = tune.Tuner(
                trainable,
                param_space=build_param_space(cfg.sweep.search_space),
                tune_config=tune.TuneConfig(num_samples=cfg.sweep.num_samples, max_concurrent_trials=plan.max_concurrent,
                                            metric="target/miou", mode="max",
                                            scheduler=build_scheduler(cfg, sweep_dir / EARLY_STOPS)),
                run_config=tune.RunConfig(
                    name="tune", storage_path=storage.fs_path(storage.location(sweep_dir)),
                    storage_filesystem=storage.ray_filesystem, verbose=0 if quiet else 1,
                    callbacks=[MlflowTrialLogger(tracking_uri, cfg.sweep.name, parent, trial_params,
                                                 trial_dir=functools.partial(_trial_dir, sweep_dir),
                                                 unsent_path=str(sweep_dir / "mlflow-unsent.jsonl")),
                               RoundTensorBoard(),  # TensorBoard files with step = round
                               TuneStateKeeper(cfg.to_dict(), str(sweep_dir / "tune"),
                                               str(sweep_dir / STATE_BACKUP))],
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
        from .annotate import pending_annotations

        waiting = pending_annotations(sweep_dir / "trials")
        rows = summarize(results, cfg, source_metrics, stopped_early=read_early_stops(sweep_dir),
                         awaiting={trial: r for trial, (r, _) in waiting.items()})
        failed = sum(1 for r in rows if r["status"].startswith("failed"))
        report_dir = write_sweep_report(results, cfg, sweep_dir, source_metrics.get("target/miou"),
                                        oracle_metrics.get("target/miou"), say)
        tracking.finish_sweep(parent, "FAILED" if failed else "FINISHED", report_dir,
                              unsent_path=str(sweep_dir / "mlflow-unsent.jsonl"))
        print(format_table(rows, source_metrics, oracle_metrics))
        for result in results:
            trial = (result.metrics or {}).get("trial_id", Path(result.path).name)
            if result.error is not None and trial not in waiting:  # waiting for people is no failure
                print(f"[activeda] trial {trial} failed: {failure_line(result.error)}")
        print(f"[activeda] {len(rows)} trial(s), {failed} failed, in {time.perf_counter() - started:.0f} s; "
              f"MLflow: {display_uri(tracking_uri)} (experiment '{cfg.sweep.name}')")
        incomplete = sum(1 for r in rows if r["status"] == "failed: incomplete")
        if incomplete:  # stopped without an error of their own: Ctrl-C, or the driver was stopped
            print(f"[activeda] {incomplete} trial(s) did not finish; to continue them where they stopped, run the "
                  f"same command with --resume")
        problems = {storage_problem(r.error) for r in results} - {None}
        if failed and not problems and output_storage_problem(cfg):
            problems = {output_storage_problem(cfg)}
        if problems:
            print(storage_problem_line(sorted(problems)[0], cfg), file=sys.stderr)
        if waiting and not failed:
            for trial, (round_index, path) in sorted(waiting.items()):
                print(f"[activeda] {trial} waits for the answers of round {round_index}: label the pixels in '{path}', "
                      f"then python -m orchestrator.annotate import --trial-dir {path.parent.parent} --round "
                      f"{round_index} --answers FILE")
            print("[activeda] once every answer is imported: the same command with --resume")
            return EXIT_AWAITING_ANNOTATION
        return EXIT_TRIALS_FAILED if failed else 0
    finally:
        ray.shutdown()
        end_run_processes(run_mark)
        if lock is not None:
            lock.release()


# What a full or unwritable output folder looks like, in an OSError or in a trial's error text.
STORAGE_PROBLEMS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                    errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied"}


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
    return (f"error: {problem} under the output folder '{cfg.output_dir}': the labels and checkpoints of finished "
            f"rounds are intact; free some space (or make it writable), then run the same command with --resume")


def restorable_tune_state(storage, sweep_dir: Path, say=print) -> bool:
    """Whether ``--resume`` can restore Tune from its saved state (repairing it from the kept copy if
    needed); False when Tune never saved one and no trial started, so the Tune run starts afresh.

    Tune's own restore, given a state that is missing or damaged, starts the trials anew under new
    ids (and without the param space): they would buy their labels again. Seen twice: a driver killed
    before Tune's first save (``tuner.pkl`` alone), and a state cut off on a full disk. So a damaged
    state is replaced by the last readable copy (``TuneStateKeeper``), and without one the resume is
    refused while trials have started, rather than buying their labels again.
    """
    from .tune_parts import EXPERIMENT_STATE, SEARCHER_STATE, STATE_BACKUP, readable_state

    tune_dir = sweep_dir / "tune"
    names = storage.listdir(storage.location(tune_dir))
    if "tuner.pkl" in names and readable_state(storage, tune_dir) is not None:
        return True
    states = sorted(n for n in names if n.startswith(EXPERIMENT_STATE) and n.endswith(".json"))
    kept = readable_state(storage, sweep_dir / STATE_BACKUP)
    if "tuner.pkl" in names and states and kept is not None:
        newest = states[-1]
        for name, data in kept.items():  # under the damaged files' names: Tune reads the newest
            target = newest if name.startswith(EXPERIMENT_STATE) else SEARCHER_STATE + newest[len(EXPERIMENT_STATE):]
            storage.write_bytes(storage.join(storage.location(tune_dir), target), data)
        say(f"Tune's experiment state '{newest}' was damaged; restored the last readable copy from {STATE_BACKUP}/")
        return True
    started = sorted(p.parent.name for p in (sweep_dir / "trials").glob("*/progress.json"))
    if started:
        problem = f"its experiment state ('{states[-1]}') is damaged" if states else "it saved no experiment state"
        raise ConfigError("", f"cannot resume '{sweep_dir}': Tune cannot be restored ({problem}, and no readable "
                              f"copy was kept); starting the trials anew would buy their labels again. Their label "
                              f"stores and checkpoints are intact under '{sweep_dir / 'trials'}'")
    return False


def _without_trial_tracebacks(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Trial task failed")


def failure_line(error: BaseException) -> str:
    """One line for a failed trial: a training job's own one-line message, else the error's last line."""
    from trainers.train_loop import last_error_line

    line = last_error_line(str(error))
    prefix = "trainers.train_loop.TrainingJobError: "
    return line[len(prefix):] if line.startswith(prefix) else line


def _trial_dir(sweep_dir: Path, trial_id: str) -> Path:
    return sweep_dir / "trials" / trial_id


def round_rows(results, cfg: ExperimentConfig) -> "pd.DataFrame":
    """One row per (trial, round) from every trial's reports: what the budget curve draws."""
    import pandas as pd

    frames = [trial_round_rows(str((result.metrics or {}).get("trial_id", Path(result.path).name)),
                               dict(result.config or {}), result.metrics_dataframe, cfg) for result in results]
    frames = [frame for frame in frames if frame is not None]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop_duplicates(["trial_id", "round"], keep="last")


def trial_round_rows(trial_id: str, sampled: dict, history, cfg: ExperimentConfig):
    """One trial's reports (Tune's metrics history) as rows of the report; None without a round."""
    import pandas as pd

    if history is None or history.empty or "round" not in history:
        return None
    trial_cfg = with_overrides(cfg, sampled)
    return pd.DataFrame({
        "trial_id": trial_id,
        "selector": trial_cfg.selection.selector,
        "setting": trial_setting(sampled),
        "budget": budget_label(trial_cfg),
        "round": history["round"].astype(int),
        "labeled_pixels": history["budget/labeled_pixels"],
        "labeled_fraction": history["budget/labeled_fraction"],
        "clicks": history["budget/clicks"],
        "miou": history["target/miou"],
        # Per-class IoU, for the report's table of every trial side by side.
        **{f"iou/{c[len('target/iou/'):]}": history[c] for c in history.columns if c.startswith("target/iou/")},
    })


# Keys that make a trial's point on its method's curve, not its own curve: the method and the budget
# (the x axis), and the seed (averaged over).
NOT_A_SETTING = ("selection.selector", "selection.points_per_image", "selection.budget_fraction", "seed")


def trial_setting(sampled: dict) -> str:
    """The swept keys of a trial that set its curve apart from others of the same selector, e.g.
    ``confusion_weight=0.1, rounds=2`` ('' when the sweep varies nothing else)."""
    flat = {}
    for key, value in sampled.items():
        flat.update(value if key == CASES_AXIS and isinstance(value, dict) else {key: value})
    return ", ".join(f"{key.rpartition('.')[2]}={value}" for key, value in sorted(flat.items())
                     if key not in NOT_A_SETTING)


def budget_label(cfg: ExperimentConfig) -> str:
    if cfg.selection.selector == NO_SELECTION:
        return "no labels"
    if cfg.selection.spl_mode == "whole_mask":
        return "whole mask/round"
    if cfg.selection.budget_fraction > 0:
        return f"{100 * cfg.selection.budget_fraction:g}% of pixels/round"
    return f"{cfg.selection.points_per_image} points/image/round"


def write_sweep_report(results, cfg: ExperimentConfig, sweep_dir: Path, source_only: float | None,
                       oracle: float | None, say) -> Path | None:
    """The sweep's report folder: ``report.html`` (interactive: curves per method and setting, Pareto
    front in clicks, per-class IoU table), ``method_curves.png``, the per-trial budget curve (PNG +
    HTML), and the tables ``summary``, ``class_iou``, ``curves`` and ``pareto`` (CSV + parquet)."""
    from .report import (budget_curve, class_iou_table, method_curves, method_curves_png, pareto_front, report_page,
                         summary_table, write_summary, write_table)

    rows = round_rows(results, cfg)
    if rows.empty:
        return None
    out = sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.sweep.name}: target mIoU against the annotation budget"
    budget_curve(rows, out / "budget_curve.png", out / "budget_curve.html", source_only=source_only, oracle=oracle,
                 title=f"{cfg.sweep.name}: every trial, round by round")
    curves = method_curves(rows)
    method_curves_png(curves, out / "method_curves.png", source_only=source_only, oracle=oracle, title=title)
    try:
        page = report_page(rows, out / "report.html", source_only=source_only, oracle=oracle, title=title)
    except ImportError as err:  # plotly is a dependency; an environment without it still gets the rest
        page = out / "method_curves.png"
        say(f"report.html skipped: {err} (pip install plotly)")
    write_summary(summary_table(rows, source_only=source_only, oracle=oracle), out)
    write_table(class_iou_table(rows), out, "class_iou")
    write_table(curves, out, "curves")
    write_table(pareto_front(curves), out, "pareto")
    rows.to_csv(out / "rounds.csv", index=False)
    say(f"report: {page} (curves, Pareto front, per-class IoU), {out / 'summary.csv'}")
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def parameter_columns(search_space: dict[str, dict]) -> list[str]:
    """Columns of Tune's progress table: each axis, and for a ``cases`` axis each key that *every*
    case sets (Tune flattens a sampled case to ``cases/<key>``; its best-trial line looks every
    column up in the best trial's config and fails on a missing key), else the cases whole."""
    columns = [key for key in search_space if key != CASES_AXIS]
    for spec in search_space.get(CASES_AXIS, {}).values():
        common = [key for key in spec[0] if all(key in case for case in spec)]
        columns += [f"{CASES_AXIS}/{key}" for key in common] or [CASES_AXIS]
    return columns


def build_param_space(search_space: dict[str, dict]) -> dict[str, Any]:
    """YAML search space -> Tune param space (keys stay the dotted config keys)."""
    from ray import tune

    kinds = {
        "grid": lambda v: tune.grid_search(list(v)),
        "choice": lambda v: tune.choice(list(v)),
        "uniform": lambda v: tune.uniform(v[0], v[1]),
        "loguniform": lambda v: tune.loguniform(v[0], v[1]),
        "randint": lambda v: tune.randint(int(v[0]), int(v[1])),
    }
    space = {}
    for key, spec in search_space.items():
        (kind, values), = spec.items()
        space[key] = kinds[kind](values)
    return space


def summarize(results, cfg: ExperimentConfig, source_metrics: dict, stopped_early: dict[str, int] | None = None,
              awaiting: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per trial. ``stopped_early`` (trial id -> round) are ASHA's stops: a result, not a failure;
    ``awaiting`` (trial id -> round) are trials that stopped to wait for people's labels of that round."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_cfg = with_overrides(cfg, {k: v for k, v in (result.config or {}).items()})
        # A trial is done at its own last round: a search space or case may set selection.rounds.
        ok = result.error is None and metrics.get("round") == trial_cfg.selection.rounds
        stop_round = (stopped_early or {}).get(str(metrics.get("trial_id")))
        stopped = result.error is None and stop_round is not None and metrics.get("round") == stop_round
        waits_for = (awaiting or {}).get(str(metrics.get("trial_id")))
        rows.append({
            "trial": metrics.get("trial_id", "?"),
            "selector": trial_cfg.selection.selector,
            "budget": budget_label(trial_cfg),  # points for point selectors, a pixel share for regions
            "rounds": metrics.get("round", 0),
            "labeled px": int(metrics.get("budget/labeled_pixels", 0)),
            "labeled %": 100 * metrics.get("budget/labeled_fraction", 0.0),
            "mIoU": metrics.get("target/miou", math.nan),
            "status": ("ok" if ok else f"stopped by asha after round {stop_round}" if stopped
                       else f"waits for the annotations of round {waits_for}" if waits_for is not None
                       else f"failed: {storage_problem(result.error) or type(result.error).__name__}"
                       if result.error else "failed: incomplete"),
            "sampled": result.config or {},
        })
    rows.sort(key=lambda r: (-(r["mIoU"] if r["mIoU"] == r["mIoU"] else -1), r["trial"]))
    return rows


def format_table(rows: list[dict[str, Any]], source_metrics: dict, oracle_metrics: dict | None = None) -> str:
    header = f"{'trial':<12} {'selector':<23} {'budget':<21} {'rounds':>6} {'labeled px':>10} " \
             f"{'labeled %':>9} {'mIoU':>7} {'gain':>7} {'gap closed':>10}  status"
    base = source_metrics.get("target/miou", math.nan)
    ceiling = (oracle_metrics or {}).get("target/miou", math.nan)
    lines = ["", f"source-only target mIoU: {base:.4f}"]
    if ceiling == ceiling:
        lines.append(f"oracle (every pool pixel labeled) target mIoU: {ceiling:.4f}")
    lines += [header, "-" * len(header)]
    for r in rows:
        closed = (r["mIoU"] - base) / (ceiling - base) if ceiling == ceiling and ceiling != base else math.nan
        lines.append(f"{r['trial']:<12} {r['selector']:<23} {r['budget']:<21} {r['rounds']:>6} "
                     f"{r['labeled px']:>10} {r['labeled %']:>9.3f} {r['mIoU']:>7.4f} {r['mIoU'] - base:>+7.4f} "
                     f"{closed:>10.2f}  {r['status']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
