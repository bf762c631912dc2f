"""``python -m benchmarks.chaos``: a sweep under repeated faults, checked against the same sweep without.

The same small sweep (bundled synthetic domains at smoke size; one trial per ``points_per_image`` of a
grid) runs twice through ``python -m orchestrator.sweep``:

1. without faults, against a sqlite MLflow store: the reference;
2. against a real ``mlflow server`` while, at random times drawn from ``--seed``, a Ray Train worker, a
   ranking actor, the MLflow server or the sweep driver is killed with SIGKILL. A killed driver is
   started again with ``--resume`` (once the MLflow server is up); a killed server is started again
   on the same store after a random outage.

Then it counts what the faults cost: labels lost (a round of a trial's label store missing or smaller
than the reference's), budget spent twice (a pixel bought in two rounds, a trial's labels bought under
a second trial id, more pixels than the reference), MLflow metrics missing or duplicated (per trial
run, metric and round, against the reference's), trial runs duplicated, processes of the sweep left
running at the end, and whether each trial's metrics of every round (target mIoU and per-class IoU,
budget, training losses; not timings) are bit-identical to the reference's. Goal: every count 0, all
metrics equal.

Only processes that carry this benchmark's own environment mark are ever killed (other work on the
machine is safe). ``--small`` (2 trials x 2 rounds, 6 kills) shows that it works in a few minutes;
the default (6 trials x 3 rounds, 20 kills) writes ``docs/CHAOS.md``.
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

ROOT = Path(__file__).resolve().parents[1]
MARK = "ACTIVEDA_CHAOS_ID"
VICTIMS = {"train_worker": 0.35, "ranking_actor": 0.2, "mlflow_server": 0.2, "driver": 0.25}
PROCESS_NAMES = {"train_worker": "RayTrainWorker", "ranking_actor": "RankingActor"}
COMPARED = ("target/", "budget/", "train/loss/")  # not time/: wall clock differs between any two runs
DOC = ROOT / "docs" / "CHAOS.md"


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
    min_gap_s: float = 4.0
    max_gap_s: float = 14.0

    @property
    def grid(self) -> list[int]:
        return list(range(2, 2 + self.trials))  # points per image: one trial each, the key of a trial


def sweep_args(plan: Plan, name: str) -> list[str]:
    """The sweep both runs make, as sweep ``name`` (the faulty one adds its tracking URI and, later,
    --resume). Both share one output folder, so the source model is trained once (it is cached)."""
    grid = ", ".join(map(str, plan.grid))
    args = [
        "--smoke",
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
        # Enough restarts for every kill one round might take.
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


@dataclass
class FaultLog:
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VICTIMS, 0))
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
    def total(self) -> int:
        return sum(self.kills.values())


def run_with_faults(plan: Plan) -> tuple[FaultLog, float, Path]:
    """The sweep while processes are killed; returns the fault log, its wall time and the store."""
    run_dir = plan.workdir / "faulty"
    run_dir.mkdir(parents=True, exist_ok=True)
    mark = f"chaos-{uuid.uuid4().hex[:12]}"
    rng = random.Random(plan.seed)
    server = MlflowServer(run_dir / "mlflow.db", free_port(), run_dir / "mlflow-server.log", mark)
    server.start()
    sweep_dir = plan.workdir / "runs" / "faulty"
    base = [sys.executable, "-m", "orchestrator.sweep", *sweep_args(plan, "faulty"), "--tracking-uri", server.uri]
    faults = FaultLog()
    driver: subprocess.Popen | None = None
    server_back_at: float | None = None
    started = time.monotonic()
    next_kill = started + rng.uniform(plan.min_gap_s, plan.max_gap_s)
    pending_kind: str | None = None
    first_of_each = rng.sample(list(VICTIMS), len(VICTIMS))  # every kind is killed at least once

    def start_driver() -> subprocess.Popen:
        resume = ["--resume"] if (sweep_dir / "sweep.json").is_file() else []  # started: resume it
        faults.driver_starts += 1
        log = open(run_dir / f"driver-{faults.driver_starts:02d}.log", "wb")
        note(f"driver {faults.driver_starts} started" + (" with --resume" if resume else ""))
        return subprocess.Popen(
            base + resume, cwd=run_dir, env=env_with_mark(mark), stdout=log, stderr=subprocess.STDOUT
        )

    def note(event: str) -> None:
        faults.events.append(f"{time.monotonic() - started:7.1f} s  {event}")
        say(event)

    try:
        driver = start_driver()
        while True:
            now = time.monotonic()
            if now - started > plan.timeout_s:
                raise ChaosError(f"the sweep under faults did not end within {plan.timeout_s:.0f} s")
            if server_back_at is not None and now >= server_back_at:
                server.start()
                server_back_at = None
                note("MLflow server started again")
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
            if driver is None:
                if server.up:  # the pre-flight check refuses an unreachable tracking server
                    driver = start_driver()
                time.sleep(0.5)
                continue
            if faults.total < plan.kills and now >= next_kill and (sweep_dir / "sweep.json").is_file():
                kind = pending_kind or (
                    first_of_each.pop(0)
                    if first_of_each
                    else rng.choices(list(VICTIMS), weights=list(VICTIMS.values()))[0]
                )
                if kill(kind, driver, server, mark, rng, note):
                    faults.kills[kind] += 1
                    pending_kind = None
                    next_kill = now + rng.uniform(plan.min_gap_s, plan.max_gap_s)
                    if kind == "mlflow_server":
                        server_back_at = now + rng.uniform(5.0, 30.0)
                    elif kind == "driver":
                        driver.wait()
                else:
                    pending_kind = kind  # not running right now (e.g. between rounds): the next one that is
            time.sleep(0.2)
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        server.kill()
    wall = time.monotonic() - started
    time.sleep(3)  # what a finished driver ended is gone by now; anything still marked outlived the run
    left = [f"{pid} {cmdline(pid)[:80]}" for pid in marked(mark)]
    if left:
        faults.events.append(f"left running after the sweep: {left}")
    faults.left_running = len(left)
    return faults, wall, run_dir


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


def kill(kind: str, driver: subprocess.Popen, server: MlflowServer, mark: str, rng: random.Random, note) -> bool:
    """SIGKILL one process of ``kind``; False when none is running right now."""
    if kind == "driver":
        driver.send_signal(signal.SIGKILL)
        note(f"killed the sweep driver (pid {driver.pid})")
        return True
    if kind == "mlflow_server":
        if not server.up:
            return False
        pid = server.process.pid
        server.kill()
        note(f"killed the MLflow server (pid {pid})")
        return True
    victims = find_victims(kind, mark)
    if not victims:
        return False
    pid = rng.choice(sorted(victims))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    note(f"killed a {kind.replace('_', ' ')} (pid {pid})")
    return True


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


def compare(plan: Plan, faults: FaultLog, faulty_dir: Path) -> dict:
    import pyarrow.parquet as pq

    reference_dir = plan.workdir / "reference"
    reference, _ = trial_metrics(reference_dir / "mlflow.db", "reference")
    faulty, counts = trial_metrics(faulty_dir / "mlflow.db", "faulty")
    ref_stores = label_stores(plan.workdir / "runs" / "reference")
    stores = label_stores(plan.workdir / "runs" / "faulty")
    result = {
        "labels_lost": 0,
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
        # Labels: every round of the reference, the same pixels and classes, bought once.
        folders = stores.get(key, [])
        result["budget_spent_twice"] += max(0, len(folders) - 1)
        if key not in ref_stores:
            raise ChaosError(f"the fault-free run has no trial with points_per_image={key}")
        ref_rounds = sorted(p.name for p in ref_stores[key][0].glob("round-*.parquet"))
        got = {p.name: p for folder in folders for p in folder.glob("round-*.parquet")}
        seen: set[tuple[int, int, int]] = set()
        for name in ref_rounds:
            if name not in got:
                result["labels_lost"] += 1
                row["differences"].append(f"labels of {name} missing")
                continue
            ref_table, table = pq.read_table(ref_stores[key][0] / name), pq.read_table(got[name])
            ref_px, px = sum(ref_table["num_pixels"].to_pylist()), sum(table["num_pixels"].to_pylist())
            if px < ref_px:
                result["labels_lost"] += 1
            if px > ref_px:
                result["budget_spent_twice"] += 1
            if not table.select(["image_id", "num_pixels"]).equals(ref_table.select(["image_id", "num_pixels"])):
                row["differences"].append(f"labels of {name} differ from the reference")
        from orchestrator.labels.store import LabelStore

        for folder in folders:
            for image_id, (ys, xs, _) in LabelStore(folder).sparse_labels().items():
                pixels = list(zip(ys.tolist(), xs.tolist()))
                duplicates = len(pixels) - len(set(pixels))
                result["budget_spent_twice"] += duplicates
                for y, x in pixels:
                    if (image_id, y, x) in seen:
                        result["budget_spent_twice"] += 1
                    seen.add((image_id, y, x))
        # MLflow: every metric of every round once, with the reference's value.
        result["trial_runs_duplicated"] += max(0, counts["trial_runs"].get(key, 0) - 1)
        ref_metrics, got_metrics = reference.get(key, {}), faulty.get(key, {})
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


# --- report -----------------------------------------------------------------------------------


def report(plan: Plan, faults: FaultLog, result: dict, reference_s: float, faulty_s: float) -> str:
    from benchmarks.common import machine_line

    goal = faults.outbox_unsent_after_replay == 0 and all(
        result[k] == 0
        for k in (
            "labels_lost",
            "budget_spent_twice",
            "metrics_missing",
            "metrics_duplicated",
            "trial_runs_duplicated",
            "runs_not_finished",
            "left_running",
        )
    )
    equal = all(row["final_equal"] for row in result["trials"].values())
    lines = [
        f"Sweep: {plan.trials} trials x {plan.rounds} rounds (smoke-size domains, `points_per_image` "
        f"{plan.grid[0]}..{plan.grid[-1]}), seed {plan.seed}; machine: {machine_line()}.",
        f"Fault-free run {reference_s:.0f} s, run under faults {faulty_s:.0f} s "
        f"({faults.driver_starts} driver starts).",
        "",
        "| what | count |",
        "|---|---|",
        f"| kills survived (SIGKILL) | {faults.total} of {plan.kills} planned: "
        + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in faults.kills.items())
        + " |",
        f"| drivers that exited by themselves (not killed) | {len(faults.unexpected_exits)} "
        f"(and {faults.refused_starts} refused to start while the MLflow server was down) |",
        f"| operations the sweep left in its durable MLflow outbox (MLflow down when it ended), sent by "
        f"the replay command it printed | {faults.outbox_left} (still unsent after the replay: "
        f"{faults.outbox_unsent_after_replay}) |",
        f"| labels lost (rounds missing or smaller than the reference's) | {result['labels_lost']} |",
        f"| budget spent twice (pixels bought twice, rounds or trials bought again) | {result['budget_spent_twice']} |",
        f"| MLflow metrics missing (per trial, metric and round) | {result['metrics_missing']} |",
        f"| MLflow metrics duplicated | {result['metrics_duplicated']} |",
        f"| trial runs duplicated in MLflow | {result['trial_runs_duplicated']} |",
        f"| trial runs not FINISHED in MLflow | {result['runs_not_finished']} |",
        f"| processes of the sweep left running at the end | {result['left_running']} |",
        f"| trials whose final metrics equal the fault-free run's, bit for bit | "
        f"{sum(r['final_equal'] for r in result['trials'].values())} of {plan.trials} |",
        f"| trials whose metrics of every round equal it | "
        f"{sum(r['all_rounds_equal'] for r in result['trials'].values())} of {plan.trials} |",
        "",
        f"Goal (every count 0, all final metrics equal): {'met' if goal and equal else 'NOT met'}.",
    ]
    differences = [
        f"- trial points_per_image={k}: " + "; ".join(r["differences"][:5])
        for k, r in result["trials"].items()
        if r["differences"]
    ]
    if differences or faults.unexpected_exits:
        lines += ["", "Differences and unexpected exits:", *differences, *(f"- {e}" for e in faults.unexpected_exits)]
    return "\n".join(lines)


def document(command: str, figures: str) -> str:
    """``docs/CHAOS.md``: what the run does and covers, then its figures."""
    return f"""# Reliability under repeated faults (chaos run)

`{command}` runs one small sweep twice through `python -m orchestrator.sweep`: once without faults
(the reference), and once against a real `mlflow server` while, at random times drawn from the seed,
a Ray Train worker, a ranking actor, the MLflow server or the sweep driver is killed with SIGKILL. A
killed driver is started again with `--resume` (as soon as the MLflow server is up: the pre-flight
check refuses an unreachable one); a killed server is started again on the same store after a random
outage of 5-30 s. Kills begin once the sweep has started (its `sweep.json` exists) and come every
4-14 s, or as soon after as a process of the drawn kind runs; the first four kills are one of each
kind (in a seeded order), the rest are drawn with weights (Train worker 0.35, driver 0.25, ranking
actor 0.2, MLflow server 0.2). Only processes that carry the benchmark's own environment mark are
killed. A sweep that ends while the server is down leaves its last operations in its durable outbox
and prints the replay command; the benchmark then brings the server back and runs that command, as
the sweep's operator would, and says how many operations it sent.

It then counts what the faults cost, against the reference: labels lost, budget spent twice, MLflow
metrics missing or duplicated (per trial run, metric and round), duplicated or unfinished trial runs,
processes of the sweep left running, and whether every trial's metrics (target mIoU and per-class IoU,
budget, training losses; not timings) are bit-identical, at the last round and at every round.
Goal: every count 0, all final metrics equal.

What it does not cover: faults before the sweep has started (source-model training; its Train
workers are covered by `test_train_loop.py`), a Ray node or the Ray head lost on a cluster (it runs a
local Ray), disk faults (see `test_disk_full.py`), and schedulers other than FIFO (ASHA and PBT
decide from timing, so their results are not expected to be bit-identical across runs).

`python -m benchmarks.chaos --small` (2 trials x 2 rounds, 6 kills) shows it works in a few minutes;
`make test-slow` runs it as `tests/test_chaos.py`, which `make test` skips.

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
        help="2 trials x 2 rounds, 6 kills: shows it works in a few minutes (writes no docs)",
    )
    parser.add_argument("--workdir", metavar="DIR", help="where both runs go (default: a new folder in /tmp)")
    parser.add_argument(
        "--timeout-min", type=float, default=30.0, help="give up on a run after this many minutes (default 30)"
    )
    parser.add_argument(
        "--out",
        metavar="MD",
        help=f"write the report here (default: {DOC.relative_to(ROOT)} without --small, none with it)",
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
        args.trials, args.rounds, args.kills = 2, 2, 6
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
    if (workdir / "faulty").exists() or (workdir / "reference").exists() or (workdir / "runs").exists():
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
        faults, faulty_s, faulty_dir = run_with_faults(plan)
        say(f"    done in {faulty_s:.0f} s after {faults.total} kills")
        say("3/3 comparing")
        result = compare(plan, faults, faulty_dir)
    except ChaosError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = report(plan, faults, result, reference_s, faulty_s)
    print("\n" + text)
    (workdir / "result.json").write_text(
        json.dumps(
            {"kills": faults.kills, "events": faults.events, "unexpected_exits": faults.unexpected_exits, **result},
            indent=1,
            default=str,
        )
    )
    out = Path(args.out) if args.out else (None if args.small else DOC)
    if out is not None:
        command = (
            "python -m benchmarks.chaos"
            + (" --small" if args.small else "")
            + (f" --seed {plan.seed}" if plan.seed else "")
        )
        out.write_text(document(command, text))
        say(f"report written to {out}")
    met = "Goal (every count 0, all final metrics equal): met" in text
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
