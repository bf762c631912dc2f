"""Every process a run starts ends with it: on success, on failure, on Ctrl-C and on SIGTERM.

``ray.shutdown()`` stops the local Ray a run started, but not always every worker of it: after an
``orchestrator.run --smoke`` that exited 0, a ``ray::TrainController`` actor process was seen living
on, re-parented to init, holding 1.1 GB and ignoring SIGTERM. A workstation that runs many sweeps
collects them.

So a run marks its environment with a run id (``ACTIVEDA_RUN_ID``) before it starts Ray. Every
process it starts inherits the mark: Ray's daemons, and through the raylet every worker and actor.
When the run ends, whatever still carries the mark is ended (SIGTERM, a grace period, then SIGKILL).
A run that joins a cluster (``--address``) marks nothing there: the cluster's workers were started by
the cluster, not by the run, and Ray ends them with the job.

The mark is read from ``/proc/<pid>/environ`` (Linux, processes of the same user); elsewhere this is
a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARK = "ACTIVEDA_RUN_ID"
PROC = Path("/proc")


def mark_this_run() -> str:
    """Give this process (and so everything it starts from now on) a fresh run id; returns it."""
    mark = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[RUN_MARK] = mark
    return mark


def processes_with(name: str, value: str) -> list[int]:
    """Pids of the processes (other than this one) whose environment has ``name=value``."""
    if not PROC.is_dir():
        return []
    needle = f"{name}={value}".encode()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_processes(pids: list[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to exit, SIGKILL the rest; returns those that had
    to be killed."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    return alive


def end_run_processes(mark: str, grace_s: float = 3.0) -> int:
    """End every process left of the run ``mark``; returns how many there were (0 when all had ended)."""
    # Ray's own shutdown is still taking its workers down in the first moments: let it finish first.
    deadline = time.monotonic() + 2.0
    left = processes_with(RUN_MARK, mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with(RUN_MARK, mark)
    if left:
        killed = end_processes(left, grace_s)
        log.info(
            "ended %d process(es) left by this run%s", len(left), f" ({len(killed)} ignored SIGTERM)" if killed else ""
        )
    return len(left)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` so a run's ``finally`` blocks (Ray shutdown, ending its
    processes, releasing its sweep folder) run as they do for Ctrl-C."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _alive(pid: int) -> bool:
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait() is missing


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
