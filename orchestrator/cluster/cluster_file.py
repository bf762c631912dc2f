"""Cluster launcher files (``cluster.yaml``, ``cluster.local.yaml``): checked offline, and what their nodes offer.

``validate_cluster_file(path)`` loads a ``ray up`` file, fills in Ray's defaults the way ``ray up``
does (``prepare_config``) and checks it against Ray's own schema (``validate_config``). Anything wrong
is one line naming the file and the key::

    $ python -m orchestrator.cluster validate cluster.yaml broken.yaml
    ok: cluster.yaml
    error: cluster file 'broken.yaml': key 'available_node_types.head.resources.activeda_trial': must be an integer, got str 'lots'

``node_shapes(config)`` lists the resources each node type can offer, so that a config no node type
can satisfy can be refused before anything starts. Ray fills CPU and GPU of an AWS node type with
empty ``resources`` from its instance type at launch (asking AWS); offline they come from
``AWS_INSTANCE_TYPES`` below, and are ``None`` (unknown) for other instance types. On the ``local``
provider Ray detects each host's CPUs and GPUs when it starts, so they are ``None`` unless the
``ray start`` commands give ``--num-cpus`` / ``--num-gpus``; custom resources come from
``--resources`` (that is where the head declares ``activeda_trial``).

    $ python -m orchestrator.cluster shapes cluster.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cluster import staging

EXIT_BAD_INPUT = 2

# vCPUs and GPUs of the AWS instance types cluster.yaml uses and their usual neighbours (from AWS's
# instance type pages). Ray asks AWS for these at launch; this table only serves offline checks.
AWS_INSTANCE_TYPES: dict[str, dict[str, int]] = {
    "m5.large": {"CPU": 2, "GPU": 0},
    "m5.xlarge": {"CPU": 4, "GPU": 0},
    "m5.2xlarge": {"CPU": 8, "GPU": 0},
    "m5.4xlarge": {"CPU": 16, "GPU": 0},
    "m5.8xlarge": {"CPU": 32, "GPU": 0},
    "m5.12xlarge": {"CPU": 48, "GPU": 0},
    "m5.16xlarge": {"CPU": 64, "GPU": 0},
    "m5.24xlarge": {"CPU": 96, "GPU": 0},
    "g5.xlarge": {"CPU": 4, "GPU": 1},
    "g5.2xlarge": {"CPU": 8, "GPU": 1},
    "g5.4xlarge": {"CPU": 16, "GPU": 1},
    "g5.8xlarge": {"CPU": 32, "GPU": 1},
    "g5.16xlarge": {"CPU": 64, "GPU": 1},
    "g5.12xlarge": {"CPU": 48, "GPU": 4},
    "g5.24xlarge": {"CPU": 96, "GPU": 4},
    "g5.48xlarge": {"CPU": 192, "GPU": 8},
    "g4dn.xlarge": {"CPU": 4, "GPU": 1},
    "g4dn.2xlarge": {"CPU": 8, "GPU": 1},
    "g4dn.4xlarge": {"CPU": 16, "GPU": 1},
    "g4dn.8xlarge": {"CPU": 32, "GPU": 1},
    "g4dn.16xlarge": {"CPU": 64, "GPU": 1},
    "g4dn.12xlarge": {"CPU": 48, "GPU": 4},
    "p3.2xlarge": {"CPU": 8, "GPU": 1},
    "p3.8xlarge": {"CPU": 32, "GPU": 4},
    "p3.16xlarge": {"CPU": 64, "GPU": 8},
}

_FALLBACK_PROVIDERS = (
    "aliyun",
    "aws",
    "azure",
    "external",
    "fake_multinode",
    "fake_multinode_docker",
    "gcp",
    "kuberay",
    "local",
    "readonly",
    "spark",
    "vsphere",
)
_LOCAL_UNSUPPORTED = ("available_node_types", "head_node", "worker_nodes")
_MAX_VALUE_CHARS = 60
_YAML_TYPES = {"object": "mapping", "array": "list", "null": "null"}


class ClusterConfigError(ValueError):
    """A cluster file that ``ray up`` would refuse or misread; the message is one line."""

    def __init__(self, path: str | Path, what: str):
        self.path = str(path)
        self.what = " ".join(str(what).split())  # one line, whatever the cause said
        super().__init__(f"cluster file '{self.path}': {self.what}")


def load_cluster_file(path: str | Path) -> dict[str, Any]:
    """The file's YAML as a dict (no defaults filled in); ClusterConfigError if unreadable or malformed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ClusterConfigError(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterConfigError(path, f"cannot be read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise ClusterConfigError(path, f"malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ClusterConfigError(path, f"must be a YAML mapping of cluster keys, but is {kind}")
    return data


def validate_cluster_file(path: str | Path) -> dict[str, Any]:
    """Load, fill in Ray's defaults (``prepare_config``) and check with Ray's schema (``validate_config``).

    Returns the prepared config (what ``ray up`` would work with). Raises ClusterConfigError with a
    one-line message naming the file and the key for malformed YAML, missing keys, unknown providers and
    schema violations.
    """
    raw = load_cluster_file(path)
    _precheck(path, raw)
    # Wrong types in the file itself first: prepare_config would trip over some of them, and it merges
    # setup_commands into head_/worker_setup_commands, so later messages would name keys not in the file.
    own_error = _schema_error(raw, ignore_required=True)
    if own_error:
        raise ClusterConfigError(path, own_error)
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        with _quiet():
            prepared = prepare_config(raw)
    except Exception as err:  # Ray's own checks abort with click exceptions, KeyErrors on odd shapes, ...
        raise ClusterConfigError(path, _describe_exception(err)) from None
    try:
        with _quiet():
            validate_config(prepared)
    except jsonschema.ValidationError as err:
        raise ClusterConfigError(path, _describe_validation_error(err)) from None
    except Exception as err:  # ValueError/RuntimeError from Ray's checks beyond the schema
        raise ClusterConfigError(path, _describe_exception(err)) from None
    return prepared


def node_shapes(cluster_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources each node type of a cluster config (raw or prepared) can offer.

    One dict per node type: ``node_type``, ``head`` (bool), ``min_workers``, ``max_workers`` (for the
    head: 1 and 1), ``instance_type`` (or None), ``resources`` (``CPU`` and ``GPU`` always present,
    ``None`` where only Ray at runtime can know them, plus any custom resources such as
    ``activeda_trial``) and ``source`` (where the CPU/GPU figures come from).
    """
    provider = cluster_config.get("provider") or {}
    if provider.get("type") == "local":
        return _local_shapes(cluster_config)
    node_types = cluster_config.get("available_node_types") or {}
    head_type = cluster_config.get("head_node_type")
    shapes = []
    for name, node_type in node_types.items():
        node_type = node_type or {}
        node_config = node_type.get("node_config") or {}
        explicit = dict((node_type.get("resources") or {}).items())
        instance_type = node_config.get("InstanceType") if provider.get("type") == "aws" else None
        table = AWS_INSTANCE_TYPES.get(instance_type) if instance_type else None
        resources: dict[str, Any] = {"CPU": None, "GPU": None}
        source = "unknown until Ray starts the node"
        if table:
            resources.update(table)
            source = f"instance type {instance_type}"
        if "CPU" in explicit or "GPU" in explicit:
            source = "resources" if not table else f"resources over instance type {instance_type}"
        resources.update(explicit)  # as Ray does: given resources override what it detects
        is_head = name == head_type
        shapes.append(
            {
                "node_type": name,
                "head": is_head,
                "min_workers": 1 if is_head else int(node_type.get("min_workers", 0)),
                "max_workers": 1
                if is_head
                else int(node_type.get("max_workers", cluster_config.get("max_workers", 0))),
                "instance_type": instance_type,
                "resources": resources,
                "source": source,
            }
        )
    return shapes


def ray_start_resources(commands: list[str]) -> dict[str, Any]:
    """The resources that ``ray start`` flags in a list of shell commands declare.

    ``--num-cpus``/``--num-gpus`` become ``CPU``/``GPU`` and ``--resources`` JSON is merged in; the
    last ``ray start`` in the list wins.
    """
    found: dict[str, Any] = {}
    for command in commands or []:
        try:
            words = shlex.split(command, comments=False)
        except ValueError:
            words = command.split()
        for i, word in enumerate(words[:-1]):
            if word.rstrip(";").endswith("ray") and words[i + 1] == "start":
                found = _parse_start_flags(words[i + 2 :])
    return found


def _parse_start_flags(words: list[str]) -> dict[str, Any]:
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.endswith(";") or word in ("&&", "||", "|", ";"):
            if word.startswith("--") and "=" in word:
                key, value = word.rstrip(";").split("=", 1)
                flags[key] = value
            break
        if word.startswith("--"):
            if "=" in word:
                key, value = word.split("=", 1)
                flags[key] = value
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                flags[word] = words[i + 1]
                i += 1
        i += 1
    resources: dict[str, Any] = {}
    for flag, key in (("--num-cpus", "CPU"), ("--num-gpus", "GPU")):
        if flag in flags:
            try:
                resources[key] = float(flags[flag]) if "." in flags[flag] else int(flags[flag])
            except ValueError:
                pass
    if "--resources" in flags:
        try:
            custom = json.loads(flags["--resources"])
        except json.JSONDecodeError:
            custom = {}
        if isinstance(custom, dict):
            resources.update(custom)
    return resources


def _local_shapes(config: dict[str, Any]) -> list[dict[str, Any]]:
    provider = config.get("provider") or {}
    head_resources = {"CPU": None, "GPU": None, **ray_start_resources(config.get("head_start_ray_commands") or [])}
    shapes = [
        {
            "node_type": "head",
            "head": True,
            "min_workers": 1,
            "max_workers": 1,
            "instance_type": None,
            "resources": head_resources,
            "source": "ray start flags of head_start_ray_commands; the rest detected by Ray",
        }
    ]
    worker_ips = provider.get("worker_ips") or []
    if worker_ips:
        worker_resources = {
            "CPU": None,
            "GPU": None,
            **ray_start_resources(config.get("worker_start_ray_commands") or []),
        }
        count = min(len(worker_ips), int(config.get("max_workers", len(worker_ips))))
        shapes.append(
            {
                "node_type": "worker",
                "head": False,
                "min_workers": count,
                "max_workers": count,
                "instance_type": None,
                "resources": worker_resources,
                "source": "ray start flags of worker_start_ray_commands; the rest detected by Ray",
            }
        )
    return shapes


def _precheck(path: str | Path, raw: dict[str, Any]) -> None:
    """What Ray's prepare_config would crash on or misreport, said plainly."""
    if "provider" not in raw:
        raise ClusterConfigError(path, "missing key 'provider' (e.g. provider: {type: aws, region: us-west-2})")
    provider = raw["provider"]
    if not isinstance(provider, dict):
        raise ClusterConfigError(path, f"key 'provider': must be a mapping, got {_short(provider)}")
    if "type" not in provider:
        raise ClusterConfigError(path, "missing key 'provider.type'")
    kind = provider["type"]
    known = _provider_types()
    if not isinstance(kind, str) or kind not in known:
        raise ClusterConfigError(
            path, f"key 'provider.type': unknown provider {kind!r}; choose one of: {', '.join(sorted(known))}"
        )
    if kind == "local":
        for key in _LOCAL_UNSUPPORTED:
            if raw.get(key):
                raise ClusterConfigError(
                    path,
                    f"key '{key}': not supported by the local provider (declare a "
                    "node's resources with `ray start --resources` in its start commands)",
                )
        if "coordinator_address" not in provider:
            for key in ("head_ip", "worker_ips"):
                if key not in provider:
                    raise ClusterConfigError(
                        path,
                        f"missing key 'provider.{key}' (the local provider needs "
                        "head_ip and worker_ips, or coordinator_address)",
                    )
    else:
        node_types = raw.get("available_node_types")
        if node_types is not None and "head_node_type" not in raw:
            raise ClusterConfigError(
                path,
                "missing key 'head_node_type' (required with available_node_types; name the node type the head uses)",
            )
        if (
            isinstance(node_types, dict)
            and isinstance(raw.get("head_node_type"), str)
            and raw["head_node_type"] not in node_types
        ):
            raise ClusterConfigError(
                path,
                f"key 'head_node_type': {raw['head_node_type']!r} is not one of "
                f"available_node_types ({', '.join(map(str, node_types))})",
            )


def _provider_types() -> set[str]:
    try:
        from ray.autoscaler._private.providers import _NODE_PROVIDERS

        return set(_NODE_PROVIDERS)
    except Exception:  # private API; keep working if it moves
        return set(_FALLBACK_PROVIDERS)


def _schema_error(config: dict[str, Any], ignore_required: bool = False) -> str | None:
    """The first schema violation of ``config`` as one line, or None."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [e for e in validator.iter_errors(config) if not (ignore_required and e.validator == "required")]
    if not errors:
        return None
    return _describe_validation_error(jsonschema.exceptions.best_match(errors))


def _describe_validation_error(err) -> str:
    """jsonschema's error as ``key 'a.b[0].c': what``, on one line."""
    parts = list(err.absolute_path)
    kind = err.validator
    if kind == "required":
        missing = [name for name in err.validator_value if isinstance(err.instance, dict) and name not in err.instance]
        if missing:
            return f"missing key '{_join_path(parts + [missing[0]])}'"
    if kind == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties") or {})
        patterns = err.schema.get("patternProperties") or {}
        extra = [k for k in err.instance if k not in allowed and not patterns]
        if extra:
            close = difflib.get_close_matches(str(extra[0]), sorted(allowed), n=1)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else f"allowed: {_clip(', '.join(sorted(allowed)) or 'none', 160)}"
            )
            return f"unknown key '{_join_path(parts + [extra[0]])}' ({hint})"
    where = _join_path(parts)
    prefix = f"key '{where}': " if where else "top level: "
    if kind == "type":
        names = [err.validator_value] if isinstance(err.validator_value, str) else list(err.validator_value)
        expected = " or ".join(_YAML_TYPES.get(name, name) for name in names)
        article = "an" if expected[:1] in "aeiou" else "a"
        return f"{prefix}must be {article} {expected}, got {_short(err.instance)}"
    if kind == "enum":
        return f"{prefix}must be one of {', '.join(map(repr, err.validator_value))}, got {_short(err.instance)}"
    if kind in ("minimum", "maximum"):
        op = ">=" if kind == "minimum" else "<="
        return f"{prefix}must be {op} {err.validator_value}, got {_short(err.instance)}"
    return prefix + _clip(err.message.splitlines()[0] if err.message else kind, 200)


def _describe_exception(err: BaseException) -> str:
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    if isinstance(err, KeyError):
        message = f"missing key {err}"
    return _clip(" ".join(str(message).split()), 300)


def _join_path(parts: list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any) -> str:
    kind = type(value).__name__
    return f"{kind} {_clip(repr(value), _MAX_VALUE_CHARS)}" if value is not None else "null"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet():
    """Ray's config helpers print notices (and abort messages) to stdout/stderr and its loggers."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.autoscaler", "ray.autoscaler._private.util")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def format_shapes(shapes: list[dict[str, Any]]) -> str:
    def amount(value):
        return "?" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)

    lines = [f"{'node type':<14} {'role':<6} {'workers':>9} {'CPU':>5} {'GPU':>4}  custom / source"]
    for shape in shapes:
        res = shape["resources"]
        custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
        workers = "-" if shape["head"] else f"{shape['min_workers']}-{shape['max_workers']}"
        extra = ", ".join(f"{k}={amount(v)}" for k, v in custom.items())
        lines.append(
            f"{shape['node_type']:<14} {'head' if shape['head'] else 'worker':<6} {workers:>9} "
            f"{amount(res.get('CPU')):>5} {amount(res.get('GPU')):>4}  "
            f"{extra + '; ' if extra else ''}{shape['source']}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda cluster",
        description="Check `ray up` cluster files offline against Ray's own schema, show what their "
        "node types offer, and stage datasets to every node of a running cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="fill in Ray's defaults and validate each file; exit 2 if any is wrong")
    validate.add_argument("files", nargs="+", metavar="FILE")
    shapes = sub.add_parser("shapes", help="the CPU/GPU/custom resources each node type can offer")
    shapes.add_argument("files", nargs="+", metavar="FILE")
    staging.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command.startswith("stage"):
        return staging.run(args)
    status = 0
    for path in args.files:
        try:
            config = validate_cluster_file(path)
        except ClusterConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        if args.command == "validate":
            print(f"ok: {path}")
        else:
            print(f"{path}:")
            print(format_shapes(node_shapes(config)))
    return status
