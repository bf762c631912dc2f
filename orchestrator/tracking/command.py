"""``python -m orchestrator.tracking replay FILE``: send the MLflow operations a sweep could not send
while the tracking server was away, once it is back."""

from __future__ import annotations

import argparse
import logging
import sys

from orchestrator.command_line import EXIT_BAD_INPUT, EXIT_TRIALS_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda tracking",
        description="Send the MLflow operations a sweep could not send while the tracking server was away "
        "(runs/<sweep>/mlflow-unsent.jsonl) once it is back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="send an unsent-metrics file; removes it once everything is sent")
    replay.add_argument("file", help="the sweep's mlflow-unsent.jsonl")
    replay.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Ray and MLflow load only once the arguments are good: --help answers at once.
    from orchestrator.tracking.mlflow_runs import TrackingError, resolve_tracking_uri
    from orchestrator.tracking.trial_logger import replay_unsent

    uri = resolve_tracking_uri(args.tracking_uri, "")
    try:
        sent, left = replay_unsent(args.file, uri)
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if left:
        print(f"sent {sent} MLflow operations to {uri}; {left} still unsent, kept in {args.file}", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    print(f"sent {sent} MLflow operations to {uri}; removed {args.file}")
    return 0
