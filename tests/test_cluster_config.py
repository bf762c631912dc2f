"""The `ray up` cluster files: Ray's own schema accepts them, broken copies are refused in one line, what
their node types offer, and that they are secure by default. Offline: nothing is started."""

import re
import subprocess
import sys

import pytest
import tomllib
import yaml

from conftest import ROOT, run_cli
from orchestrator.cluster.cluster_file import (
    ClusterConfigError,
    node_shapes,
    ray_start_resources,
    validate_cluster_file,
)
from orchestrator.cluster.ray_connection import TRIAL_RESOURCE

FILES = ["cluster.yaml", "cluster.local.yaml"]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def ray_start_commands(cfg):
    commands = cfg.get("head_start_ray_commands", []) + cfg.get("worker_start_ray_commands", [])
    return [c for c in commands if "ray start" in c]


@pytest.mark.parametrize("name", FILES)
def test_file_passes_rays_own_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(name)))  # what `ray up` does before anything else
    prepared = validate_cluster_file(ROOT / name)
    assert prepared["cluster_name"] == load(name)["cluster_name"]


def test_cli_validates_the_shipped_files(tmp_path):
    result = run_cli("orchestrator.cluster", "validate", *(str(ROOT / n) for n in FILES), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ok: {ROOT / n}" for n in FILES]


def _broken(tmp_path, name, edit):
    text = (ROOT / name).read_text()
    path = tmp_path / f"broken-{name}"
    path.write_text(edit(text))
    return path


def _drop_line(prefix):
    return lambda text: "\n".join(line for line in text.splitlines() if not line.startswith(prefix)) + "\n"


BROKEN = [
    (
        "cluster.yaml",
        lambda t: t.replace("resources: {activeda_trial: 1000}", "resources: {activeda_trial: lots}"),
        "key 'available_node_types.head.resources.activeda_trial': must be an integer, got str 'lots'",
    ),
    (
        "cluster.yaml",
        lambda t: re.sub(r"^max_workers: 10\b", "max_workers: ten", t, flags=re.M),
        "key 'max_workers': must be an integer, got str 'ten'",
    ),
    (
        "cluster.yaml",
        lambda t: t.replace("  type: aws", "  type: amazon"),
        "key 'provider.type': unknown provider 'amazon'; choose one of: ",
    ),
    (
        "cluster.local.yaml",
        lambda t: t.replace("  type: local", "  type: onprem"),
        "key 'provider.type': unknown provider 'onprem'",
    ),
    (
        "cluster.yaml",
        lambda t: t.replace("provider:\n  type: aws", "provider: {type: aws\n  type: aws"),
        "malformed YAML at line",
    ),
    ("cluster.local.yaml", lambda t: t + "\nsetup_commands: [unclosed\n", "malformed YAML at line"),
    ("cluster.yaml", _drop_line("head_node_type:"), "missing key 'head_node_type' (required with available_node_types"),
    (
        "cluster.yaml",
        lambda t: t.replace("head_node_type: head", "head_node_type: cpu_head"),
        "key 'head_node_type': 'cpu_head' is not one of available_node_types",
    ),
    (
        "cluster.yaml",
        lambda t: t.replace("idle_timeout_minutes:", "idle_timeout_minute:"),
        "unknown key 'idle_timeout_minute' (did you mean 'idle_timeout_minutes'?)",
    ),
    (
        "cluster.yaml",
        lambda t: t.replace("  ssh_user: ubuntu", "  ssh_user: [ubuntu]"),
        "key 'auth.ssh_user': must be a string, got list ['ubuntu']",
    ),
    ("cluster.local.yaml", _drop_line("  head_ip:"), "missing key 'provider.head_ip'"),
    (
        "cluster.local.yaml",
        lambda t: t + "\nhead_node_type: head\navailable_node_types: {head: {resources: {}, node_config: {}}}\n",
        "key 'available_node_types': not supported by the local provider",
    ),
    ("cluster.yaml", lambda t: "- just\n- a list\n", "must be a YAML mapping of cluster keys, but is a list"),
]


@pytest.mark.parametrize("name, edit, expected", BROKEN)
def test_broken_copy_is_refused_in_one_line(tmp_path, name, edit, expected):
    path = _broken(tmp_path, name, edit)
    with pytest.raises(ClusterConfigError) as caught:
        validate_cluster_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cluster file '{path}': "), message
    assert expected in message, message
    assert len(message) < 400, message


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ClusterConfigError, match=r"^cluster file '.*nope.yaml': does not exist$"):
        validate_cluster_file(tmp_path / "nope.yaml")


def test_cli_prints_ok_or_one_line_error_and_exits_2(tmp_path):
    bad = _broken(tmp_path, "cluster.yaml", lambda t: t.replace("  type: aws", "  type: amazon"))
    good = ROOT / "cluster.yaml"
    result = run_cli("orchestrator.cluster", "validate", str(good), str(bad), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"ok: {good}"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cluster file '{bad}': key 'provider.type'"), result.stderr


def test_node_shapes_of_the_aws_file():
    shapes = {s["node_type"]: s for s in node_shapes(validate_cluster_file(ROOT / "cluster.yaml"))}
    assert set(shapes) == {"head", "gpu_single", "gpu_multi"}
    head, single, multi = shapes["head"], shapes["gpu_single"], shapes["gpu_multi"]
    assert head["head"] and not single["head"] and not multi["head"]
    assert head["resources"] == {"CPU": 8, "GPU": 0, TRIAL_RESOURCE: 1000}
    assert single["resources"] == {"CPU": 4, "GPU": 1} and single["instance_type"] == "g5.xlarge"
    assert multi["resources"] == {"CPU": 48, "GPU": 4}
    assert (single["min_workers"], single["max_workers"]) == (0, 8)
    # Same answer from the raw file as from the prepared config.
    assert node_shapes(load("cluster.yaml")) == node_shapes(validate_cluster_file(ROOT / "cluster.yaml"))


def test_node_shapes_unknown_instance_type_and_explicit_resources():
    cfg = load("cluster.yaml")
    cfg["available_node_types"]["gpu_single"]["node_config"]["InstanceType"] = "x9.huge"
    cfg["available_node_types"]["gpu_multi"]["resources"] = {"CPU": 40, "GPU": 8}
    shapes = {s["node_type"]: s for s in node_shapes(cfg)}
    assert shapes["gpu_single"]["resources"] == {"CPU": None, "GPU": None}
    assert shapes["gpu_multi"]["resources"] == {"CPU": 40, "GPU": 8}  # given resources win over the table


def test_node_shapes_of_the_local_file():
    shapes = node_shapes(validate_cluster_file(ROOT / "cluster.local.yaml"))
    head = [s for s in shapes if s["head"]]
    workers = [s for s in shapes if not s["head"]]
    assert len(head) == 1 and head[0]["resources"] == {"CPU": None, "GPU": None, TRIAL_RESOURCE: 1000}
    assert len(workers) == 1 and workers[0]["max_workers"] == len(load("cluster.local.yaml")["provider"]["worker_ips"])
    assert workers[0]["resources"] == {"CPU": None, "GPU": None}


def test_ray_start_resources_reads_flags():
    assert ray_start_resources(
        [
            "ray stop",
            "ulimit -n 65536; RAY_AUTH_MODE=token ~/v/bin/ray start --head --num-cpus=4 --num-gpus 2 "
            '--resources=\'{"activeda_trial": 1000, "disk": 1}\' --port=6379',
        ]
    ) == {"CPU": 4, "GPU": 2, "activeda_trial": 1000, "disk": 1}
    assert ray_start_resources(["ray start --address=$RAY_HEAD_IP:6379"]) == {}


@pytest.mark.parametrize("name", FILES)
def test_head_declares_the_trial_resource(name):
    head = [s for s in node_shapes(load(name)) if s["head"]]
    assert head[0]["resources"].get(TRIAL_RESOURCE, 0) >= 100
    workers = [s for s in node_shapes(load(name)) if not s["head"]]
    assert all(TRIAL_RESOURCE not in s["resources"] for s in workers)  # trials' own processes stay on the head


CREDENTIAL_PATTERNS = [
    r"-----BEGIN",
    r"PRIVATE KEY",
    r"AKIA[0-9A-Z]{16}",
    r"aws_secret_access_key",
    r"aws_access_key_id",
    r"aws_session_token",
    r"password\s*:",
    r"\b[0-9a-f]{32,}\b",
    r"\b[A-Za-z0-9+/]{40,}={0,2}",
]


@pytest.mark.parametrize("name", FILES)
def test_no_credentials_in_the_file(name):
    text = (ROOT / name).read_text()
    for pattern in CREDENTIAL_PATTERNS:
        assert not re.search(pattern, text), f"{name} matches {pattern!r}"
    auth = load(name).get("auth", {})
    assert set(auth) <= {"ssh_user", "ssh_private_key"}
    if "ssh_private_key" in auth:  # a path to a key file, never a key
        key = auth["ssh_private_key"]
        assert key.startswith(("~/", "/")) and "\n" not in key and len(key) < 200
    assert load(name)["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # a path, not the token


@pytest.mark.parametrize("name", FILES)
def test_secure_by_default(name):
    cfg = load(name)
    starts = ray_start_commands(cfg)
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    text = (ROOT / name).read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "0.0.0.0" not in text
    head_start = " ".join(c for c in ray_start_commands(cfg) if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    mlflow = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1 and "--host 127.0.0.1" in mlflow[0] and "sqlite:///$HOME/" in mlflow[0]


def test_aws_security_group_lets_in_ssh_only():
    provider = load("cluster.yaml")["provider"]
    rules = provider["security_group"]["IpPermissions"]
    for rule in rules:  # Ray adds SSH (22) and the cluster's own traffic; nothing else may be opened
        assert (rule.get("FromPort"), rule.get("ToPort"), rule.get("IpProtocol")) == (22, 22, "tcp"), rule
    for node_type in load("cluster.yaml")["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]


def test_both_files_set_up_nodes_the_same_way():
    aws, local = load("cluster.yaml"), load("cluster.local.yaml")
    for key in ("file_mounts", "rsync_exclude", "setup_commands"):
        assert aws[key] == local[key], key
    (setup,) = aws["setup_commands"]
    assert "bash ~/activeda/scripts/cluster_setup.sh" in setup
    script = ROOT / "scripts" / "cluster_setup.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "scripts/cluster-constraints.txt" in script.read_text()


def test_file_mounts_sync_everything_the_install_needs():
    mounts = load("cluster.yaml")["file_mounts"]
    tree = {
        remote.removeprefix("~/activeda/"): local
        for remote, local in mounts.items()
        if remote.startswith("~/activeda/")
    }
    for name, local in tree.items():
        assert local == f"./{name}" and (ROOT / name).exists(), (name, local)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = packages | {"pyproject.toml", pyproject["project"]["readme"], "scripts", "configs"}
    assert needed <= set(tree), f"not synced to the nodes: {sorted(needed - set(tree))}"


def test_pinned_ray_is_the_ray_that_runs_ray_up():
    import ray

    pins = dict(
        line.split("==")
        for line in (ROOT / "scripts" / "cluster-constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["ray"] == ray.__version__
    assert sys.version_info >= (3, 10)
