"""``python -m benchmarks.chaos``: a sweep under repeated faults, checked against the same sweep without.

The same small sweep (bundled synthetic domains at smoke size; one trial per ``points_per_image`` of a
grid) runs twice through ``python -m orchestrator.sweep``:

1. without faults, against a sqlite MLflow store: the reference;
2. against a real ``mlflow server`` while a Ray Train worker, a ranking actor, the MLflow server or the
   sweep driver is killed with SIGKILL. The kills are planned from ``--seed`` (which kinds, in which
   round) and driven by the sweep's progress, read from its folder and its processes: a ranking actor
   is killed while it ranks a round, a Train worker while it trains a round (the round's labels are
   bought), the MLflow server while a round trains (its report falls into the outage), the driver once
   it has made progress in that round. So every planned kill lands, on a fast machine or a slow one.
   A killed driver is started again with ``--resume`` (once the MLflow server is up); a killed server
   is started again on the same store once the sweep has made progress without it (or the driver is
   down).

Then it counts what the faults cost: kills that did not land, labels lost (a round of a trial's label
store missing), labels that differ from the reference (per round and image, pixel for pixel:
coordinates and classes), budget spent twice (a pixel bought in two rounds, a trial's labels bought
under a second trial id, a round bought again), MLflow metrics missing or duplicated (per trial run,
metric and round, against the reference's), trial runs duplicated, processes of the sweep left
running at the end, and whether each trial's metrics of every round (target mIoU and per-class IoU,
budget, training losses; not timings) are bit-identical to the reference's. Goal: every planned kill
landed, every count 0, every round equal.

Only processes that carry this benchmark's own environment mark are ever killed (other work on the
machine is safe). ``--small`` (2 trials x 2 rounds, 4 kills: one of each kind) shows that it works in a
few minutes; the default is 6 trials x 3 rounds, 20 kills. It prints its report and writes ``result.json``
(every kill and event) to its work folder; ``--out FILE`` also writes the report as a Markdown page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARK = "ACTIVEDA_CHAOS_ID"
VICTIMS = {"train_worker": 0.35, "ranking_actor": 0.2, "mlflow_server": 0.2, "driver": 0.25}
PROCESS_NAMES = {"train_worker": "RayTrainWorker", "ranking_actor": "RankingActor"}
COMPARED = ("target/", "budget/", "train/loss/")  # not time/: wall clock differs between any two runs
SMALL = (2, 2, 4)  # --small: trials, rounds, kills (one of each kind)


class ChaosError(RuntimeError):
    """The chaos run could not be carried out (not a finding about the product)."""


@dataclass
class Plan:
    trials: int
    rounds: int
    kills: int
    seed: int
    workdir: Path
    overrides: list[str] = field(default_factory=list)
    timeout_s: float = 1800.0
    # The kinds of process the kills are drawn from (default: all of ``VICTIMS``).
    kinds: tuple[str, ...] = tuple(VICTIMS)

    @property
    def grid(self) -> list[int]:
        return list(range(2, 2 + self.trials))  # points per image: one trial each, the key of a trial


def sweep_args(plan: Plan, name: str) -> list[str]:
    """The sweep both runs make, as sweep ``name`` (the faulty one adds its tracking URI and, later,
    --resume). Both share one output folder, so the source model is trained once (it is cached)."""
    grid = ", ".join(map(str, plan.grid))
    args = [
        "--smoke",
        "--no-dashboard",  # it would only take CPU from the sweep
        "--output-dir",
        str(plan.workdir / "runs"),
        "--name",
        name,
        "--max-concurrent",
        "2",
        "--set",
        f"selection.rounds={plan.rounds}",
        "--set",
        f"sweep.search_space={{selection.points_per_image: {{grid: [{grid}]}}}}",
        "--set",
        f"data.cache_dir={plan.workdir / 'data'}",
        # Checkpoints within a round, so a killed Train worker resumes mid-round (no effect on results).
        "--set",
        "adapt.checkpoint_every=2",
    ]
    if plan.kills:  # enough restarts for every kill one round might take (they act on failures only)
        args += [
            "--set",
            f"train.max_failures={plan.kills + 5}",
            "--set",
            f"ranking.max_actor_restarts={plan.kills + 5}",
        ]
    for override in plan.overrides:
        args += ["--set", override]
    return args


def env_with_mark(mark: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), MARK: mark}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes --------------------------------------------------------------------------------


def marked(mark: str) -> list[int]:
    from orchestrator.cluster.processes import processes_with

    return processes_with(MARK, mark)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def find_victims(kind: str, mark: str) -> list[int]:
    name = PROCESS_NAMES[kind]
    return [pid for pid in marked(mark) if name in cmdline(pid)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 over a sqlite store, in its own process group."""

    def __init__(self, store: Path, port: int, log: Path, mark: str):
        self.store, self.port, self.log, self.mark = store, port, log, mark
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        env = {**env_with_mark(self.mark), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.store}",
                "--artifacts-destination",
                str(self.store.parent / "mlartifacts"),
            ],
            cwd=self.store.parent,
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise ChaosError(f"the MLflow server did not come up; see {self.log}")

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None


# --- the two runs -----------------------------------------------------------------------------


def run_reference(plan: Plan) -> float:
    """The sweep without faults; returns its wall time."""
    run_dir = plan.workdir / "reference"
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(run_dir / "sweep.log", "wb") as log:
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "orchestrator.sweep",
                *sweep_args(plan, "reference"),
                "--tracking-uri",
                f"sqlite:///{run_dir / 'mlflow.db'}",
            ],
            cwd=run_dir,
            env=env_with_mark(f"ref-{uuid.uuid4().hex[:8]}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=plan.timeout_s,
        )
    if code != 0:
        raise ChaosError(f"the fault-free sweep failed (exit {code}); see {run_dir / 'sweep.log'}")
    return time.monotonic() - started


# Within a round, the kinds whose processes live only part of it come first: a ranking actor lives
# while the round ranks, a Train worker while it trains; the MLflow server and the driver live on.
KIND_ORDER = ("ranking_actor", "train_worker", "mlflow_server", "driver")


def reference_run(plan: Plan) -> SweepRun:
    return SweepRun(plan.workdir / "runs" / "reference", plan.workdir / "reference" / "mlflow.db")


def faulty_run(plan: Plan) -> SweepRun:
    return SweepRun(plan.workdir / "runs" / "faulty", plan.workdir / "faulty" / "mlflow.db")


@dataclass
class PlannedKill:
    """One SIGKILL of ``kind``, due once some trial works on round ``round`` (or a later one)."""

    kind: str
    round: int
    landed: str = ""  # what was killed, once it was

    def __str__(self) -> str:
        return f"{self.kind.replace('_', ' ')} in round {self.round}"


def plan_kills(plan: Plan) -> list[PlannedKill]:
    """``plan.kills`` kills of ``plan.kinds`` drawn from ``plan.seed``: each kind once (when there are
    enough kills), the rest by weight; spread evenly over the rounds, and in ``KIND_ORDER`` within a round."""
    rng = random.Random(plan.seed)
    victims = [kind for kind in VICTIMS if kind in plan.kinds]
    if not victims or set(plan.kinds) - set(VICTIMS):
        raise ChaosError(f"kinds to kill: {', '.join(plan.kinds)}; known: {', '.join(VICTIMS)}")
    kinds = rng.sample(victims, min(plan.kills, len(victims)))
    kinds += rng.choices(victims, weights=[VICTIMS[k] for k in victims], k=plan.kills - len(kinds))
    rng.shuffle(kinds)
    kills = [PlannedKill(kind, 1 + i * plan.rounds // max(plan.kills, 1)) for i, kind in enumerate(kinds)]
    return sorted(kills, key=lambda k: (k.round, KIND_ORDER.index(k.kind)))


@dataclass
class SweepProgress:
    """Where the trials of a sweep stand, read from its folder: per trial, the rounds whose labels are
    bought (label store) and the last round it reported (``progress.json``)."""

    bought: dict[str, set[int]] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepProgress:
        state = cls()
        for trial in sorted((sweep_dir / "trials").glob("*")):
            state.bought[trial.name] = {int(p.stem.split("-")[1]) for p in trial.glob("labels/round-*.parquet")}
            try:
                state.finished[trial.name] = json.loads((trial / "progress.json").read_text())["progress"]["round"]
            except (OSError, ValueError, KeyError):  # not reported yet (the file is replaced atomically)
                pass
        return state

    @property
    def steps(self) -> int:
        """Rounds bought plus rounds reported, over all trials: grows with every step of the sweep."""
        return sum(map(len, self.bought.values())) + sum(self.finished.values())

    def working(self, rounds: int, from_round: int, phase: str | None = None) -> bool:
        """Whether a trial works on a round >= ``from_round`` (and <= ``rounds``), in ``phase``: "ranking"
        (its labels not bought yet), "training" (bought), or either."""
        for trial, last in self.finished.items():
            current = last + 1
            if not from_round <= current <= rounds:
                continue
            bought = current in self.bought.get(trial, ())
            if phase is None or phase == ("training" if bought else "ranking"):
                return True
        return False


@dataclass
class FaultLog:
    planned: list[PlannedKill] = field(default_factory=list)
    driver_starts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    refused_starts: int = 0  # a driver started just before the server was killed is refused (exit 2)
    left_running: int = 0
    # Operations the last driver left in its durable outbox (MLflow was down when the sweep ended), sent
    # afterwards by the replay command it printed, as a user would: (left, still unsent after the replay).
    outbox_left: int = 0
    outbox_unsent_after_replay: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def kills(self) -> dict[str, int]:
        """Kills that landed, per kind."""
        landed = dict.fromkeys(VICTIMS, 0)
        for k in self.planned:
            landed[k.kind] += bool(k.landed)
        return landed

    @property
    def total(self) -> int:
        return sum(self.kills.values())

    @property
    def not_landed(self) -> list[str]:
        return [str(k) for k in self.planned if not k.landed]


def run_with_faults(plan: Plan) -> tuple[FaultLog, float, Path]:
    """The sweep while processes are killed; returns the fault log, its wall time and its run folder
    (the MLflow store is ``mlflow.db`` there)."""
    run_dir = plan.workdir / "faulty"
    run_dir.mkdir(parents=True, exist_ok=True)
    mark = f"chaos-{uuid.uuid4().hex[:12]}"
    rng = random.Random(plan.seed)  # which process of a kind, when several run
    server = MlflowServer(run_dir / "mlflow.db", free_port(), run_dir / "mlflow-server.log", mark)
    server.start()
    sweep_dir = plan.workdir / "runs" / "faulty"
    base = [sys.executable, "-m", "orchestrator.sweep", *sweep_args(plan, "faulty"), "--tracking-uri", server.uri]
    faults = FaultLog(planned=plan_kills(plan))
    say("planned kills: " + ", ".join(map(str, faults.planned)))
    driver: subprocess.Popen | None = None
    driver_started_at_step = 0  # the sweep's progress when the running driver started
    server_down_at_step: int | None = None  # ... when the MLflow server was killed
    last_kill_step = 0  # ... when the last kill landed
    started = time.monotonic()

    def start_driver(step: int) -> subprocess.Popen:
        nonlocal driver_started_at_step
        resume = ["--resume"] if (sweep_dir / "sweep.json").is_file() else []  # started: resume it
        faults.driver_starts += 1
        driver_started_at_step = step
        log = open(run_dir / f"driver-{faults.driver_starts:02d}.log", "wb")
        note(f"driver {faults.driver_starts} started" + (" with --resume" if resume else ""))
        return subprocess.Popen(
            base + resume, cwd=run_dir, env=env_with_mark(mark), stdout=log, stderr=subprocess.STDOUT
        )

    def note(event: str) -> None:
        faults.events.append(f"{time.monotonic() - started:7.1f} s  {event}")
        say(event)

    try:
        driver = start_driver(0)
        while True:
            if time.monotonic() - started > plan.timeout_s:
                raise ChaosError(
                    f"the sweep under faults did not end within {plan.timeout_s:.0f} s "
                    f"(kills not landed: {', '.join(faults.not_landed) or 'none'})"
                )
            progress = SweepProgress.read(sweep_dir)
            code = driver.poll() if driver is not None else None
            if driver is not None and code is not None:
                log_text = (run_dir / f"driver-{faults.driver_starts:02d}.log").read_text(errors="replace")
                if code == 0:
                    note(f"driver {faults.driver_starts} finished the sweep")
                    replay_what_is_left(sweep_dir, server, faults, note)
                    break
                if code == -signal.SIGKILL:
                    pass  # one of ours; noted when killed
                elif code == 2 and "cannot be reached" in log_text:
                    faults.refused_starts += 1  # its pre-flight check found the server down: as it should
                    note(f"driver {faults.driver_starts} refused to start: the MLflow server is down")
                else:
                    faults.unexpected_exits.append(
                        f"driver {faults.driver_starts} exited {code}: {log_text.strip().splitlines()[-1:] or ''}"
                    )
                    note(f"driver {faults.driver_starts} exited by itself with {code}")
                    if len(faults.unexpected_exits) > 5:
                        raise ChaosError("the driver keeps failing: " + "; ".join(faults.unexpected_exits))
                driver = None
            # The server comes back once the sweep has gone on without it (a round bought or reported in
            # the outage), or when there is no driver: a new one's pre-flight check needs it.
            if server_down_at_step is not None and (driver is None or progress.steps > server_down_at_step):
                server.start()
                server_down_at_step = None
                note("MLflow server started again")
            if driver is None:
                if server.up:
                    driver = start_driver(progress.steps)
                time.sleep(0.5)
                continue
            if (sweep_dir / "sweep.json").is_file():
                for planned in faults.planned:
                    if planned.landed or not due(
                        planned, plan, progress, server, driver_started_at_step, last_kill_step
                    ):
                        continue
                    victim = kill(planned.kind, driver, server, mark, rng)
                    if victim:
                        planned.landed = victim
                        last_kill_step = progress.steps
                        note(f"killed {victim} ({planned})")
                        if planned.kind == "mlflow_server":
                            server_down_at_step = progress.steps
                        elif planned.kind == "driver":
                            driver.wait()
                        break  # one kill at a time: the next one sees what this one did
            time.sleep(0.1)  # a ranking actor or Train worker lives for seconds at least
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        server.kill()
    wall = time.monotonic() - started
    if faults.not_landed:
        note("kills that did not land before the sweep ended: " + ", ".join(faults.not_landed))
    time.sleep(3)  # what a finished driver ended is gone by now; anything still marked outlived the run
    left = [f"{pid} {cmdline(pid)[:80]}" for pid in marked(mark)]
    if left:
        faults.events.append(f"left running after the sweep: {left}")
    faults.left_running = len(left)
    return faults, wall, run_dir


def due(
    planned: PlannedKill,
    plan: Plan,
    progress: SweepProgress,
    server: MlflowServer,
    driver_step: int,
    last_kill_step: int,
) -> bool:
    """Whether the sweep has reached the point where ``planned`` is to land (its process must still be
    found running: ``kill`` says).

    A ranking actor or a Train worker runs only while its round ranks or trains, so it is killed the
    moment one runs (a kill of one starts a new one: the next kill may take that). The MLflow server
    and the driver run throughout, so they wait until the sweep has bought or reported a round since
    the last kill (and, the driver, since it started): each kill then meets a sweep that got further
    than the one before it, and the kill of a process that runs throughout never comes too late for
    the kills of the fleeting ones after it.
    """
    if planned.kind == "ranking_actor":
        return progress.working(plan.rounds, planned.round, "ranking")
    if planned.kind == "train_worker":
        return progress.working(plan.rounds, planned.round, "training")
    if progress.steps <= last_kill_step:
        return False
    if planned.kind == "mlflow_server":  # mid-training: the round's report falls into the outage
        return server.up and progress.working(plan.rounds, planned.round, "training")
    return progress.steps > driver_step and progress.working(plan.rounds, planned.round)


def replay_what_is_left(sweep_dir: Path, server: MlflowServer, faults: FaultLog, note) -> None:
    """A sweep that ended while MLflow was down leaves its operations in its durable outbox and prints
    the replay command: bring the server back (as its operator would) and run that command."""
    from orchestrator.tracking.mlflow_runs import UNSENT_FILE, read_outbox

    outbox = sweep_dir / UNSENT_FILE
    left = read_outbox(outbox) if outbox.is_file() else []
    if not left:
        return
    faults.outbox_left = len(left)
    if not server.up:
        server.start()
        note("MLflow server started again")
    code = subprocess.call(
        [sys.executable, "-m", "orchestrator.tracking", "replay", str(outbox), "--tracking-uri", server.uri],
        cwd=sweep_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    faults.outbox_unsent_after_replay = len(read_outbox(outbox)) if outbox.is_file() else 0
    note(
        f"replayed the {faults.outbox_left} operation(s) the sweep left in {UNSENT_FILE} (MLflow was down when "
        f"it ended): exit {code}, {faults.outbox_unsent_after_replay} still unsent"
    )
    if code != 0:
        faults.unexpected_exits.append(f"the replay of {outbox} exited {code}")


def kill(kind: str, driver: subprocess.Popen, server: MlflowServer, mark: str, rng: random.Random) -> str:
    """SIGKILL one process of ``kind``; returns what was killed, or "" when none is running right now."""
    if kind == "driver":
        if driver.poll() is not None:
            return ""
        driver.send_signal(signal.SIGKILL)
        return f"the sweep driver (pid {driver.pid})"
    if kind == "mlflow_server":
        if not server.up:
            return ""
        pid = server.process.pid
        server.kill()
        return f"the MLflow server (pid {pid})"
    victims = find_victims(kind, mark)
    if not victims:
        return ""
    pid = rng.choice(sorted(victims))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return ""
    return f"a {kind.replace('_', ' ')} (pid {pid})"


# --- what the faults cost ---------------------------------------------------------------------


def trial_metrics(store: Path, name: str) -> tuple[dict[int, dict[str, list[tuple[int, float]]]], dict]:
    """Per trial (its points per image): metric -> [(round, value), ...] from MLflow; and run counts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ChaosError(f"no MLflow experiment '{name}' in {store}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("activeda.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("activeda.kind") == "trial"]
    counts = {"parents": len(parents), "trial_runs": {}}
    out: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for run in trials:
        key = int(run.data.params.get("selection.points_per_image", -1))
        counts["trial_runs"][key] = counts["trial_runs"].get(key, 0) + 1
        history = out.setdefault(key, {})
        for name in run.data.metrics:
            if name.startswith(COMPARED):
                history.setdefault(name, []).extend(
                    (m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)
                )
    counts["unfinished"] = sum(1 for r in trials if r.info.status != "FINISHED")
    return out, counts


def label_stores(sweep_dir: Path) -> dict[int, list[Path]]:
    """Per trial key: the label-store folders of trials with that key (more than one: bought twice)."""
    stores: dict[int, list[Path]] = {}
    for config in sorted((sweep_dir / "trials").glob("*/config.json")):
        key = json.loads(config.read_text())["selection"]["points_per_image"]
        stores.setdefault(key, []).append(config.parent / "labels")
    return stores


def label_rounds(labels_dir: Path) -> dict[int, dict[int, np.ndarray]]:
    """A label store as round -> image id -> its bought pixels, one (y, x, class) row each, sorted."""
    from orchestrator.labels.store import LabelStore

    store = LabelStore(labels_dir)
    rounds = {}
    for round_index in store.rounds():
        images = {}
        for image_id, (ys, xs, classes) in store.sparse_labels(only_round=round_index).items():
            rows = np.stack([ys, xs, classes]).astype(np.int64).T
            images[image_id] = rows[np.lexsort(rows.T[::-1])]
        rounds[round_index] = images
    return rounds


def label_differences(reference: Path, labels: Path) -> list[str]:
    """How the label store ``labels`` differs from ``reference``, round by round and image by image, pixel
    for pixel (coordinates and classes); empty when they hold the same labels."""
    want, got = label_rounds(reference), label_rounds(labels)
    out = [f"round {r}: missing" for r in sorted(set(want) - set(got))]
    out += [f"round {r}: not in the reference" for r in sorted(set(got) - set(want))]
    for r in sorted(set(want) & set(got)):
        for image_id in sorted(set(want[r]) | set(got[r])):
            a, b = want[r].get(image_id), got[r].get(image_id)
            if a is None or b is None:
                out.append(f"round {r} image {image_id}: " + ("missing" if b is None else "not in the reference"))
            elif not np.array_equal(a, b):
                differ = len(set(map(tuple, a.tolist())) ^ set(map(tuple, b.tolist())))
                out.append(
                    f"round {r} image {image_id}: {len(b)} pixels, the reference {len(a)}; "
                    f"{differ} (y, x, class) in one and not the other"
                )
    return out


@dataclass
class SweepRun:
    """Where a finished sweep's results are: its folder (trials and their label stores) and the sqlite
    MLflow store holding its experiment."""

    sweep_dir: Path
    store: Path

    @property
    def name(self) -> str:
        return self.sweep_dir.name


def compare(plan: Plan, faults: FaultLog, reference: SweepRun, faulty: SweepRun) -> dict:
    """What the faults cost: ``faulty`` against the fault-free ``reference`` of the same sweep."""
    ref_metrics_all, _ = trial_metrics(reference.store, reference.name)
    got_metrics_all, counts = trial_metrics(faulty.store, faulty.name)
    ref_stores, stores = label_stores(reference.sweep_dir), label_stores(faulty.sweep_dir)
    result = {
        "kills_not_landed": faults.not_landed,
        "labels_lost": 0,
        "labels_differ": 0,
        "budget_spent_twice": 0,
        "metrics_missing": 0,
        "metrics_duplicated": 0,
        "trial_runs_duplicated": 0,
        "parent_runs": counts["parents"],
        "runs_not_finished": counts["unfinished"],
        "left_running": faults.left_running,
        "trials": {},
    }
    for key in plan.grid:
        row = {"differences": []}
        if key not in ref_stores:
            raise ChaosError(f"the fault-free run has no trial with points_per_image={key}")
        folders = stores.get(key, [])
        result["budget_spent_twice"] += max(0, len(folders) - 1)  # the trial's labels bought by a second trial
        if not folders:
            result["labels_lost"] += plan.rounds
            row["differences"].append("no trial")
        # Labels: every round, image by image, pixel for pixel (coordinates and classes).
        for folder in folders:
            differences = label_differences(ref_stores[key][0], folder)
            row["differences"] += [f"labels: {d}" for d in differences]
            result["labels_lost"] += sum(d.endswith(": missing") and " image " not in d for d in differences)
            result["labels_differ"] += sum(" image " in d for d in differences)
            result["budget_spent_twice"] += sum(d.endswith("not in the reference") for d in differences)
            # A pixel bought in two rounds, or twice in one.
            pixels = [
                (i, y, x)
                for images in label_rounds(folder).values()
                for i, rows in images.items()
                for y, x, _ in rows.tolist()
            ]
            result["budget_spent_twice"] += len(pixels) - len(set(pixels))
        # MLflow: every metric of every round once, with the reference's value.
        result["trial_runs_duplicated"] += max(0, counts["trial_runs"].get(key, 0) - 1)
        ref_metrics, got_metrics = ref_metrics_all.get(key, {}), got_metrics_all.get(key, {})
        unequal_rounds = set()
        for name, ref_history in ref_metrics.items():
            history = got_metrics.get(name, [])
            for step, value in ref_history:
                values = [v for s, v in history if s == step]
                if not values:
                    result["metrics_missing"] += 1
                    unequal_rounds.add(step)
                    row["differences"].append(f"{name} round {step}: missing")
                    continue
                result["metrics_duplicated"] += len(values) - 1
                if set(values) != {value}:
                    unequal_rounds.add(step)
                    row["differences"].append(f"{name} round {step}: {sorted(set(values))} vs {value}")
        row["final_equal"] = bool(ref_metrics) and plan.rounds not in unequal_rounds
        row["all_rounds_equal"] = bool(ref_metrics) and not row["differences"]
        result["trials"][key] = row
    result["trial_runs_duplicated"] += sum(max(0, n - 1) for k, n in counts["trial_runs"].items() if k not in plan.grid)
    return result


LOSS_COUNTS = (
    "labels_lost",
    "labels_differ",
    "budget_spent_twice",
    "metrics_missing",
    "metrics_duplicated",
    "trial_runs_duplicated",
    "runs_not_finished",
    "left_running",
)


def goal_met(faults: FaultLog, result: dict) -> bool:
    """Every planned kill landed, nothing lost or doubled, and every trial equal to the fault-free
    run at every round (labels and metrics)."""
    return (
        not faults.not_landed
        and faults.outbox_unsent_after_replay == 0
        and all(result[k] == 0 for k in LOSS_COUNTS)
        and all(row["all_rounds_equal"] for row in result["trials"].values())
    )


# --- report -----------------------------------------------------------------------------------


def report(plan: Plan, faults: FaultLog, result: dict, reference_s: float, faulty_s: float) -> str:
    from benchmarks.common import machine_line

    trials = result["trials"].values()
    lines = [
        f"Sweep: {plan.trials} trials x {plan.rounds} rounds (smoke-size domains, `points_per_image` "
        f"{plan.grid[0]}..{plan.grid[-1]}), seed {plan.seed}; machine: {machine_line()}.",
        f"Fault-free run {reference_s:.0f} s, run under faults {faulty_s:.0f} s "
        f"({faults.driver_starts} driver starts).",
        "",
        "| what | count |",
        "|---|---|",
        f"| kills that landed (SIGKILL) | {faults.total} of {len(faults.planned)} planned: "
        + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in faults.kills.items())
        + " |",
        f"| drivers that exited by themselves (not killed) | {len(faults.unexpected_exits)} "
        f"(and {faults.refused_starts} refused to start while the MLflow server was down) |",
        f"| operations the sweep left in its durable MLflow outbox (MLflow down when it ended), sent by "
        f"the replay command it printed | {faults.outbox_left} (still unsent after the replay: "
        f"{faults.outbox_unsent_after_replay}) |",
        f"| labels lost (rounds missing) | {result['labels_lost']} |",
        f"| labels that differ from the reference's (per round and image, pixel for pixel) | "
        f"{result['labels_differ']} |",
        f"| budget spent twice (pixels bought twice, rounds or trials bought again) | {result['budget_spent_twice']} |",
        f"| MLflow metrics missing (per trial, metric and round) | {result['metrics_missing']} |",
        f"| MLflow metrics duplicated | {result['metrics_duplicated']} |",
        f"| trial runs duplicated in MLflow | {result['trial_runs_duplicated']} |",
        f"| trial runs not FINISHED in MLflow | {result['runs_not_finished']} |",
        f"| processes of the sweep left running at the end | {result['left_running']} |",
        f"| trials whose final metrics equal the fault-free run's, bit for bit | "
        f"{sum(r['final_equal'] for r in trials)} of {plan.trials} |",
        f"| trials whose labels and metrics of every round equal it | "
        f"{sum(r['all_rounds_equal'] for r in trials)} of {plan.trials} |",
        "",
        f"{GOAL}: {'met' if goal_met(faults, result) else 'NOT met'}.",
    ]
    differences = [
        f"- trial points_per_image={k}: " + "; ".join(r["differences"][:5])
        for k, r in result["trials"].items()
        if r["differences"]
    ]
    missed = [f"- planned kill that did not land: {k}" for k in faults.not_landed]
    if differences or faults.unexpected_exits or missed:
        lines += [
            "",
            "Differences, unexpected exits and kills that did not land:",
            *differences,
            *(f"- {e}" for e in faults.unexpected_exits),
            *missed,
        ]
    return "\n".join(lines)


GOAL = "Goal (every planned kill landed, every count 0, every trial equal at every round)"


def document(command: str, figures: str) -> str:
    """The ``--out`` page: what the run does and covers, then its figures."""
    return f"""# Reliability under repeated faults (chaos run)

`{command}` runs one small sweep twice through `python -m orchestrator.sweep`: once without faults
(the reference), and once against a real `mlflow server` while a Ray Train worker, a ranking actor,
the MLflow server or the sweep driver is killed with SIGKILL. The seed plans the kills: each kind
once, the rest drawn with weights (Train worker 0.35, driver 0.25, ranking actor 0.2, MLflow server
0.2), spread evenly over the rounds. The sweep's progress, read from its folder (label stores,
`progress.json`) and its processes, decides when each lands: a ranking actor while its round ranks, a
Train worker while its round trains, the MLflow server while a round trains (the round's report falls
into the outage), the driver once it has bought or reported a round since it started. So every
planned kill lands whatever the machine's speed. A killed driver is started again with `--resume` (as
soon as the MLflow server is up: the pre-flight check refuses an unreachable one); a killed server is
started again on the same store once the sweep has bought or reported a round without it, or when no
driver runs. Only processes that carry the benchmark's own environment mark are killed. A sweep that
ends while the server is down leaves its last operations in its durable outbox and prints the replay
command; the benchmark then brings the server back and runs that command, as the sweep's operator
would, and says how many operations it sent.

It then counts what the faults cost, against the reference: kills that did not land, labels lost,
labels that differ (per round and image, pixel for pixel: coordinates and classes), budget spent
twice, MLflow metrics missing or duplicated (per trial run, metric and round), duplicated or
unfinished trial runs, processes of the sweep left running, and whether every trial's metrics (target
mIoU and per-class IoU, budget, training losses; not timings) are bit-identical at every round.
Goal: every planned kill landed, every count 0, every trial equal at every round.

What it does not cover: faults before the sweep has started (source-model training; its Train
workers are covered by `test_train_loop.py`), a Ray node or the Ray head lost on a cluster (it runs a
local Ray), disk faults (see `test_disk_full.py`), and schedulers other than FIFO (ASHA and PBT
decide from timing, so their results are not expected to be bit-identical across runs).

`python -m benchmarks.chaos --small` (2 trials x 2 rounds, 4 kills: one of each kind) shows it works
in a few minutes; `make test-slow` runs it as `tests/test_chaos.py`. `make test` runs a small chaos
case of its own against the test session's fault-free sweep.

{figures}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6, help="trials of the sweep (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per trial (default 3)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to inject (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default 0)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="2 trials x 2 rounds, 4 kills (one of each kind): shows it works in a few minutes",
    )
    parser.add_argument("--workdir", metavar="DIR", help="where both runs go (default: a new folder in /tmp)")
    parser.add_argument(
        "--timeout-min", type=float, default=30.0, help="give up on a run after this many minutes (default 30)"
    )
    parser.add_argument(
        "--out",
        metavar="MD",
        help="also write the report as a Markdown page here",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for both runs, as for orchestrator.sweep",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.trials, args.rounds, args.kills = SMALL
    from benchmarks.common import benchmark_config

    cfg = benchmark_config(args.overrides)  # a bad key is refused now, not after the first run
    if cfg is None:
        return 2
    if cfg.storage.uri:
        print(
            "error: config key 'storage.uri': the chaos benchmark reads both runs' results from local folders; "
            "run it without storage.uri",
            file=sys.stderr,
        )
        return 2
    if args.trials < 1 or args.rounds < 1 or args.kills < 0 or args.timeout_min <= 0:
        print("error: --trials and --rounds must be >= 1, --kills >= 0, --timeout-min > 0", file=sys.stderr)
        return 2
    if not Path("/proc").is_dir():
        print("error: the chaos benchmark finds the processes to kill in /proc (Linux only)", file=sys.stderr)
        return 2
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="activeda-chaos-")).resolve()
    # A workdir may hold a source-model cache (runs/source-models) to start from, not a chaos run.
    if any((workdir / p).exists() for p in ("faulty", "reference", "runs/faulty", "runs/reference")):
        print(f"error: '{workdir}' already holds a chaos run; give an empty or new --workdir", file=sys.stderr)
        return 2
    plan = Plan(
        args.trials, args.rounds, args.kills, args.seed, workdir, args.overrides, timeout_s=60 * args.timeout_min
    )
    say(f"workdir {workdir}; {plan.trials} trials x {plan.rounds} rounds, {plan.kills} kills, seed {plan.seed}")
    try:
        say("1/3 the sweep without faults")
        reference_s = run_reference(plan)
        say(f"    done in {reference_s:.0f} s")
        say("2/3 the same sweep while processes are killed")
        faults, faulty_s, _ = run_with_faults(plan)
        say(f"    done in {faulty_s:.0f} s after {faults.total} of {len(faults.planned)} planned kills")
        say("3/3 comparing")
        result = compare(plan, faults, reference_run(plan), faulty_run(plan))
    except ChaosError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = report(plan, faults, result, reference_s, faulty_s)
    print("\n" + text)
    (workdir / "result.json").write_text(
        json.dumps(
            {
                "kills_planned": [str(k) for k in faults.planned],
                "kills": faults.kills,
                "events": faults.events,
                "unexpected_exits": faults.unexpected_exits,
                "goal_met": goal_met(faults, result),
                **result,
            },
            indent=1,
            default=str,
        )
    )
    out = Path(args.out) if args.out else None
    if out is not None:
        command = (
            "python -m benchmarks.chaos"
            + (" --small" if args.small else "")
            + (f" --seed {plan.seed}" if plan.seed else "")
        )
        out.write_text(document(command, text))
        say(f"report written to {out}")
    return 0 if goal_met(faults, result) else 1


if __name__ == "__main__":
    sys.exit(main())
