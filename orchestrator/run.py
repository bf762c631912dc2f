"""``python -m orchestrator.run``: one trial without Tune, on the same code path, for debugging.

Ranking still runs on Ray actors and training on Ray Train; the trial logs to one MLflow run
(experiment ``sweep.name``, tagged ``activeda.kind=run``) and prints each round. Search-space
settings are ignored: the config's own values are the trial.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from experiment_config import ConfigError
from orchestrator.command_line import (
    EXIT_BAD_INPUT,
    HelpFormatter,
    add_trial_arguments,
    config_epilog,
    parse_args,
    resolve_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda run",
        description=__doc__,
        epilog=config_epilog("activeda run"),
        formatter_class=HelpFormatter,
    )
    add_trial_arguments(parser)  # the sweep's options, minus the sweep-only ones
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan of the run (steps, images, estimated GPU-hours from measured step times) "
        "and exit: Ray is not started and nothing is written",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if args.dry_run:
        from orchestrator.sweep.command import dry_run

        return dry_run(args, "python -m orchestrator.run", single_trial=True)
    # A config error is said before Torch, Ray and MLflow are imported (seconds of a user's time).
    try:
        cfg = resolve_config(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from orchestrator.cluster.processes import exit_on_sigterm
    from orchestrator.cluster.ray_connection import RayStartError
    from orchestrator.sweep.preflight import preflight
    from orchestrator.tracking.mlflow_runs import TrackingError, resolve_tracking_uri
    from trainers.data import DatasetError
    from trainers.models import StartCheckpointError
    from trainers.train_loop import TrainingJobError

    exit_on_sigterm()
    try:
        uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.uri)
        preflight(cfg, uri, sweep=False, progress=None if args.quiet else print)
    except (ConfigError, TrackingError, DatasetError, StartCheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        run_trial(
            cfg,
            uri,
            address=args.address,
            num_cpus=args.num_cpus,
            quiet=args.quiet,
            dashboard=False if args.no_dashboard else None,
        )
        return 0
    except (ConfigError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingJobError, RayStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process of the run has ended", file=sys.stderr)
        return 130


def run_trial(
    cfg,
    uri: str,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = False,
    dashboard: bool | None = None,
) -> tuple[Path, list[dict]]:
    """One trial of a checked config (``cli.resolve_config``), logged to one MLflow run at ``uri``:
    returns its folder and every round's metrics (round 0: the source-only model)."""
    from orchestrator.cluster.processes import end_run_processes, mark_this_run
    from orchestrator.cluster.ray_connection import start_ray
    from orchestrator.round.loop import run_experiment
    from orchestrator.round.start_models import ensure_source_model, no_warmup_line
    from orchestrator.sweep.resources import plan_resources
    from orchestrator.tracking.mlflow_runs import (
        CHECKPOINT_TAG,
        SweepTracking,
        display_uri,
        log_params,
        log_round_images,
        provenance_tags,
    )
    from trainers.data import domain_roots

    say = (lambda msg: None) if quiet else (lambda msg: print(f"[activeda] {msg}", flush=True))
    run_mark = mark_this_run()  # before Ray starts: every process of this run inherits it
    start_ray(address, num_cpus, quiet, dashboard=dashboard)
    import ray

    rounds: list[dict] = []
    try:
        plan_resources(cfg, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        run_dir = Path(cfg.output_dir) / cfg.sweep.name / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        domain_roots(cfg.data, progress=say)  # generates the synthetic domains if needed
        tracking = SweepTracking(uri, cfg.sweep.name, Path(cfg.output_dir) / cfg.sweep.name)
        source_checkpoint, source_metrics = ensure_source_model(cfg, progress=say)
        if (missing := no_warmup_line(cfg)) is not None:  # LabOR's first selection with an S that never saw the target
            say(missing)
        run = tracking.client.create_run(
            tracking.experiment_id,
            run_name=f"run-{run_dir.name}",
            tags={"activeda.kind": "run", "rule": cfg.selection.rule, **provenance_tags()},
        )
        run_id = run.info.run_id
        log_params(tracking.client, run_id, cfg.flat())

        def report(metrics, progress_state) -> None:
            rounds.append(dict(metrics))
            tracking.log_metrics(run_id, metrics, step=int(metrics["round"]), context="run")
            tracking.client.set_tag(run_id, CHECKPOINT_TAG, progress_state.model_checkpoint)  # the latest round's
            log_round_images(tracking.client, run_id, run_dir, int(metrics["round"]))
            if metrics["round"] == 0:  # later rounds are announced by the experiment loop itself
                start = "after the label-free warm-up" if cfg.warmup.steps else "source only"
                say(f"round 0 ({start}): target mIoU {metrics['target/miou']:.4f}")

        status = "FAILED"
        try:
            run_experiment(
                cfg, run_dir, source_checkpoint, source_metrics, report=report, progress=say, trial_id=run_dir.name
            )
            status = "FINISHED"
        finally:
            tracking.end(run_id, status)
        say(f"done: {run_dir}; MLflow run {run_id} in {display_uri(uri)}")
        return run_dir, rounds
    finally:
        ray.shutdown()
        end_run_processes(run_mark)


if __name__ == "__main__":
    sys.exit(main())
