"""A real Ray cluster of three nodes on this machine, brought up with `ray up` from cluster.local.yaml.

The head and two workers are sshds on their own loopback addresses, each in its own mount namespace
with its own home (``scripts/loopback_cluster.py`` says how they are kept apart from each other and
from every other Ray of the machine). Storage shared between the nodes is S3 (a moto server on
127.0.0.1): a node finds nothing of another node on its disk, so whatever a node needs from another
(labels, checkpoints, Tune's state) has to go through the bucket.

* `ray up` sets up every node: each has its own copy of the working tree and its own Ray, and the
  head's commands from the file (Ray with the dashboard on 127.0.0.1, an MLflow server) ran.
* ``python -m orchestrator.cluster stage`` copies two datasets in the real GTA5 and Cityscapes
  layouts to every node; the run is killed part-way, the copies are damaged on purpose, and the
  next run resumes: nothing verified is copied again, the damage is found and repaired.
* A sweep runs through `ray exec` as a user would. Its two trials have the same experiment settings
  (they differ only in the CPU fraction their Train workers and ranking actors reserve, so Ray's
  records tell whose they are). Once a trial has bought its first labels and one of its Train
  workers or ranking actors is alive on worker2, worker2 is killed (SIGKILL of its raylet, workers
  and agents at once). The sweep must finish; the killed trial loses nothing, buys nothing twice
  and ends with exactly the labels (coordinates and classes, every round) and the mIoU of the trial
  the kill never touched. Ray's state API shows that trials, Train workers and ranking actors ran on
  more than one node, and the S3 server's request log (each node signs with its own key) that the
  labels reached the nodes of a trial's workers through the bucket.

Marked ``cluster``: needs root (mount namespaces, sshd on port 22 of loopback addresses), openssh-server
and rsync (installed by scripts/install_cluster_test_deps.sh when missing). The nodes use about 230-270
CPU-seconds in all (``timings.json``'s ``nodes_cpu_s``), three quarters of it the sweep: mostly the
start of Ray's processes (six per Ray Train run: the controller, its helper actors, two workers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_data_loaders import make_cityscapes, make_gta5, plain_image, write_palette_ids, write_rgb

from conftest import ROOT, S3_TEST_ENV

pytestmark = pytest.mark.cluster

INSTALL_DEPS = ROOT / "scripts" / "install_cluster_test_deps.sh"
BUCKET = "activeda-test"
SWEEP = "nodes"
POINTS = 5  # per image per round; the smoke pool has 8 images
ROUNDS = 2
# The two trials: the same experiment, told apart by the CPU fraction of their workers and actors
# (the source model's Train workers reserve the base config's 1.0).
FRACTIONS = (0.99, 0.98)
SWEEP_TIMEOUT_S = 1200
# Steps of the source model and of each round (a checkpoint half-way, where a killed run resumes):
# what costs here is starting Ray's processes, not the steps, but fewer steps make a shorter sweep.
STEPS = 4
# For every process of every node: MLflow's server without its job runner (eight processes that the
# tracking server does not need), and no Ray workers started ahead for the first driver.
NODE_RAY_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "RAY_prestart_worker_first_driver": "0"}


def _harness():
    spec = importlib.util.spec_from_file_location("loopback_cluster", ROOT / "scripts" / "loopback_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loopback_cluster"] = module
    spec.loader.exec_module(module)
    return module


loopback = _harness()


def ensure_deps() -> None:
    why = loopback.can_isolate_nodes() if shutil.which("unshare") else "unshare (util-linux) is missing"
    if why:
        pytest.skip(why)
    if not loopback.missing_tools():
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"needs {', '.join(loopback.missing_tools())}; apt-get is not available to install them")
    result = subprocess.run(["bash", str(INSTALL_DEPS)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and not loopback.missing_tools(), (
        f"{INSTALL_DEPS.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


class RecordedS3:
    """moto's S3 server on 127.0.0.1 that keeps (access key id, method, path) of every request.

    Every node connects from 127.0.0.1, so the key is what tells which node read what: each node has
    its own (``node_key``), in ``~/.aws/credentials`` of its own home, as each machine of a fleet has
    its own instance role. A file, not the environment: Ray Tune hands the driver's
    ``AWS_ACCESS_KEY_ID`` to every trial (and so to the trial's Train workers and ranking actors)
    wherever it runs, so keys in the environment would all read as the head's."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        moto = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str, str]] = []

        def recording(environ, start_response):
            credential = re.search(r"Credential=([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
            path = urllib.parse.unquote(environ.get("PATH_INFO", ""))
            self.requests.append((credential[1] if credential else "", environ["REQUEST_METHOD"], path))
            return moto(environ, start_response)

        self.server = make_server("127.0.0.1", 0, recording, threaded=True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def node_key(name: str) -> str:
        return f"node-{name}"

    def readers(self, key_prefix: str) -> dict[str, int]:
        """Who GOT objects under ``bucket/key_prefix``: node name (or the access key of a client that
        is no node) -> how many requests."""
        found: dict[str, int] = {}
        for credential, method, path in list(self.requests):
            if method == "GET" and path.startswith(f"/{BUCKET}/{key_prefix}"):
                who = credential.removeprefix("node-") if credential.startswith("node-") else f"key {credential!r}"
                found[who] = found.get(who, 0) + 1
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def recorded_s3():
    """A ``RecordedS3`` with an empty bucket; this process uses the shared test credentials."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    saved = {key: os.environ.get(key) for key in S3_TEST_ENV}
    os.environ.update(S3_TEST_ENV)
    s3 = RecordedS3()
    pafs.S3FileSystem(endpoint_override=s3.endpoint, region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
    try:
        yield s3
    finally:
        s3.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(recorded_s3, tmp_path_factory, request):
    """Head (1 CPU) and two workers (1 CPU each); trials may run on the head and worker1 (one each),
    never on worker2, the node the sweep test kills."""
    ensure_deps()
    logs = tmp_path_factory.mktemp("cluster")
    failed_before = request.session.testsfailed
    started = time.monotonic()
    nodes = loopback.LoopbackCluster(
        2,
        resources={"head": {"activeda_trial": 1}, "worker1": {"activeda_trial": 1}, "worker2": {}},
        # The keys come from each node's ~/.aws/credentials (see RecordedS3), the rest from here.
        node_env={k: v for k, v in S3_TEST_ENV.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        | NODE_RAY_ENV,
    )
    nodes.s3_endpoint = recorded_s3.endpoint
    nodes.s3 = recorded_s3
    nodes.logs = logs
    try:
        nodes.start()
        for node in nodes.nodes:
            (node.home / ".aws").mkdir()
            (node.home / ".aws" / "credentials").write_text(
                f"[default]\naws_access_key_id = {RecordedS3.node_key(node.name)}\n"
                f"aws_secret_access_key = {S3_TEST_ENV['AWS_SECRET_ACCESS_KEY']}\n"
            )
        nodes.write_config()
        nodes.up(log=logs / "ray-up.log")
        nodes.timings["up_total_s"] = time.monotonic() - started
        nodes.timings["nodes_cpu_after_up_s"] = nodes.cpu_seconds() or 0.0
        yield nodes
    finally:
        left = nodes.close(log_dir=logs, keep_logs=request.session.testsfailed > failed_before)
        nodes.timings["module_total_s"] = time.monotonic() - started
        (logs / "timings.json").write_text(json.dumps(nodes.timings, indent=1))
        print(f"\n[cluster test] timings: {json.dumps({k: round(v, 1) for k, v in nodes.timings.items()})}")
        assert not left, f"processes left running: {left}"


# --- ray up --------------------------------------------------------------------------------------


def test_ray_up_sets_up_every_node_apart(cluster):
    nodes = [n for n in cluster.state("nodes") if n["state"] == "ALIVE"]
    assert sorted(n["node_ip"] for n in nodes) == sorted(node.ip for node in cluster.nodes)
    for node in cluster.nodes:
        # Its own copy of the working tree, synced by `ray up` (the head) or the head's autoscaler (workers).
        assert (node.home / "activeda" / "orchestrator" / "sweep" / "driver.py").is_file(), node.name
        assert (node.home / "activeda" / "cluster.local.yaml").is_file(), node.name  # --cluster-config reads it
        assert (node.home / ".ray" / "auth_token").read_text() == cluster.token_file.read_text()
        # Its own Ray: a session in its own temp dir.
        assert list(node.ray_dir.glob("session_*/logs/raylet.out")), node.name
    assert (cluster.head.home / "ray_bootstrap_key.pem").is_file()  # how the head's autoscaler reached the workers
    assert not (cluster.workers[0].home / "ray_bootstrap_key.pem").exists()
    up_log = (cluster.logs / "ray-up.log").read_text()
    assert f"activeda-from {cluster.home}/activeda" in up_log  # the setup check ran the synced tree

    # The file's MLflow command started a tracking server on the head: bound to 127.0.0.1, its sqlite
    # store in the head's home. Answering takes 30-60 s of a loaded CPU here, so the command line is
    # checked and the server stopped; the sweep logs to a sqlite store.
    pid_file = cluster.head.home / "mlflow-server.pid"
    deadline = time.monotonic() + 30
    cmdline, pid = "", 0
    while time.monotonic() < deadline and "mlflow" not in cmdline:
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            time.sleep(0.5)
    for part in (
        "mlflow server",
        f"--host 127.0.0.1 --port {cluster.mlflow_port}",
        f"--backend-store-uri sqlite:///{cluster.home}/mlflow.db",
    ):
        assert part in cmdline, cmdline
    os.killpg(pid, signal.SIGKILL)  # its own session (setsid): the server and its uvicorn worker


# --- staging -------------------------------------------------------------------------------------


def fake_datasets(root: Path) -> tuple[Path, Path]:
    """GTA5 and Cityscapes folders in their real layouts: many small pairs (per-file work dominates,
    so a copy takes long enough to be interrupted) and one full-size GTA5 image (more than one chunk)."""
    ids = np.tile(np.arange(34, dtype=np.uint8), (8, 1))
    gta5 = make_gta5(root / "gta5", {f"{i:05d}.png": ids for i in range(1, 41)})
    write_rgb(gta5 / "images" / "00041.png", plain_image(1052, 1914, seed=7))  # GTA5's own size
    write_palette_ids(gta5 / "labels" / "00041.png", np.zeros((1052, 1914), np.uint8))
    cityscapes = root / "cityscapes"
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        make_cityscapes(cityscapes, {(city, f): ids for city in cities for f in range(6)}, split=split)
    return gta5, cityscapes


def files_of(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (staging files included, by their names)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def stage_command(cluster, *data: Path, dest: str = "~/datasets") -> list[str]:
    args = [sys.executable, "-m", "orchestrator.cluster", "stage", "--cluster-config", str(cluster.config_path)]
    for folder in data:
        args += ["--data", str(folder)]
    return args + ["--dest", dest]


def run_stage(cluster, *data: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**cluster.client_env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        stage_command(cluster, *data), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def wait_for_no_staging(cluster, timeout: float = 60) -> None:
    """Until no process of the cluster runs staging any more (the head's side, a worker's task)."""
    markers = ("orchestrator.cluster stage-nodes", "ray::fill_copy", "ray::FileServer")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [c for c in cluster._marked().values() if any(m in c for m in markers)]
        if not running:
            return
        time.sleep(0.5)
    raise AssertionError(f"staging still runs {timeout:.0f} s after its client was killed: {running}")


def test_stage_copies_datasets_to_every_node_checked_and_resumable(cluster, tmp_path):
    gta5, cityscapes = fake_datasets(tmp_path / "source")
    copies = {node.name: node.home / "datasets" for node in cluster.nodes}

    # 1. A run killed part-way, once a worker has some of the files (driven by the copy's progress).
    started = time.monotonic()
    env = {**cluster.client_env, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        stage_command(cluster, gta5, cityscapes),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            copied = list((copies["worker1"] / "gta5").rglob("*.png")) if (copies["worker1"] / "gta5").is_dir() else []
            if len(copied) >= 20:
                break
            time.sleep(0.05)
        assert first.poll() is None, f"the first staging ended before it could be interrupted:\n{first.stdout.read()}"
    finally:
        if first.poll() is None:
            # The command, its `ray exec` and ssh: the head's side loses its client.
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    cluster.timings["stage_interrupted_s"] = time.monotonic() - started
    assert (gta5 / "activeda.sha256").is_file() and (cityscapes / "activeda.sha256").is_file()
    # The manifest is sha256sum's own format.
    check = subprocess.run(["sha256sum", "--quiet", "-c", "activeda.sha256"], cwd=gta5, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    source = {"gta5": files_of(gta5), "cityscapes": files_of(cityscapes)}
    wait_for_no_staging(cluster)  # the head's side notices that its client is gone, and stops

    # 2. Damage on top of the interruption: on worker1 a file cut short and one with a byte flipped
    # (same size, same modification time), an abandoned staging file; on the head a flipped byte.
    def damage(path: Path, how: str) -> None:
        stat = path.stat()
        data = bytearray(path.read_bytes())
        if how == "cut":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    w1 = copies["worker1"] / "gta5"
    finals = sorted(p for p in w1.rglob("*.png") if not p.name.startswith("."))
    assert len(finals) >= 3, finals
    damage(finals[0], "cut")
    damage(finals[1], "flip")
    (finals[2].parent / f".{finals[2].name}.tmp-1-abandoned.png").write_bytes(b"half a file")
    head_file = copies["head"] / "gta5" / "labels" / "00005.png"
    damage(head_file, "flip")

    # What each node holds right now, file by file: the files that are right must never be copied again.
    before = {}
    for name, root in copies.items():
        for dataset in ("gta5", "cityscapes"):
            folder = root / dataset
            for path in folder.rglob("*") if folder.is_dir() else []:
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and source[dataset].get(rel) == hashlib.sha256(path.read_bytes()).hexdigest():
                    before[(name, dataset, rel)] = path.stat().st_ino
    assert any(k[0] == "worker1" for k in before), "the interrupted run had copied nothing to worker1"

    # 3. The same command again: it resumes.
    started = time.monotonic()
    second = run_stage(cluster, gta5, cityscapes)
    cluster.timings["stage_resumed_s"] = time.monotonic() - started
    cluster.timings["nodes_cpu_after_staging_s"] = cluster.cpu_seconds() or 0.0
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    for name, root in copies.items():
        for dataset in ("gta5", "cityscapes"):
            assert files_of(root / dataset) == source[dataset], (name, dataset)  # the manifest included
    for (name, dataset, rel), inode in before.items():
        assert (copies[name] / dataset / rel).stat().st_ino == inode, f"{name}: {dataset}/{rel} was copied again"
    assert "did not match their checksum" in output and "abandoned staging file(s) removed" in output, output
    assert "the head's copy lacked or differed in" in output, output  # the head's flipped byte went up again
    assert "staged on every node: /root/datasets/gta5" in output.replace(str(cluster.home), "/root"), output

    # 4. Bad input: one line and a non-zero exit, before anything is copied.
    missing = run_stage(cluster, tmp_path / "no-such-dataset")
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "no such folder" in lines[0], missing.stderr


# --- the sweep, and a worker node killed mid-round ---------------------------------------------------


def alive_actors(cluster) -> list[dict]:
    """ALIVE actors from the state API's REST endpoint (what ``list_actors`` calls): cheap enough to poll."""
    query = urllib.parse.urlencode(
        {
            "limit": 10000,
            "timeout": 10,
            "detail": True,
            "filter_keys": "state",
            "filter_predicates": "=",
            "filter_values": "ALIVE",
        }
    )
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/v0/actors?{query}",
        headers={"Authorization": f"Bearer {cluster.token_file.read_text().strip()}"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.load(response)["data"]["result"]["result"]


def cpu_fraction(actor: dict) -> float | None:
    """The CPU an actor reserved (a Train worker's is inside its placement group's resource names)."""
    for key, value in (actor.get("required_resources") or {}).items():
        if key == "CPU" or key.startswith("CPU_group_"):
            return round(float(value), 4)
    return None


KINDS = {"RayTrainWorker": "train", "RankingActor": "ranking", "ImplicitFunc": "trial"}


def kind(actor: dict) -> str | None:
    return next((k for name, k in KINDS.items() if actor["class_name"].endswith(name)), None)


def s3_objects(fs, prefix: str) -> dict[str, pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.split(f"{prefix}/", 1)[1]: i for i in infos if i.type == pafs.FileType.File}


def label_rows(fs, key: str) -> list[dict]:
    """A round file of a label store, as rows sorted by image (coordinates, masks, classes, costs)."""
    with fs.open_input_stream(key) as stream:
        table = pq.read_table(io.BytesIO(stream.read()))
    columns = ["image_id", "height", "width", "ys", "xs", "mask_rle", "labels", "num_pixels", "clicks"]
    return sorted(table.select(columns).to_pylist(), key=lambda row: row["image_id"])


def trial_fractions(cluster) -> dict[str, tuple[float, str]]:
    """trial id -> (its CPU fraction, the node that ran it), from the config.json each trial writes in
    its own folder on its own node."""
    found = {}
    for node in cluster.nodes:
        for config in (node.home / "runs" / SWEEP / "trials").glob("*/config.json"):
            found[config.parent.name] = (json.loads(config.read_text())["train"]["cpus_per_worker"], node.name)
    return found


def test_sweep_across_nodes_survives_a_worker_node_killed_mid_round(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    fs = pafs.S3FileSystem(endpoint_override=cluster.s3_endpoint, region="us-east-1")
    prefix = f"nodes-{cluster.name}"
    cases = ", ".join(f"{{train.cpus_per_worker: {f}, ranking.cpus_per_actor: {f}}}" for f in FRACTIONS)
    sweep = (
        "cd ~/activeda && python -m orchestrator.sweep --smoke --address auto "
        "--cluster-config ~/activeda/cluster.local.yaml --output-dir ~/runs --tracking-uri sqlite:///$HOME/mlflow.db "
        f"--name {SWEEP} --max-concurrent 2 --set selection.rounds={ROUNDS} --set train.num_workers=2 "
        f"--set source.steps={STEPS} --set adapt.steps={STEPS} --set adapt.checkpoint_every={STEPS // 2} "
        f"--set data.cache_dir=$HOME/data --set storage.uri=s3://{BUCKET}/{prefix} "
        f"--set storage.endpoint={cluster.s3_endpoint} "
        f"--set 'sweep.search_space={{cases: {{grid: [{cases}]}}}}'"
    )
    worker2 = cluster.node("worker2")
    worker2_id = next(
        n["node_id"] for n in cluster.state("nodes") if n["node_ip"] == worker2.ip and n["state"] == "ALIVE"
    )
    started = time.monotonic()
    driver = cluster.exec_background(sweep, tmp_path / "sweep.log")
    killed, victim, seen_labels, on_worker2 = [], None, {}, []
    try:
        # Kill worker2 once a trial that has bought its first labels has a Train worker or a ranking
        # actor alive there (worker2 has one CPU, so whatever runs there is that one trial's).
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while time.monotonic() < deadline and driver.poll() is None and not killed:
            time.sleep(2)  # each poll costs the head's dashboard a state query
            bought = {
                k.split("/")[0] for k in s3_objects(fs, f"{prefix}/{SWEEP}/trials") if k.endswith("round-0001.parquet")
            }
            if not bought:
                continue
            fractions = trial_fractions(cluster)
            try:
                actors = alive_actors(cluster)
            except OSError:
                continue
            for actor in actors:
                trial = next((t for t, (f, _) in fractions.items() if f == cpu_fraction(actor)), None)
                if actor["node_id"] == worker2_id and kind(actor) in ("train", "ranking") and trial in bought:
                    victim = (trial, kind(actor), actor["actor_id"])
                    seen_labels = {
                        k: (i.size, i.mtime_ns)
                        for k, i in s3_objects(fs, f"{prefix}/{SWEEP}/trials").items()
                        if "/labels/" in k
                    }
                    # What the kill hits: every train or ranking actor alive on worker2 at that moment.
                    on_worker2 = [a for a in actors if a["node_id"] == worker2_id and kind(a) in ("train", "ranking")]
                    killed = cluster.kill_node("worker2")
                    break
        assert killed, (
            f"no trial had work on worker2 after buying labels; sweep:\n{(tmp_path / 'sweep.log').read_text()[-4000:]}"
        )
        cluster.timings["kill_after_s"] = time.monotonic() - started
        driver.wait(timeout=max(60, deadline - time.monotonic()))
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    cluster.timings["sweep_s"] = time.monotonic() - started
    cluster.timings["nodes_cpu_after_sweep_s"] = cluster.cpu_seconds() or 0.0
    output = (tmp_path / "sweep.log").read_text()
    shutil.copy(tmp_path / "sweep.log", cluster.logs / "sweep.log")
    assert driver.returncode == 0, output[-6000:]
    assert "2 trial(s), 0 failed" in output, output[-4000:]
    assert any("raylet" in line for line in killed), killed

    # --- Ray's own records: where trials, Train workers and ranking actors ran ---------------------
    names = cluster.node_ids()
    actors = cluster.state("actors")
    fractions = trial_fractions(cluster)
    assert len(fractions) == 2 and {f for f, _ in fractions.values()} == set(FRACTIONS), fractions
    # (an actor that never got a node, e.g. a Train worker asked for while worker2 went down, has none)
    placed = {
        k: {names[a["node_id"]] for a in actors if kind(a) == k and a["node_id"]} for k in ("trial", "train", "ranking")
    }
    for what, where in placed.items():
        assert len(where) >= 2, f"{what}s ran on {where} only"
    assert {node for _, node in fractions.values()} == placed["trial"] == {"head", "worker1"}
    assert {n["node_id"]: n["state"] for n in cluster.state("nodes")}[worker2_id] == "DEAD"
    victim_trial, victim_kind, victim_actor = victim
    (spared_trial,) = set(fractions) - {victim_trial}
    victim_fraction = fractions[victim_trial][0]
    # The kill hit the victim's actor, and only the victim's: whatever the other trial had on worker2
    # had ended before.
    assert all(cpu_fraction(a) == victim_fraction for a in on_worker2), on_worker2
    (record,) = [a for a in actors if a["actor_id"] == victim_actor]
    assert record["node_id"] == worker2_id and record["state"] == "DEAD", record
    # Its process was one the kill took. (Its death cause says who noticed first: GCS's NODE_DIED, its
    # raylet's WORKER_DIED, or RAY_KILL from the Train controller that tore down its worker group.)
    killed_pids = {int(line.split()[0]) for line in killed}
    assert record["pid"] in killed_pids, (record["pid"], record["death_cause"], killed)

    # --- the labels: nothing lost, nothing bought twice, the same as the trial without the kill -------
    objects = s3_objects(fs, f"{prefix}/{SWEEP}/trials")
    rounds = [f"labels/round-{r:04d}.parquet" for r in range(1, ROUNDS + 1)]
    for trial in fractions:
        assert sorted(k.split("/", 1)[1] for k in objects if k.startswith(f"{trial}/labels/")) == rounds
    for key, (size, mtime) in seen_labels.items():  # bought before the kill: never written again
        assert (objects[key].size, objects[key].mtime_ns) == (size, mtime), key
    for name in rounds:
        victim_rows = label_rows(fs, f"{BUCKET}/{prefix}/{SWEEP}/trials/{victim_trial}/{name}")
        spared_rows = label_rows(fs, f"{BUCKET}/{prefix}/{SWEEP}/trials/{spared_trial}/{name}")
        assert victim_rows == spared_rows, f"{name}: the killed trial's labels differ from the untouched trial's"
        assert sum(r["num_pixels"] for r in victim_rows) == POINTS * 8
    # Nodes share nothing but the bucket: a Train worker or ranking actor on another node than its
    # trial's gets the trial's labels from S3 (a LabelReader fetches the round files a node lacks), never
    # from the trial node's disk. Every node signs with its own key, so the server's log says which node
    # GOT them: some node other than the trial's did, and only nodes where the trial's workers ran.
    for trial, (fraction, trial_node) in fractions.items():
        workers_at = {
            names[a["node_id"]]
            for a in actors
            if kind(a) in ("train", "ranking") and cpu_fraction(a) == fraction and a["node_id"]
        }
        readers = cluster.s3.readers(f"{prefix}/{SWEEP}/trials/{trial}/labels/round-")
        fetched = {who for who in readers if not who.startswith("key ")} - {trial_node}  # not the test's reads
        print(f"[cluster test] trial {trial} on {trial_node}: workers on {sorted(workers_at)}, S3 GETs {readers}")
        assert fetched, f"no node but {trial_node} got trial {trial}'s labels from S3: {readers}"
        assert fetched <= workers_at, f"trial {trial}: S3 GETs {readers}, its workers on {workers_at}"
        for name in fetched:  # the reader's working copy, fetched from the bucket
            held = cluster.node(name).home / "runs" / SWEEP / "trials" / trial / rounds[0]
            assert held.is_file(), f"{name} got trial {trial}'s labels from S3 but holds no copy at {held}"

    # --- MLflow (the head's sqlite store): both trials finished every round, with the same mIoU --------
    client = MlflowClient(tracking_uri=f"sqlite:///{cluster.head.home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(SWEEP).experiment_id], "tags.`activeda.kind` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    histories = []
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "target/miou")
        assert sorted(m.step for m in history) == list(range(ROUNDS + 1))
        histories.append(sorted((m.step, m.value) for m in history))
    assert histories[0] == histories[1], histories
    print(f"\n[cluster test] killed worker2 during the {victim_kind} of trial {victim_trial}: {len(killed)} processes")
