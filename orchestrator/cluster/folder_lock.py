"""One run at a time on a sweep folder (``<output_dir>/<sweep.name>``).

Two sweeps of the same name and output dir at once would interleave their trial folders, Tune state
and MLflow outbox. The folder's ``sweep.lock`` is held with ``flock`` for as long as a run uses the
folder; a second run is refused in one line that names the holder. The kernel releases the lock when
its holder dies, however it dies, so a lock left by a killed run never blocks a later one: the file
stays, the lock does not. The later run also ends what the killed run left running on this machine
(its Ray workers carry its run id, see ``orchestrator.cluster.processes``) before it writes anything.

``flock`` locks are per machine (and unreliable on NFS): two machines that share ``output_dir`` or
``storage.uri`` must not run the same sweep at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from orchestrator.cluster.processes import RUN_MARK, end_processes, processes_with

LOCK_FILE = "sweep.lock"


class SweepFolderBusy(RuntimeError):
    """Another run holds the sweep folder; the message names it."""


def _holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
        return f"process {record['pid']} on {record['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _busy(sweep_dir: Path, path: Path) -> SweepFolderBusy:
    return SweepFolderBusy(
        f"sweep folder '{sweep_dir}' is in use by {_holder(path)}; wait for that run to end, "
        f"or give this one another sweep.name or --output-dir"
    )


def check_sweep_folder_free(sweep_dir: Path) -> None:
    """Refuse at once (writing nothing) when another run holds ``sweep_dir``."""
    path = Path(sweep_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _busy(sweep_dir, path) from None
        raise
    finally:
        os.close(fd)  # closing releases a lock taken here


class SweepFolderLock:
    """The held lock of a sweep folder; ``release()`` (or process exit) gives it up."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def acquire(cls, sweep_dir: Path, progress=None) -> SweepFolderLock:
        """Create ``sweep_dir`` if needed and hold it; ``SweepFolderBusy`` if another run does."""
        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path = sweep_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _busy(sweep_dir, path) from None
            raise
        lock = cls(fd, path)
        lock._end_leftovers_of_previous_holder(progress)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "run_id": os.environ.get(RUN_MARK, ""),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        return lock

    def _end_leftovers_of_previous_holder(self, progress) -> None:
        """A previous holder that died (else the lock would not be free) may have left Ray workers that
        still write into the folder: end them before this run writes anything."""
        try:
            previous = json.loads(os.pread(self.fd, 65536, 0).decode("utf-8") or "{}")
        except ValueError:
            return
        if previous.get("host") != socket.gethostname() or not previous.get("run_id"):
            return
        left = processes_with(RUN_MARK, previous["run_id"])
        if left:
            end_processes(left)
            if progress is not None:
                progress(f"ended {len(left)} process(es) left by the interrupted run (pid {previous.get('pid')})")

    def release(self) -> None:
        """Give the folder up. The file stays: removing it would let two runs lock two different files."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
