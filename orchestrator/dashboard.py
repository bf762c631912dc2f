"""``python -m orchestrator.dashboard``: serve the MLflow UI for the project's store and print the sweep's views.

Starts ``mlflow server`` on the same store the sweep writes to (``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory), bound to 127.0.0.1
only, waits until it answers, prints the URL of each sweep's runs table and of MLflow's compare-runs
view of its latest trials, and serves until Ctrl-C (or SIGTERM), when the server's whole process
group is stopped.

The runs-table URL opens a saved *budget view* (trial runs only, best mIoU first, columns for mIoU,
labeled fraction, clicks, labeled pixels, the swept parameters and the budget/rule tags). It is
saved the way the MLflow UI's own "share view" does it: an experiment tag
``mlflow.sharedViewState.activeda-budgets`` (plain JSON; ``--no-view`` skips it). That tag is the only
write the dashboard makes to the store.

Bad input (no store file, unknown sweep, bad or busy port) is refused with one line and exit code 2
before any server starts; a server that exits or does not answer in time gives exit code 1.
"""

from __future__ import annotations

import argparse
import signal
import sys

from orchestrator.command_line import HelpFormatter
from orchestrator.tracking.dashboard import (
    BUDGET_VIEW_KEY,
    EXIT_BAD_INPUT,
    EXIT_SERVER_FAILED,
    HOST,
    SHARED_VIEW_TAG,
    DashboardError,
    ServerError,
    _experiment,
    check_store,
    compare_runs_url,
    install_budget_view,
    start_dashboard,
    stop_dashboard,
    sweep_names,
    sweep_url,
)
from orchestrator.tracking.mlflow_runs import resolve_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda dashboard",
        description="Serve the MLflow UI for the project's store on 127.0.0.1 only, wait until it answers, and\n"
        "print the URLs of each sweep's comparison views: the runs table of its experiment (opened\n"
        "in a saved budget view: trials, mIoU, labeled fraction, clicks, swept parameters) and\n"
        "MLflow's compare-runs view of its latest trials. Ctrl-C stops the server.",
        epilog="example:\n  python -m orchestrator.dashboard --sweep smoke --port 5000",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db in the "
        "working directory, as the sweep)",
    )
    parser.add_argument(
        "--sweep",
        metavar="NAME",
        help="sweep (MLflow experiment, sweep.name) to show; default: every sweep in the store",
    )
    parser.add_argument("--port", type=int, metavar="P", help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120,
        metavar="S",
        help="seconds to wait for the server to answer (default: 120)",
    )
    parser.add_argument(
        "--no-view",
        action="store_true",
        help=f"do not save the budget view (experiment tag '{SHARED_VIEW_TAG}{BUDGET_VIEW_KEY}') "
        f"and print the plain runs-table URL",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri, "")
    try:
        if args.port is not None and not 0 < args.port < 65536:
            raise DashboardError(f"--port {args.port}: must be between 1 and 65535")
        check_store(uri)
        if args.sweep is not None:
            _experiment(uri, args.sweep)  # an unknown sweep fails now, not after the server's start-up
            sweeps = [args.sweep]
        else:
            sweeps = sweep_names(uri)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    views: dict[str, str | None] = {}
    for name in sweeps:
        views[name] = None
        if not args.no_view:
            try:
                views[name] = install_budget_view(uri, name)
            except DashboardError as err:  # a read-only store still gets the plain runs table
                print(f"warning: {err}; printing the plain runs-table URL", file=sys.stderr)

    def _terminate(signum, frame):  # SIGTERM stops the server as Ctrl-C does
        raise KeyboardInterrupt

    # Ctrl-C must stop the server even when the shell started us with SIGINT ignored (a background job).
    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _terminate))
    }
    try:
        return _serve(uri, args, sweeps, views)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(uri: str, args: argparse.Namespace, sweeps: list[str], views: dict[str, str | None]) -> int:
    try:
        print(f"[dashboard] starting mlflow server for {uri} on {HOST} ...", flush=True)
        process, base_url = start_dashboard(uri, args.port, timeout_s=args.timeout)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SERVER_FAILED if isinstance(err, ServerError) else EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C during start-up: start_dashboard has stopped the server
        print("\n[dashboard] interrupted", file=sys.stderr)
        return 130

    try:
        print(f"[dashboard] MLflow UI: {base_url}/  (server pid {process.pid}, log {process.log_path})")
        if not sweeps:
            print("[dashboard] the store has no sweep yet")
        for name in sweeps:
            print(f"[dashboard] sweep '{name}' runs table: {sweep_url(base_url, uri, name, views[name])}")
            compare = compare_runs_url(base_url, uri, name)
            if compare:
                print(f"[dashboard] sweep '{name}' compare trials: {compare}")
        print("[dashboard] serving until Ctrl-C", flush=True)
        code = process.wait()
        print(f"error: mlflow server stopped by itself with code {code} (log {process.log_path})", file=sys.stderr)
        return EXIT_SERVER_FAILED
    except KeyboardInterrupt:
        print("\n[dashboard] stopping mlflow server", flush=True)
        return 0
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        stop_dashboard(process)


if __name__ == "__main__":
    sys.exit(main())
