"""A Ray cluster of a head and N worker nodes on this one machine, brought up with `ray up` (Linux, root).

Each node is an sshd bound to its own loopback address (the head on 127.0.0.1, the workers on
127.0.0.2, 127.0.0.3, ...; Linux routes all of 127.0.0.0/8 to ``lo``), and `ray up` with Ray's
on-prem ``local`` provider sets them up from cluster.local.yaml as it would set up real hosts: the
head over SSH from here, the workers over SSH from the head's autoscaler.

What makes the nodes separate machines, as far as the project can tell:

* Their own address: a random block of loopback addresses per cluster (``127.A.B.1`` the head,
  ``127.A.B.2``, ... the workers), each node's sshd on port 22 of its address (the head's autoscaler
  reaches the workers on port 22: Ray drops ``ssh_proxy_command`` from the head's copy of the file).
  A random block keeps two clusters of this machine apart.
* Their own home: each sshd runs in its own mount namespace, where the user's home (``/root``) is
  bound to that node's folder ``<base>/nodes/<name>/home``. Every node sees its home (the synced
  working tree, ``~/.ray``, ``~/ray_bootstrap_key.pem``, an ``output_dir`` or data cache under it) at
  the same path, as on a real fleet, but only its own files: what a node needs from another must
  travel through shared storage (S3) or Ray, never through the disk.
* Their own Ray: a Ray temp dir per node (``RAY_TMPDIR=<base>/nodes/<name>``), ``--node-ip-address``
  its address, and ports that do not collide (random worker, object-manager and agent ports; the
  head's GCS, dashboard and client-server ports chosen free).
* Small: ``--num-cpus`` and a small object store per node, so three nodes fit a 2-core machine.

Nothing here touches another Ray of the machine: ``ray stop`` (which stops every Ray of the machine)
never runs. The start commands' ``ray stop`` and the one `ray down` sends become
``scripts/stop_processes.py <this node's Ray temp dir>``, and teardown stops only processes that name
this cluster's folder or carry its mark (``LOOPBACK_CLUSTER`` in their environment).

Try it (as root; needs openssh-server and rsync, see scripts/install_cluster_test_deps.sh)::

    python scripts/loopback_cluster.py --workers 2     # prints the ray commands to use; Ctrl-C tears it down

Tests use ``LoopbackCluster`` (tests/test_cluster_nodes.py).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import importlib.util
import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STOP_PROCESSES = ROOT / "scripts" / "stop_processes.py"
SSHD = "/usr/sbin/sshd"
MARK = "LOOPBACK_CLUSTER"  # in the environment of every process of a node (sshd SetEnv)
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB


class ClusterError(RuntimeError):
    """The loopback cluster could not be brought up (the message says which step and why)."""


def _stopper():
    spec = importlib.util.spec_from_file_location("stop_processes", STOP_PROCESSES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_tools() -> list[str]:
    """What this machine lacks to run a loopback cluster (empty when nothing)."""
    missing = [] if os.access(SSHD, os.X_OK) else ["sshd (openssh-server)"]
    missing += [tool for tool in ("ssh", "ssh-keygen", "rsync", "unshare", "mount") if not shutil.which(tool)]
    return missing


def can_isolate_nodes() -> str | None:
    """None when this process may make mount namespaces (root, and the kernel allows it); else why not."""
    if os.geteuid() != 0:
        return "needs root: each node's home is a bind mount in its own mount namespace, its sshd on port 22"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount failed: {probe.stderr.strip() or probe.returncode}"
    return None


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A TCP port that nothing listens on at any of ``hosts``."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((hosts[0], 0))
            port = sock.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
            return port
        except OSError:
            continue
    raise ClusterError(f"no port is free on all of {', '.join(hosts)}")


def free_ports(host: str, count: int) -> list[int]:
    """``count`` different TCP ports that nothing listens on at ``host``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port((host,))
        if port not in ports:
            ports.append(port)
    return ports


def free_block(count: int) -> list[str]:
    """``count`` loopback addresses ``127.A.B.1``, ``127.A.B.2``, ... (A, B random) whose port 22 is free."""
    for _ in range(50):
        a, b = random.randint(1, 254), random.randint(0, 255)
        ips = [f"127.{a}.{b}.{i + 1}" for i in range(count)]
        try:
            for ip in ips:
                with socket.socket() as sock:
                    sock.bind((ip, 22))
            return ips
        except OSError:
            continue
    raise ClusterError("no block of loopback addresses with port 22 free")


def substitute(command: str, old: str, new: str) -> str:
    if old not in command:
        raise ClusterError(f"cluster.local.yaml changed: {old!r} is no longer in {command!r}; update {__file__}")
    return command.replace(old, new)


@dataclass
class Node:
    name: str  # head, worker1, worker2, ...
    ip: str
    folder: Path  # <base>/nodes/<name>: sshd's files, the Ray temp dir, the home
    agent_port: int
    # The agents' other ports, fixed: with 0, each raylet waits for its agent to write the port it
    # chose into a file, and gives up (a fatal check) when a loaded machine starts the agent too slowly.
    grpc_port: int = 0
    metrics_port: int = 0
    runtime_env_port: int = 0
    sshd: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """This node's home as this process sees it (the node sees it at the user's home, ``/root``)."""
        return self.folder / "home"

    @property
    def ray_dir(self) -> Path:
        """The node's Ray temp dir: named in the command line of every Ray process of the node."""
        return self.folder / "ray"


class LoopbackCluster:
    """A head and ``workers`` worker nodes on loopback addresses; ``up()`` runs `ray up`, ``close()``
    tears everything down (processes, sshds, files). Use as a context manager.

    ``cpus``: node name -> the CPUs its ``ray start`` declares (default 1 each); ``resources``: node
    name -> its custom resources (default: the head's from the file, ``activeda_trial: 1000``; none on
    the workers). ``node_env``: extra environment for every process of every node (e.g. S3 credentials).
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        cpus: dict[str, int] | None = None,
        resources: dict[str, dict] | None = None,
        node_env: dict[str, str] | None = None,
        python: str = sys.executable,
        name: str | None = None,
    ):
        self.python = python
        self.venv_bin = Path(python).parent
        self.user = getpass.getuser()
        self.name = name or f"activeda-loopback-{secrets.token_hex(4)}"
        # Short: Ray's Unix sockets live under it and socket paths are limited to 107 characters.
        self.base = Path(tempfile.mkdtemp(prefix="adt-", dir="/tmp"))
        self.home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # every node's home, as the node sees it
        # The interpreter's installation, where it lives under the home (pyenv): nodes need it too.
        prefixes = {
            Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.prefix, Path(python).resolve().parent.parent)
        }
        self.carried = sorted(p for p in prefixes if p.is_relative_to(self.home) and p != self.home)
        ips = free_block(workers + 1)
        self.nodes = [
            Node("head" if i == 0 else f"worker{i}", ip, self.base / "nodes" / ("head" if i == 0 else f"worker{i}"), 0)
            for i, ip in enumerate(ips)
        ]
        for node in self.nodes:
            node.agent_port, node.grpc_port, node.metrics_port, node.runtime_env_port = free_ports(node.ip, 4)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.client_port = free_port()
        self.mlflow_port = free_port()
        self.cpus = {n.name: 1 for n in self.nodes} | (cpus or {})
        self.resources = {n.name: {} for n in self.nodes} | {"head": {"activeda_trial": 1000}} | (resources or {})
        self.node_env = node_env or {}
        self.config_path = self.base / "cluster.yaml"
        self.client_env = {
            **os.environ,
            "RAY_TMPDIR": str(self.base / "client"),
            "TMPDIR": str(self.base / "client"),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.client_env.pop("RAY_ADDRESS", None)
        self.timings: dict[str, float] = {}
        self._stopper = _stopper()
        # A cpuacct cgroup (v1) for every process of the nodes, when the machine has one: the CPU
        # seconds the cluster used, a figure that does not depend on what else the machine runs.
        self.cgroup: Path | None = None

    # --- set-up -----------------------------------------------------------------------------------
    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_file(self) -> Path:
        return self.base / "token"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self) -> None:
        """Keys, the token, each node's folders and its sshd (not Ray yet)."""
        (self.base / "client").mkdir()
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        for key in ("host_key", "user_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"loopback-{key}", "-f", str(self.base / key)],
                check=True,
            )
        shutil.copy(self.base / "user_key.pub", self.base / "authorized_keys")
        try:  # Debian's sshd insists on its privilege-separation directory
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        except PermissionError:
            pass
        cgroup = Path("/sys/fs/cgroup/cpuacct") / self.base.name
        try:
            cgroup.mkdir()
            self.cgroup = cgroup
        except OSError:
            self.cgroup = None
        for node in self.nodes:
            self._start_sshd(node)
        for node in self.nodes:
            self._wait_for_sshd(node)

    def _start_sshd(self, node: Node) -> None:
        node.home.mkdir(parents=True)
        node.ray_dir.mkdir()
        node.env = {
            "RAY_TMPDIR": str(node.folder),
            "ACTIVEDA_NODE_IP": node.ip,
            "ACTIVEDA_NODE_AGENT_PORT": str(node.agent_port),
            "ACTIVEDA_NODE_PORTS": (
                f"--dashboard-agent-grpc-port={node.grpc_port} --metrics-export-port={node.metrics_port} "
                f"--runtime-env-agent-port={node.runtime_env_port}"
            ),
            MARK: str(self.base),
            # The dashboard agent of each node reads every process of the machine for its node view,
            # every 5 s by default: a cost three nodes on one shared machine need not pay so often.
            "REPORTER_UPDATE_INTERVAL_MS": "60000",
            **self.node_env,
        }
        # What this node's `ray start` declares (the start commands read these files).
        (node.home / ".loopback").mkdir()
        (node.home / ".loopback" / "cpus").write_text(str(self.cpus[node.name]))
        (node.home / ".loopback" / "resources").write_text(json.dumps(self.resources[node.name]))
        # Ray runs every command through `bash -i`, which reads ~/.bashrc: token auth on, and `ray stop`
        # (which would stop every Ray of the machine) made to stop this node's Ray only.
        (node.home / ".bashrc").write_text(
            "export RAY_AUTH_MODE=token\n"
            # What scripts/cluster_setup.sh gives a real node: the venv first on PATH, the project importable.
            f'export PATH="{self.venv_bin}:$PATH" PYTHONPATH="$HOME/activeda"\n'
            f'ray() {{ if [ "$1" = stop ]; then "{self.python}" "{STOP_PROCESSES}" "{node.ray_dir}"; '
            f'else "{self.venv_bin}/ray" "$@"; fi; }}\n'
        )
        config = node.folder / "sshd_config"
        config.write_text(
            "Port 22\n"
            f"ListenAddress {node.ip}\n"
            f"HostKey {self.base}/host_key\n"
            f"PidFile {node.folder}/sshd.pid\n"
            f"AuthorizedKeysFile {self.base}/authorized_keys\n"
            f"AllowUsers {self.user}\n"
            "StrictModes no\n"  # the key files live under /tmp
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "X11Forwarding no\n"
            "MaxSessions 50\n"
            "MaxStartups 50\n"
            "SetEnv " + " ".join(f'"{k}={v}"' for k, v in node.env.items()) + "\n"  # quoted: values with spaces
        )
        # The node's own mount namespace: the user's home is the node's own folder there, and only there.
        # What this machine's Python needs from the real home (pyenv keeps the interpreter there) is
        # bound into the node's folder first, read-only, so the venv keeps working on the node.
        script = ["set -e"]
        for path in self.carried:
            inside = node.home / path.relative_to(self.home)
            inside.mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(inside))}")
            script.append(f"mount -o remount,bind,ro {shlex.quote(str(inside))}")
        script.append(f"mount --rbind {shlex.quote(str(node.home))} {shlex.quote(str(self.home))}")
        script.append(f"exec {SSHD} -D -f {shlex.quote(str(config))} -E {shlex.quote(str(node.folder / 'sshd.log'))}")
        node.sshd = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
            env={**os.environ, MARK: str(self.base)},
        )
        if self.cgroup is not None:  # before sshd forks anything: every session inherits it
            try:
                (self.cgroup / "cgroup.procs").write_text(str(node.sshd.pid))
            except OSError:
                pass

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by every process of the nodes (None without a cpuacct cgroup)."""
        try:
            return int((self.cgroup / "cpuacct.usage").read_text()) / 1e9 if self.cgroup else None
        except (OSError, ValueError):
            return None

    def _wait_for_sshd(self, node: Node) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if node.sshd.poll() is not None:
                log = node.folder / "sshd.log"
                raise ClusterError(
                    f"sshd of {node.name} exited: {log.read_text()[-2000:] if log.exists() else node.sshd.returncode}"
                )
            try:
                socket.create_connection((node.ip, 22), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise ClusterError(f"sshd of {node.name} did not listen on {node.ip}:22 within 30 s")

    def write_config(self, source: Path = ROOT / "cluster.local.yaml", mounts: dict[str, str] | None = None) -> Path:
        """``source`` (cluster.local.yaml), pointed at these nodes and kept off other Rays' ports.

        The file's setup command (a venv per node, pip install) is replaced by a check that the
        synced working tree imports with this machine's venv (installing into that venv would
        re-point it at the synced copy). Every other command runs as the file has it, with these
        substitutions (each checks that the text it replaces is still there): the venv's path, the
        node's address, ports and size, and ``ray stop`` (see the module docstring).
        """
        cfg = yaml.safe_load(source.read_text())
        cfg["cluster_name"] = self.name
        cfg["provider"] = {**cfg["provider"], "head_ip": self.head.ip, "worker_ips": [n.ip for n in self.workers]}
        cfg["auth"] = {"ssh_user": self.user, "ssh_private_key": str(self.base / "user_key")}
        file_mounts = {}
        for remote, local in cfg["file_mounts"].items():
            if remote == "~/.ray/auth_token":
                file_mounts[remote] = str(self.token_file)
            elif local == f"./{source.name}" and remote == f"~/activeda/{source.name}":
                file_mounts[remote] = str(self.config_path)  # the file that describes this very cluster
            elif local.startswith("./") and remote == f"~/activeda/{local[2:]}":
                file_mounts[remote] = str(ROOT / local[2:])
            else:
                raise ClusterError(f"{source.name}: a file mount this harness does not know: {remote}: {local}")
        file_mounts.update(mounts or {})
        cfg["file_mounts"] = file_mounts

        (setup,) = cfg["setup_commands"]
        substitute(setup, "scripts/cluster_setup.sh", "")
        cfg["setup_commands"] = [
            f"cd ~/activeda && PYTHONPATH=$HOME/activeda {self.python} -c "
            '\'import orchestrator, ray; print("activeda-from", orchestrator.__path__[0], "ray", ray.__version__)\''
        ]

        venv = "~/activeda-venv/bin/"
        stop = f"{self.python} {STOP_PROCESSES} $RAY_TMPDIR/ray"
        own = (
            "--node-ip-address=$ACTIVEDA_NODE_IP --temp-dir=$RAY_TMPDIR/ray "
            "--dashboard-agent-listen-port=$ACTIVEDA_NODE_AGENT_PORT $ACTIVEDA_NODE_PORTS "
            f"--min-worker-port=0 --max-worker-port=0 --object-store-memory={OBJECT_STORE_BYTES} "
            '--num-cpus=$(cat ~/.loopback/cpus) --resources="$(cat ~/.loopback/resources)"'
        )
        head = []
        for command in cfg["head_start_ray_commands"]:
            if command.strip() == f"{venv}ray stop":
                command = stop
            elif "ray start --head" in command:
                command = substitute(command, venv, f"{self.venv_bin}/")
                command = substitute(command, "RAY_AUTH_MODE=token ", "RAY_AUTH_MODE=token PYTHONPATH=$HOME/activeda ")
                command = substitute(command, "--port=6379", f"--port={self.gcs_port}")
                command = substitute(command, "--object-manager-port=8076", "--object-manager-port=0")
                command = substitute(command, """--resources='{"activeda_trial": 1000}'""", "")
                substitute(command, "--include-dashboard=true --dashboard-host=127.0.0.1", "")  # the state API needs it
                command += f" {own} --dashboard-port={self.dashboard_port} --ray-client-server-port={self.client_port}"
            elif "mlflow server" in command:
                command = substitute(command, venv, f"{self.venv_bin}/")
                command = substitute(command, "--port 5000", f"--port {self.mlflow_port}")
                command = substitute(command, "$HOME/mlflow-artifacts'", "$HOME/mlflow-artifacts --workers 1'")
            else:
                raise ClusterError(f"{source.name} has a head start command this harness does not know: {command}")
            head.append(command)
        cfg["head_start_ray_commands"] = head

        workers = []
        for command in cfg["worker_start_ray_commands"]:
            if command.strip() == f"{venv}ray stop":
                command = stop
            elif "ray start --address" in command:
                command = substitute(command, venv, f"{self.venv_bin}/")
                command = substitute(command, "RAY_AUTH_MODE=token ", "RAY_AUTH_MODE=token PYTHONPATH=$HOME/activeda ")
                command = substitute(command, "$RAY_HEAD_IP:6379", f"$RAY_HEAD_IP:{self.gcs_port}")
                command = substitute(command, "--object-manager-port=8076", "--object-manager-port=0")
                command += f" {own}"
            else:
                raise ClusterError(f"{source.name} has a worker start command this harness does not know: {command}")
            workers.append(command)
        cfg["worker_start_ray_commands"] = workers
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return self.config_path

    # --- running ray commands -------------------------------------------------------------------
    def ray(self, *args: str, timeout: float = 600, log: Path | None = None) -> subprocess.CompletedProcess:
        """``ray ARGS`` from this machine (the cluster's client), its output kept in ``log``."""
        ray = self.venv_bin / "ray"
        command = [str(ray)] if ray.exists() else [self.python, "-m", "ray.scripts.scripts"]
        started = time.monotonic()
        try:
            result = subprocess.run(
                [*command, *args], capture_output=True, text=True, timeout=timeout, env=self.client_env, cwd=ROOT
            )
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            if log is not None:
                log.write_text(out)
            raise ClusterError(f"ray {' '.join(args[:2])} timed out after {timeout:.0f} s:\n{out[-4000:]}") from None
        if log is not None:
            log.write_text(f"$ ray {' '.join(args)}\n{result.stdout}\n--- stderr ---\n{result.stderr}")
        self.timings[f"ray_{args[0]}_s"] = self.timings.get(f"ray_{args[0]}_s", 0) + time.monotonic() - started
        return result

    def up(self, log: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray up` (the head), then wait until the head's autoscaler has started every worker."""
        args = ["up", "-y", "--no-config-cache", "--disable-usage-stats", "--log-style", "record"]
        result = self.ray(*args, str(self.config_path), timeout=timeout, log=log)
        if result.returncode != 0:
            raise ClusterError(f"ray up failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        started = time.monotonic()
        self.wait_for_nodes(len(self.nodes), timeout=timeout)
        self.timings["workers_up_s"] = time.monotonic() - started
        return result

    def exec(self, command: str, log: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray exec` of a shell command on the head."""
        args = ["exec", "--no-config-cache", "--disable-usage-stats", "--log-style", "record"]
        return self.ray(*args, str(self.config_path), command, timeout=timeout, log=log)

    def exec_background(self, command: str, log: Path) -> subprocess.Popen:
        """`ray exec` started in the background (its own process group); output to ``log``."""
        ray = self.venv_bin / "ray"
        args = ["exec", "--no-config-cache", "--disable-usage-stats", "--log-style", "record"]
        handle = open(log, "w")
        try:
            return subprocess.Popen(
                [str(ray), *args, str(self.config_path), command],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.client_env,
                cwd=ROOT,
                start_new_session=True,
            )
        finally:
            handle.close()

    # --- Ray's records --------------------------------------------------------------------------
    def state(self, kind: str, timeout: float = 60, **filters) -> list[dict]:
        """Ray's state API (``ray.util.state.list_<kind>``: nodes, actors, tasks) through the head's
        dashboard, in a subprocess that holds the cluster's token (this process keeps its own Ray
        settings): every record, dead ones included, as dicts."""
        code = (
            "import json, sys\n"
            "from ray.util import state\n"
            "kind, address, filters = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
            "records = getattr(state, f'list_{kind}')(address=address, filters=[tuple(f) for f in filters],"
            " limit=10000, detail=True, raise_on_missing_output=False, timeout=60)\n"
            "print(json.dumps([r if isinstance(r, dict) else r.__dict__ for r in records], default=str))\n"
        )
        env = {
            **self.client_env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
        }
        result = subprocess.run(
            [self.python, "-c", code, kind, self.dashboard_url, json.dumps([[k, "=", v] for k, v in filters.items()])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if result.returncode != 0:
            raise ClusterError(f"list_{kind} failed: {result.stderr.strip()[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, count: int, timeout: float = 600) -> list[dict]:
        """Wait until ``count`` nodes are alive (the head's autoscaler starts the workers after `ray up`)."""
        deadline = time.monotonic() + timeout
        alive: list[dict] = []
        while time.monotonic() < deadline:
            try:
                alive = [n for n in self.state("nodes") if n["state"] == "ALIVE"]
            except (ClusterError, subprocess.TimeoutExpired):
                alive = []  # the dashboard may not answer yet
            if len(alive) >= count:
                return alive
            time.sleep(2)
        monitor = sorted(self.head.ray_dir.glob("session_*/logs/monitor.*"))
        tail = "\n".join(p.read_text(errors="replace")[-3000:] for p in monitor)
        raise ClusterError(
            f"{len(alive)} of {count} nodes alive after {timeout:.0f} s "
            f"({', '.join(n['node_ip'] for n in alive) or 'none'}); the head's autoscaler says:\n{tail}"
        )

    def node_ids(self) -> dict[str, str]:
        """Ray node id -> node name (head, worker1, ...), for every node Ray has known, dead ones too."""
        by_ip = {n.ip: n.name for n in self.nodes}
        return {n["node_id"]: by_ip.get(n["node_ip"], n["node_ip"]) for n in self.state("nodes")}

    # --- faults ---------------------------------------------------------------------------------
    def kill_node(self, name: str) -> list[str]:
        """SIGKILL every Ray process of one node at once (raylet, its workers, its agents), as when the
        machine dies; returns them ('pid command')."""
        node = self.node(name)
        found = self._stopper.find_processes([str(node.ray_dir)])
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return [f"{pid} {cmd[:120]}" for pid, cmd in sorted(found.items())]

    # --- teardown -------------------------------------------------------------------------------
    def _marked(self) -> dict[int, str]:
        """Processes naming this cluster's folder, carrying its mark, or descending from either."""
        found = self._stopper.find_processes([str(self.base)])
        needle = f"{MARK}={self.base}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in found or int(entry) == os.getpid():
                continue
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        return found

    def leftovers(self) -> list[str]:
        return [f"{pid} {cmd[:160]}" for pid, cmd in sorted(self._marked().items())]

    def keep_logs(self, dest: Path) -> None:
        """What is needed to debug a failed run, copied out before the folder goes."""
        for node in self.nodes:
            folder = dest / node.name
            folder.mkdir(parents=True, exist_ok=True)
            for path in [
                node.folder / "sshd.log",
                node.home / "mlflow-server.log",
                self.config_path,
                *sorted(node.ray_dir.glob("session_*/logs/*.err")),
                *sorted(node.ray_dir.glob("session_*/logs/*.out")),
                *sorted(node.ray_dir.glob("session_*/logs/*.log")),
            ]:
                try:
                    if path.is_file() and path.stat().st_size < 5_000_000:
                        shutil.copy(path, folder / path.name)
                except OSError:
                    pass

    def close(self, log_dir: Path | None = None, keep_logs: bool = False) -> list[str]:
        """`ray down`, then every process of the cluster, the sshds, and the folder; returns what
        was still running after all that (empty when the teardown was clean)."""
        started = time.monotonic()
        if self.config_path.exists():
            try:
                self.ray(
                    "down",
                    "-y",
                    "--log-style",
                    "record",
                    str(self.config_path),
                    timeout=180,
                    log=log_dir and log_dir / "ray-down.log",
                )
            except ClusterError:
                pass
        for node in self.nodes:  # `ray stop` of each node's own Ray
            self._stopper.stop_processes([str(node.ray_dir)], grace_s=5)
        if keep_logs and log_dir is not None:
            self.keep_logs(log_dir / "cluster-logs")
        # Then the rest: ssh clients and proxies, MLflow, sshd sessions, anything carrying the mark.
        for _ in range(2):
            marked = self._marked()
            for pid in marked:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in marked):
                time.sleep(0.2)
            for pid in marked:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for node in self.nodes:
            if node.sshd is not None and node.sshd.poll() is None:
                node.sshd.kill()
            if node.sshd is not None:
                try:
                    node.sshd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        control = (
            Path("/tmp")
            / f"ray_ssh_{hashlib.sha256(self.user.encode()).hexdigest()[:10]}"
            / hashlib.sha256(self.name.encode()).hexdigest()[:10]
        )
        shutil.rmtree(control, ignore_errors=True)
        try:
            control.parent.rmdir()  # shared by every `ray up` of this user: only if empty
        except OSError:
            pass
        for suffix in ("state", "lock"):  # the local provider's record of the nodes
            Path(f"/tmp/cluster-{self.name}.{suffix}").unlink(missing_ok=True)
        left = self.leftovers()
        cpu = self.cpu_seconds()
        if cpu is not None:
            self.timings["nodes_cpu_s"] = cpu
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()  # empty once every process of the nodes has exited
            except OSError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)
        self.timings["teardown_s"] = time.monotonic() - started
        return left

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each node declares (default 1)")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"error: missing {', '.join(missing)}; run scripts/install_cluster_test_deps.sh", file=sys.stderr)
        return 2
    why = can_isolate_nodes()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    cluster = LoopbackCluster(
        args.workers, cpus={f"worker{i + 1}": args.cpus for i in range(args.workers)} | {"head": args.cpus}
    )
    try:
        cluster.start()
        cluster.write_config()
        cluster.up()
        print(
            f"cluster '{cluster.name}' is up: head {cluster.head.ip}, workers {', '.join(n.ip for n in cluster.workers)}"
        )
        print(f"  RAY_TMPDIR={cluster.base}/client ray exec {cluster.config_path} 'ray status'")
        print(f"  dashboard: {cluster.dashboard_url} (token in {cluster.token_file})")
        print("Ctrl-C tears it down.")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        left = cluster.close()
        if left:
            print(f"left running: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
