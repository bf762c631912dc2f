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

from .config import ConfigError
from .sweep import EXIT_BAD_INPUT, add_trial_arguments, build_parser as build_sweep_parser, resolve_config
from .tracking import TrackingError, resolve_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.run", description=__doc__, epilog=build_sweep_parser().epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trial_arguments(parser)  # the sweep's options, minus the sweep-only ones
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from trainers.data import DatasetError

    from .lifetime import exit_on_sigterm
    from .preflight import preflight

    exit_on_sigterm()
    try:
        cfg = resolve_config(args)
        uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.uri)
        preflight(cfg, uri, sweep=False, progress=None if args.quiet else print)
    except (ConfigError, TrackingError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from trainers.data import domain_roots

    from .experiment import ensure_source_model, run_experiment
    from .lifetime import end_run_processes, mark_this_run
    from .raysession import start_ray
    from .resources import plan_resources
    from .tracking import SweepTracking, log_params

    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[activeda] {msg}", flush=True))
    run_mark = mark_this_run()  # before Ray starts: every process of this run inherits it
    start_ray(args.address, args.num_cpus, args.quiet)
    import ray

    try:
        plan_resources(cfg, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        run_dir = Path(cfg.output_dir) / cfg.sweep.name / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        domain_roots(cfg.to_dict()["data"], progress=say)  # generates the synthetic domains if needed
        tracking = SweepTracking(uri, cfg.sweep.name)
        source_checkpoint, source_metrics = ensure_source_model(cfg, progress=say)
        run = tracking.client.create_run(tracking.experiment_id, run_name=f"run-{run_dir.name}",
                                         tags={"activeda.kind": "run", "selector": cfg.selection.selector})
        run_id = run.info.run_id
        log_params(tracking.client, run_id, cfg.flat())

        def report(metrics, progress_state) -> None:
            tracking.log_metrics(run_id, metrics, step=int(metrics["round"]), context="run")
            if metrics["round"] == 0:  # later rounds are announced by the experiment loop itself
                say(f"round 0 (source only): target mIoU {metrics['target/miou']:.4f}")

        status = "FAILED"
        try:
            run_experiment(cfg, run_dir, source_checkpoint, source_metrics, report=report, progress=say,
                           trial_id=run_dir.name)
            status = "FINISHED"
        finally:
            tracking.end(run_id, status)
        say(f"done: {run_dir}; MLflow run {run_id} in {uri}")
        return 0
    except (ConfigError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; ending every process of the run", file=sys.stderr)
        return 130
    finally:
        ray.shutdown()
        end_run_processes(run_mark)


if __name__ == "__main__":
    sys.exit(main())
