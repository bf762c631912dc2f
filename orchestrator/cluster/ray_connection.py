"""Starting or joining Ray the way every activeda entry point needs it.

Trials reserve a custom resource, ``activeda_trial``, instead of a sliver of CPU: a trial's own
process mostly waits, and any CPU it reserved would keep two 1-CPU Train workers (or actors) of two
trials from running side by side on a 2-CPU machine. A local Ray started here declares plenty of
it; on a cluster the head node declares it (see cluster.yaml), and where it is missing trials fall
back to reserving 0.01 CPU.

The environment switches below quiet Ray Train V2's per-worker chatter, shorten its end-of-run
health-check wait, let a worker group wait for resources while other trials hold them (the
default 60 s start-up timeout would otherwise retry with a traceback every minute), and leave
Ctrl-C to the command rather than to Tune.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from orchestrator.cluster.processes import end_processes, processes_with

TRIAL_RESOURCE = "activeda_trial"
LOCAL_TRIAL_SLOTS = 1000

RAY_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
    # Ctrl-C ends a sweep at once, wherever it is, as the command promises: every process ended and
    # one line saying to resume (--resume continues each trial after its last finished round). Tune's
    # own handler would instead stop the trials and let the driver summarise a half-run sweep as
    # failed trials, exit 1.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


def apply_ray_environment() -> None:
    """Set the switches in this process (before ``ray.init``) so local workers inherit them."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    # A local Ray started here keeps token authentication on; the notice about it is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


# ACTIVEDA_RAY_DASHBOARD=0 turns the local Ray's dashboard off by default (the tests do: it costs
# seconds per Ray start); --no-dashboard does it for one command.
DASHBOARD_ENV = "ACTIVEDA_RAY_DASHBOARD"
DASHBOARD_HOST = "127.0.0.1"


def dashboard_wanted(dashboard: bool | None) -> bool:
    return os.environ.get(DASHBOARD_ENV, "1") != "0" if dashboard is None else dashboard


class RayStartError(RuntimeError):
    """The local Ray did not start; the message is one line for the user."""


# Ray 2.60 gives a starting local node fixed waits (not configurable from ray.init): 30 s for the
# raylet to register with the GCS, which ends in a plain ``Exception`` ("The current node timed out
# during startup ... or the GCS has become overloaded", ray/_private/node.py), and 30 s for the GCS
# to write its port file, which ends in a ``RuntimeError`` ("Timed out waiting for file .../
# gcs_server_port_...", ray._raylet.wait_for_persisted_port). Both were seen on a loaded 2-core
# machine, and a second try then started.
START_TIMEOUTS = (
    (Exception, "timed out during startup"),
    (RuntimeError, "Timed out waiting for file"),
)
START_ATTEMPTS = 2
# Every process one start attempt spawns inherits this mark, so a failed attempt's half-started
# daemons (GCS, raylet, agents) can be ended before the next one.
START_MARK = "ACTIVEDA_RAY_START"
END_SCANS, END_SCAN_PAUSE_S = 5, 0.2


def is_start_timeout(err: BaseException) -> bool:
    """Whether ``err`` is one of Ray's start-up waits running out (exact type and message)."""
    return any(type(err) is kind and text in str(err) for kind, text in START_TIMEOUTS)


def start_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = False, dashboard: bool | None = None
) -> None:
    """Join ``address`` or start a local Ray sized to this machine (or ``num_cpus``); a no-op when
    this process is already connected (the speed benchmark measures several phases in one process).

    A local Ray serves its dashboard on 127.0.0.1 only (port 8265, or the next free one) when
    ``dashboard`` (default: on unless ``$ACTIVEDA_RAY_DASHBOARD`` is 0) and Ray's dashboard packages
    (``ray[default]``) are installed; the URL is printed. A cluster's dashboard is the cluster's own.

    A local start that runs out of one of Ray's fixed start-up waits (a loaded machine) is tried once
    more, after ending what the first try started; a second time-out raises ``RayStartError``.
    """
    apply_ray_environment()
    import ray

    if ray.is_initialized():
        return
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[activeda] {msg}", flush=True))

    runtime_env = {"env_vars": {k: os.environ[k] for k in RAY_ENV}}
    common = dict(log_to_driver=not quiet, runtime_env=runtime_env, logging_config=ray.LoggingConfig(log_level="ERROR"))
    # The ERROR level is meant for Ray's workers, but ray.init also sets it on this process's root
    # logger, which would silence the driver's own warnings (an MLflow outage, dropped metrics).
    driver_level = logging.getLogger().level
    if address:
        ray.init(address=address, **common)
    else:
        with_dashboard = dashboard_wanted(dashboard)
        missing = ray._private.utils.get_dashboard_dependency_error() if with_dashboard else None
        if missing:
            say(f"Ray dashboard off: its packages are missing ({missing}); pip install 'ray[default]'")
        for attempt in range(1, START_ATTEMPTS + 1):
            mark = uuid.uuid4().hex
            os.environ[START_MARK] = mark
            try:
                context = _start_local(ray, num_cpus, with_dashboard and not missing, runtime_env, common)
                break
            except Exception as err:
                if not is_start_timeout(err):
                    raise
                _end_attempt(ray, mark)
                first_line = str(err).strip().splitlines()[0]
                if attempt == START_ATTEMPTS:
                    raise RayStartError(
                        f"the local Ray did not start: Ray's start-up wait ran out {START_ATTEMPTS} times "
                        f"({first_line}); the machine may be overloaded: try again when it is less busy"
                    ) from None
                say(f"the local Ray did not start in time ({first_line}); trying once more")
            finally:
                os.environ.pop(START_MARK, None)
        if with_dashboard and not missing and context.dashboard_url:
            say(
                f"Ray dashboard: http://{context.dashboard_url} (bound to {DASHBOARD_HOST}; from another machine: "
                f"ssh -L {context.dashboard_url.rpartition(':')[2]}:{context.dashboard_url} this-host)"
            )
    logging.getLogger().setLevel(driver_level)


def _start_local(ray, num_cpus: int | None, with_dashboard: bool, runtime_env: dict, common: dict):
    """One ``ray.init`` of a local Ray; returns its context."""
    # Ray Train's placement-group cleaner (in a worker) finds "its" cluster by address, and with
    # two local Rays on one machine (two sweeps at once) it cannot tell which one and dies with a
    # traceback. So the local GCS gets a port chosen here (afresh for each try), and the workers are
    # told the address.
    port = free_port()
    runtime_env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        return ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=with_dashboard,
            dashboard_host=DASHBOARD_HOST,
            resources={TRIAL_RESOURCE: LOCAL_TRIAL_SLOTS},
            **common,
        )
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def _end_attempt(ray, mark: str) -> None:
    """End every process the failed start attempt ``mark`` spawned (``ray.shutdown`` does not know of
    them: the node never finished starting)."""
    try:
        ray.shutdown()
    except Exception:  # nothing was connected; what matters are the processes below
        pass
    # A process caught between fork and exec shows an empty environment in /proc for a moment (the
    # kernel sets the new environment's bounds last), so one scan can miss a daemon the attempt was
    # just starting: scan again after a pause, until a scan finds nothing new.
    ended: set[int] = set()
    for scan in range(END_SCANS):
        found = [pid for pid in processes_with(START_MARK, mark) if pid not in ended]
        if not found and scan > 0:
            break
        end_processes(found)
        ended.update(found)
        time.sleep(END_SCAN_PAUSE_S)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
