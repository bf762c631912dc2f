"""Starting or joining Ray the way every activeda entry point needs it.

Trials reserve a custom resource, ``activeda_trial``, instead of a sliver of CPU: a trial's own
process mostly waits, and any CPU it reserved would keep two 1-CPU Train workers (or actors) of two
trials from running side by side on a 2-CPU machine. A local Ray started here declares plenty of
it; on a cluster the head node declares it (see cluster.yaml), and where it is missing trials fall
back to reserving 0.01 CPU.

The environment switches below quiet Ray Train V2's per-worker chatter, shorten its end-of-run
health-check wait, and let a worker group wait for resources while other trials hold them (the
default 60 s start-up timeout would otherwise retry with a traceback every minute).
"""

from __future__ import annotations

import logging
import os
import socket

TRIAL_RESOURCE = "activeda_trial"
LOCAL_TRIAL_SLOTS = 1000

RAY_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
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


def start_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = False, dashboard: bool | None = None
) -> None:
    """Join ``address`` or start a local Ray sized to this machine (or ``num_cpus``); a no-op when
    this process is already connected (the speed benchmark measures several phases in one process).

    A local Ray serves its dashboard on 127.0.0.1 only (port 8265, or the next free one) when
    ``dashboard`` (default: on unless ``$ACTIVEDA_RAY_DASHBOARD`` is 0) and Ray's dashboard packages
    (``ray[default]``) are installed; the URL is printed. A cluster's dashboard is the cluster's own.
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
        # Ray Train's placement-group cleaner (in a worker) finds "its" cluster by address, and with
        # two local Rays on one machine (two sweeps at once) it cannot tell which one and dies with a
        # traceback. So the local GCS gets a port chosen here, and the workers are told the address.
        port = free_port()
        runtime_env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        with_dashboard = dashboard_wanted(dashboard)
        missing = ray._private.utils.get_dashboard_dependency_error() if with_dashboard else None
        if missing:
            say(f"Ray dashboard off: its packages are missing ({missing}); pip install 'ray[default]'")
        try:
            context = ray.init(
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=with_dashboard and not missing,
                dashboard_host=DASHBOARD_HOST,
                resources={TRIAL_RESOURCE: LOCAL_TRIAL_SLOTS},
                **common,
            )
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        if with_dashboard and not missing and context.dashboard_url:
            say(
                f"Ray dashboard: http://{context.dashboard_url} (bound to {DASHBOARD_HOST}; from another machine: "
                f"ssh -L {context.dashboard_url.rpartition(':')[2]}:{context.dashboard_url} this-host)"
            )
    logging.getLogger().setLevel(driver_level)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
