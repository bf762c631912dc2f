"""`ray up` for real: a `local`-provider cluster on this machine over a loopback sshd, the smoke sweep
run on it with `ray exec`, its result read back from MLflow, and everything torn down.

Marked ``cluster`` (run it with ``pytest -m cluster tests/test_ray_up.py``). It needs sshd, ssh and
rsync; when they are missing it runs ``scripts/install_cluster_test_deps.sh`` (apt-get) and is skipped
only where that is impossible (no apt-get, or neither root nor sudo). As root it is skipped:
tests/test_cluster_nodes.py then brings up the same file with a head and two workers and checks all
that this test checks (this one is for machines where that cannot run), and the suite pays for one
cluster, not two.

How the cluster is kept to itself on a machine that other people's Ray may share:

* sshd: its own config, host key, authorized key and pid file in a fresh temporary directory, bound to
  127.0.0.1 on a free port. The local provider has no SSH port setting, so the cluster file reaches it
  through ``auth.ssh_proxy_command`` (a small stdin/stdout <-> TCP bridge; Ray passes the ProxyCommand
  to both ssh and rsync). Its sessions get ``HOME`` and ``RAY_TMPDIR`` in that directory (sshd
  ``SetEnv``), so the synced tree, Ray's bootstrap files and the token land there, and the cluster's
  Ray uses its own temp dir, sockets and address file (``--address auto`` finds this cluster).
* The cluster file is cluster.local.yaml with host, user, key, proxy and paths substituted, the setup
  command replaced by an import check (the venv running this test is used; installing into it would
  re-point it at the synced copy), the dashboard off, and Ray's and MLflow's fixed ports (6379, 8076,
  52365, 5000) replaced by free ones. Every substitution checks that the text it replaces is still in
  the file. The head's start commands, including the MLflow server's, run as the file has them.
* ``ray stop`` stops every Ray of the machine, so it never runs here: the head's start commands drop it,
  the sessions' ~/.bashrc turns the ``ray stop`` that ``ray down`` sends into
  ``scripts/stop_processes.py <this cluster's Ray temp dir>``, and teardown stops only processes that
  name this test's directories (and their descendants), then sshd by its pid.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALL_DEPS = ROOT / "scripts" / "install_cluster_test_deps.sh"
STOP_PROCESSES = ROOT / "scripts" / "stop_processes.py"
SSHD = "/usr/sbin/sshd"
PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent

RAY_UP_TIMEOUT_S = 600
SWEEP_TIMEOUT_S = 900

pytestmark = pytest.mark.cluster

PROXY = '''\
"""ProxyCommand for ssh: this process's stdin/stdout <-> a TCP connection to HOST PORT."""
import os, socket, sys, threading

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))


def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


threading.Thread(target=upstream, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
'''


def _stopper():
    spec = importlib.util.spec_from_file_location("stop_processes", STOP_PROCESSES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _have_deps() -> bool:
    return os.access(SSHD, os.X_OK) and all(shutil.which(tool) for tool in ("ssh", "ssh-keygen", "rsync"))


def ensure_deps() -> None:
    if _have_deps():
        return
    if not shutil.which("apt-get"):
        pytest.skip("needs sshd, ssh and rsync; they are missing and apt-get is not available to install them")
    if os.geteuid() != 0 and not shutil.which("sudo"):
        pytest.skip("needs sshd, ssh and rsync; they are missing and apt-get needs root or sudo")
    result = subprocess.run(["bash", str(INSTALL_DEPS)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and _have_deps(), (
        f"{INSTALL_DEPS.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> list[str]:
    ray = VENV_BIN / "ray"
    return [str(ray)] if ray.exists() else [PYTHON, "-m", "ray.scripts.scripts"]


def substitute(command: str, old: str, new: str) -> str:
    assert old in command, f"cluster.local.yaml changed: {old!r} is no longer in {command!r}; update this test"
    return command.replace(old, new)


def start_sshd(base: Path, port: int, user: str):
    try:  # Debian's sshd insists on its privilege-separation directory
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    except PermissionError:
        pass  # not root: sshd says what it misses in its log
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"activeda-test-{name}", "-f", str(base / name)],
            check=True,
        )
    shutil.copy(base / "user_key.pub", base / "authorized_keys")
    (base / "sshd_config").write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {base}/host_key\n"
        f"PidFile {base}/sshd.pid\n"
        f"AuthorizedKeysFile {base}/authorized_keys\n"
        f"AllowUsers {user}\n"
        "StrictModes no\n"  # the key files live under /tmp
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "X11Forwarding no\n"
        "MaxSessions 30\n"
        f"SetEnv HOME={base}/home RAY_TMPDIR={base}\n"
    )
    sshd = subprocess.Popen([SSHD, "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert sshd.poll() is None, f"sshd exited: {(base / 'sshd.log').read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sshd
        except OSError:
            time.sleep(0.2)
    raise AssertionError("sshd did not start listening within 30 s")


def write_cluster_config(base: Path, port: int, user: str, name: str, mlflow_port: int) -> Path:
    """cluster.local.yaml, pointed at the loopback sshd and kept off the ports other Rays may hold."""
    cfg = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    cfg["cluster_name"] = name
    cfg["provider"] = {**cfg["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    cfg["auth"] = {
        "ssh_user": user,
        "ssh_private_key": str(base / "user_key"),
        "ssh_proxy_command": f"{PYTHON} {base}/proxy.py 127.0.0.1 {port}",
    }
    mounts = {}
    for remote, local in cfg["file_mounts"].items():
        if remote == "~/.ray/auth_token":
            mounts[remote] = str(base / "token")
        else:  # ./X of the working tree -> ~/activeda/X
            assert local.startswith("./") and remote == f"~/activeda/{local[2:]}", (remote, local)
            mounts[remote] = str(ROOT / local[2:])
    assert "~/.ray/auth_token" in mounts and "~/activeda/orchestrator" in mounts, mounts
    cfg["file_mounts"] = mounts

    (setup,) = cfg["setup_commands"]
    assert "scripts/cluster_setup.sh" in setup, setup
    cfg["setup_commands"] = [
        f"cd ~/activeda && PYTHONPATH=$HOME/activeda {PYTHON} -c "
        '\'import orchestrator, ray; print("activeda-from", orchestrator.__path__[0], "ray", ray.__version__)\''
    ]

    start = []
    venv = "~/activeda-venv/bin/"
    for command in cfg["head_start_ray_commands"]:
        if command.strip().endswith("ray stop"):
            continue  # stops every Ray of the machine
        if "ray start --head" in command:
            command = substitute(command, venv, f"{VENV_BIN}/")
            command = substitute(command, "RAY_AUTH_MODE=token ", "RAY_AUTH_MODE=token PYTHONPATH=$HOME/activeda ")
            command = substitute(command, "--port=6379", "--port=0")
            command = substitute(command, "--object-manager-port=8076", "--object-manager-port=0")
            command = substitute(
                command, "--include-dashboard=true --dashboard-host=127.0.0.1", "--include-dashboard=false"
            )
            assert """--resources='{"activeda_trial": 1000}'""" in command, command
            command += f" --dashboard-agent-listen-port={free_port()} --object-store-memory=500000000"
        elif "mlflow server" in command:
            command = substitute(command, venv, f"{VENV_BIN}/")
            command = substitute(command, "--host 127.0.0.1 --port 5000", f"--host 127.0.0.1 --port {mlflow_port}")
            command = substitute(command, "$HOME/mlflow-artifacts'", "$HOME/mlflow-artifacts --workers 1'")
        else:
            raise AssertionError(f"cluster.local.yaml has a head start command this test does not know: {command}")
        start.append(command)
    assert len(start) == 2, cfg["head_start_ray_commands"]
    cfg["head_start_ray_commands"] = start

    path = base / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_session_files(base: Path) -> None:
    home = base / "home"
    home.mkdir()
    (base / "proxy.py").write_text(PROXY)
    (base / "token").write_text(secrets.token_hex(32))
    (base / "token").chmod(0o600)
    # Ray sources ~/.bashrc in every command it runs on the head.
    (home / ".bashrc").write_text(
        "export RAY_AUTH_MODE=token\n"
        "# `ray down` runs `ray stop`, which would stop every Ray on this machine: stop this cluster's only.\n"
        f'ray() {{ if [ "$1" = stop ]; then "{PYTHON}" "{STOP_PROCESSES}" "{base}/ray"; '
        f'else "{VENV_BIN}/ray" "$@"; fi; }}\n'
    )


def run_logged(args: list[str], log: Path, timeout: float, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        log.write_text(out)
        raise AssertionError(f"{' '.join(args[:3])} timed out after {timeout} s; output:\n{out[-4000:]}") from None
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result, time.monotonic() - started


def mlflow_server_cmdline(pid_file: Path, timeout: float = 20) -> str:
    """The command line of the process whose pid the head's MLflow command wrote."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "mlflow" in cmdline:
                return cmdline
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    log = pid_file.parent / "mlflow-server.log"
    raise AssertionError(
        f"no MLflow server running from {pid_file}; log: {log.read_text()[-2000:] if log.exists() else 'none'}"
    )


def keep_logs(base: Path, dest: Path) -> None:
    """What is needed to debug a failed run, copied out before the temporary directory goes."""
    dest.mkdir(exist_ok=True)
    for path in [
        base / "sshd.log",
        base / "home" / "mlflow-server.log",
        base / "cluster.yaml",
        *sorted((base / "ray").glob("session_*/logs/*.err")),
        *sorted((base / "ray").glob("session_*/logs/*.out")),
    ]:
        try:
            if path.is_file() and path.stat().st_size < 5_000_000:
                shutil.copy(path, dest / path.name)
        except OSError:
            pass


def three_node_test_runs_here() -> bool:
    """Whether tests/test_cluster_nodes.py can run on this machine (root, mount namespaces): it
    brings up cluster.local.yaml with two workers and checks all that this test checks."""
    spec = importlib.util.spec_from_file_location("loopback_cluster", ROOT / "scripts" / "loopback_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return shutil.which("unshare") is not None and module.can_isolate_nodes() is None


def test_ray_up_runs_the_smoke_sweep_on_a_local_cluster(tmp_path):
    if three_node_test_runs_here():
        pytest.skip("tests/test_cluster_nodes.py runs `ray up` of cluster.local.yaml with two workers here")
    ensure_deps()
    stopper = _stopper()
    test_started = time.monotonic()
    user = getpass.getuser()
    name = f"activeda-test-{secrets.token_hex(4)}"
    # Short: Ray's Unix sockets live under it and socket paths are limited to 107 characters.
    base = Path(tempfile.mkdtemp(prefix="adt-", dir="/tmp"))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(base), "TMPDIR": str(base), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    timings: dict[str, float] = {}
    port, mlflow_port = free_port(), free_port()
    sshd = None
    cfg = None
    passed = False
    try:
        write_session_files(base)
        sshd = start_sshd(base, port, user)
        cfg = write_cluster_config(base, port, user, name, mlflow_port)

        up, timings["ray_up_s"] = run_logged(
            [*ray_cli(), "up", "-y", "--no-config-cache", "--disable-usage-stats", "--log-style", "record", str(cfg)],
            tmp_path / "ray-up.log",
            RAY_UP_TIMEOUT_S,
            env,
        )
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        # The setup check ran the synced working tree, not the checkout.
        assert f"activeda-from {base}/home/activeda" in up.stdout + up.stderr, up.stdout[-3000:]

        # The file's MLflow command started a tracking server in the background: bound to 127.0.0.1, its
        # sqlite store in the home directory. Waiting for it to answer takes 30-60 s of a loaded CPU
        # here, so the process is checked and stopped, and the sweep logs to a sqlite store instead.
        server = mlflow_server_cmdline(base / "home" / "mlflow-server.pid")
        for part in (
            "mlflow server",
            f"--host 127.0.0.1 --port {mlflow_port}",
            f"--backend-store-uri sqlite:///{base}/home/mlflow.db",
        ):
            assert part in server, server
        stopper.stop_processes([f"{base}/home/mlflow"])

        store = out / "mlflow.db"
        sweep = (
            f"cd ~/activeda && PYTHONPATH=$HOME/activeda {PYTHON} -m orchestrator.sweep --smoke "
            f"--address auto --output-dir {out} --tracking-uri sqlite:///{store}"
        )
        result, timings["sweep_s"] = run_logged(
            [
                *ray_cli(),
                "exec",
                "--no-config-cache",
                "--disable-usage-stats",
                "--log-style",
                "record",
                str(cfg),
                sweep,
            ],
            tmp_path / "ray-exec.log",
            SWEEP_TIMEOUT_S,
            env,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"the sweep failed on the cluster:\n{output[-6000:]}"
        assert "2 trial(s), 0 failed" in output, output[-4000:]

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiment = client.get_experiment_by_name("smoke")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if r.data.tags.get("activeda.kind") == "trial"]
        assert len(children) == 2, [r.data.tags for r in runs]
        for run in children:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "target/miou")
            assert sorted(m.step for m in history) == [0, 1]  # round 0 (source only) and round 1
            assert all(0.0 <= m.value <= 1.0 for m in history)
        passed = True
    finally:
        started = time.monotonic()
        if cfg is not None:
            try:
                run_logged(
                    [*ray_cli(), "down", "-y", "--log-style", "record", str(cfg)], tmp_path / "ray-down.log", 180, env
                )
            except AssertionError:
                pass
        # `ray stop`, for this cluster only: every process naming its Ray temp dir.
        stopper.stop_processes([f"{base}/ray"])
        if not passed:
            keep_logs(base, tmp_path / "cluster-logs")
        # Then everything else this test started: ssh clients and proxies, the sweep if it still runs,
        # MLflow, and sshd with its sessions (by pid, and by its config path).
        stopper.stop_processes([str(base), str(out)])
        if sshd is not None:
            sshd.terminate()
            try:
                sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(timeout=10)
        control = (
            Path("/tmp")
            / f"ray_ssh_{hashlib.sha256(user.encode()).hexdigest()[:10]}"
            / hashlib.sha256(name.encode()).hexdigest()[:10]
        )
        shutil.rmtree(control, ignore_errors=True)
        try:
            control.parent.rmdir()  # shared by every `ray up` of this user: only if empty
        except OSError:
            pass
        leftovers = stopper.find_processes([str(base), str(out)])
        shutil.rmtree(base, ignore_errors=True)
        timings["teardown_s"] = time.monotonic() - started
        timings["total_s"] = time.monotonic() - test_started
        (tmp_path / "timings.json").write_text(json.dumps(timings, indent=1))
        print(f"\n[cluster test] timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert not leftovers, f"processes left running: {leftovers}"
