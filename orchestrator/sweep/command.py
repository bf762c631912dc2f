"""``python -m orchestrator.sweep`` (and ``activeda sweep``): parse the command line, check everything
before any work (pre-flight), run the sweep, and turn every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from experiment_config import (
    ConfigError,
)
from orchestrator.command_line import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TRIALS_FAILED,
    HelpFormatter,
    add_trial_arguments,
    config_epilog,
    parse_args,
    resolve_config,
)
from orchestrator.sweep.failures import (
    output_storage_problem,
    storage_problem,
    storage_problem_line,
)
from orchestrator.sweep.state import SWEEP_STATE

log = logging.getLogger("activeda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda sweep",
        description="Run a Ray Tune sweep of active domain-adaptation trials (LabOR pixel selection, "
        "Ray Train adaptation) and log every trial to MLflow.",
        formatter_class=HelpFormatter,
        epilog=config_epilog("activeda sweep"),
    )
    add_trial_arguments(parser)
    parser.add_argument(
        "--cluster-config",
        metavar="YAML",
        help="the cluster's `ray up` file: its autoscaling node types count as available "
        "resources (e.g. GPU workers that start on demand)",
    )
    parser.add_argument("--num-samples", type=int, metavar="N", help="shortcut for --set sweep.num_samples=N")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="shortcut for --set sweep.max_concurrent=N (default: derived from the cluster)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (trials, rounds, steps, images, estimated GPU-hours from measured step times) "
        "and exit: Ray is not started and nothing is written",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep of the same name and output dir: finished trials are "
        "kept, unfinished ones continue after their last finished round",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # table-creation notices on a new store
    if args.dry_run:
        return dry_run(args, "python -m orchestrator.sweep")
    # A config error is said before Torch, Ray and MLflow are imported (seconds of a user's time).
    try:
        cfg = resolve_config(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from orchestrator.cluster.cluster_file import ClusterConfigError
    from orchestrator.cluster.folder_lock import SweepFolderBusy
    from orchestrator.cluster.processes import exit_on_sigterm
    from orchestrator.cluster.ray_connection import RayStartError
    from orchestrator.sweep.driver import run_sweep
    from orchestrator.sweep.preflight import preflight
    from orchestrator.tracking.mlflow_runs import TrackingError, resolve_tracking_uri
    from trainers.checkpoint import CheckpointError
    from trainers.data import DatasetError
    from trainers.models import StartCheckpointError
    from trainers.train_loop import TrainingJobError

    exit_on_sigterm()
    bad_input = (
        ConfigError,
        TrackingError,
        DatasetError,
        CheckpointError,
        ClusterConfigError,
        StartCheckpointError,
        SweepFolderBusy,
    )
    try:
        uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.uri)
        preflight(cfg, uri, resume=args.resume, progress=None if args.quiet else print)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        shapes = None
        if args.cluster_config:
            from orchestrator.cluster.cluster_file import (
                node_shapes,
                validate_cluster_file,
            )

            shapes = node_shapes(validate_cluster_file(args.cluster_config))
        return run_sweep(
            cfg,
            uri,
            address=args.address,
            num_cpus=args.num_cpus,
            quiet=args.quiet,
            resume=args.resume,
            node_types=shapes,
            dashboard=False if args.no_dashboard else None,
        )
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RayStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TRIALS_FAILED
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
        print(
            "interrupted; every process of the sweep has ended. To continue: the same command"
            + (" with --resume" if (Path(cfg.output_dir) / cfg.sweep.name / SWEEP_STATE).is_file() else ""),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def dry_run(args: argparse.Namespace, command: str, *, single_trial: bool = False) -> int:
    """``--dry-run``: the config checked (its initial weights too), the plan printed; no Ray, no writes."""
    from orchestrator.sweep.plan import format_plan, make_plan
    from orchestrator.sweep.preflight import check_initial_weights

    try:
        cfg = resolve_config(args)
        check_initial_weights(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_plan(make_plan(cfg, single_trial=single_trial), cfg, command))
    return 0
