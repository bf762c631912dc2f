"""Datasets on every node of a Ray cluster: ``python -m orchestrator.cluster stage`` (one command).

Every node that runs a Train worker or a ranking actor reads the images itself, from a local folder at
the same path on every node (the configs' ``data.source.root`` / ``data.target.root``). Staging puts
a dataset there, on the head and on every worker, and proves each copy right::

    python -m orchestrator.cluster stage --cluster-config cluster.yaml --data /data/gta5 --data /data/cityscapes

1. **Manifest, once, at the source.** ``<dataset>/activeda.sha256`` lists the SHA-256 of every file
   of the dataset (``sha256sum`` format: ``sha256sum -c activeda.sha256`` checks a copy by hand). It
   is written the first time and reused after; a dataset whose files no longer match the list's
   names is refused in one line.
2. **To the head** with `ray rsync-up` (Ray's own, over SSH; rsync copies what the head lacks or has
   with another size or time, each file under a temporary name first).
3. **Checked on the head, then copied to every worker over Ray** (``stage-nodes``, run on the head
   through `ray exec`): the head hashes its copy against the manifest; a file that differs is
   deleted there and step 2 runs once more. Then one task per worker node (pinned to it) hashes that
   node's copy and fetches each missing or differing file from the head (an actor there reads it in
   chunks), writes it under a staging name, checks its hash, and renames it into place.

Resumable: a run that stops anywhere (Ctrl-C, a lost connection, a node that dies) leaves only
verified files under their final names; the next run keeps every file whose hash matches, never
copying it again, removes abandoned staging files, and copies the rest. Every run hashes every copy,
so a corrupted or truncated file is found however it got there.

Each problem is one line (``error: ...``) and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from trainers.files import atomic_write_text, is_staging_name, staged

MANIFEST = "activeda.sha256"
DEFAULT_DEST = "/data"  # what the paper configs read; scripts/cluster_setup.sh makes it writable
CHUNK_BYTES = 4 << 20  # what one call to the head's file server returns (IN_FLIGHT of them fit a small object store)
IN_FLIGHT = 8  # calls to the file server a node keeps waiting at once
HASH_THREADS = min(8, os.cpu_count() or 1)
RESULT_MARK = "STAGE-RESULT "  # the head's machine-readable last line, read by the client
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class StagingError(Exception):
    """A problem with a dataset or its staging, as one line."""


# --- manifests ------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks; hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def dataset_files(root: Path) -> list[str]:
    """Every file of a dataset folder, as sorted POSIX paths relative to it (the manifest, staging
    files and hidden files left out)."""
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or (folder == str(root) and name == MANIFEST):
                continue
            names.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(names)


def read_manifest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of a manifest; a malformed one is a ``StagingError`` naming the line."""
    return parse_manifest(path.read_text(encoding="utf-8"), path)


def parse_manifest(text: str, path: str | Path) -> dict[str, str]:
    """``read_manifest`` of a manifest's text (``path`` only names it in errors)."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        name = match[2] if match else ""
        if not match or name.startswith("/") or ".." in Path(name).parts:
            raise StagingError(f"manifest '{path}': line {number} is not '<sha256>  <relative path>': {line[:120]!r}")
        entries[name] = match[1]
    if not entries:
        raise StagingError(f"manifest '{path}' lists no files")
    return entries


def hash_files(
    root: Path, names: Iterable[str], progress: Callable[[str], None] | None = None, what: str = "hashed"
) -> dict[str, str | None]:
    """relative path -> sha256 (None for a file that is missing or unreadable), on several threads."""
    names = list(names)
    out: dict[str, str | None] = {}
    started = last = time.monotonic()

    def one(name: str) -> tuple[str, str | None]:
        try:
            return name, sha256_file(root / name)
        except OSError:
            return name, None

    with concurrent.futures.ThreadPoolExecutor(HASH_THREADS) as pool:
        for name, digest in pool.map(one, names):
            out[name] = digest
            if progress is not None and time.monotonic() - last > 30:
                last = time.monotonic()
                progress(f"{what} {len(out)}/{len(names)} files ({last - started:.0f} s)")
    return out


def ensure_manifest(root: Path, progress: Callable[[str], None] = print) -> dict[str, str]:
    """The dataset's manifest: read when ``root/activeda.sha256`` exists (it is written once), else
    written now from every file. Refused in one line when the folder's files no longer match it."""
    if not root.is_dir():
        raise StagingError(f"--data '{root}': no such folder")
    path = root / MANIFEST
    files = dataset_files(root)
    if path.is_file():
        entries = read_manifest(path)
        extra = sorted(set(files) - set(entries))
        missing = sorted(set(entries) - set(files))
        if missing:
            raise StagingError(
                f"--data '{root}': {len(missing)} file(s) of its manifest are missing (first: {missing[0]}); "
                f"restore them, or delete '{path}' to list the folder anew"
            )
        if extra:
            raise StagingError(
                f"--data '{root}': {len(extra)} file(s) are not in its manifest (first: {extra[0]}); "
                f"delete '{path}' to list the folder anew"
            )
        return entries
    if not files:
        raise StagingError(f"--data '{root}': the folder has no files")
    if not os.access(root, os.W_OK):
        raise StagingError(f"--data '{root}': cannot write its manifest '{MANIFEST}' there (read-only)")
    progress(f"{root.name}: writing the manifest of {len(files)} files (SHA-256 of each, once)")
    digests = hash_files(root, files, progress, "hashed")
    unreadable = [name for name, digest in digests.items() if digest is None]
    if unreadable:
        raise StagingError(f"--data '{root}': cannot read {len(unreadable)} file(s) (first: {unreadable[0]})")
    atomic_write_text(path, "".join(f"{digests[name]}  {name}\n" for name in files))
    return {name: digests[name] for name in files}


# --- one node's copy ------------------------------------------------------------------------------


@dataclass
class NodeReport:
    """What staging found and did on one node."""

    node: str
    verified: int = 0  # files whose copy matched (kept as they were)
    copied: list[str] = field(default_factory=list)  # missing files copied
    repaired: list[str] = field(default_factory=list)  # files that differed (corrupt or partial), copied anew
    abandoned: int = 0  # staging files of an interrupted run, removed
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.verified} file(s) verified"]
        if self.copied:
            parts.append(f"{len(self.copied)} copied")
        if self.repaired:
            parts.append(
                f"{len(self.repaired)} that did not match their checksum (corrupt or partial) copied anew: "
                + ", ".join(self.repaired[:3])
                + (" ..." if len(self.repaired) > 3 else "")
            )
        if self.abandoned:
            parts.append(f"{self.abandoned} abandoned staging file(s) removed")
        return f"{self.node}: " + "; ".join(parts)


def check_copy(root: Path, manifest: dict[str, str]) -> tuple[list[str], list[str], list[str], int]:
    """(verified, missing, differing, abandoned staging files removed) of one node's copy."""
    abandoned = 0
    if root.is_dir():
        for folder, _, files in os.walk(root):
            for name in files:
                if is_staging_name(name):  # an interrupted copy's staging file: never a final name
                    Path(folder, name).unlink(missing_ok=True)
                    abandoned += 1
    present = [name for name in manifest if (root / name).is_file()]
    digests = hash_files(root, present)
    verified = [name for name in present if digests[name] == manifest[name]]
    differing = [name for name in present if digests[name] != manifest[name]]
    missing = [name for name in manifest if name not in digests]
    return verified, missing, differing, abandoned


class FileServer:
    """Reads the head's verified copy for the workers (a Ray actor pinned to the head)."""

    def __init__(self, root: str):
        self.root = Path(root).resolve()

    def read(self, name: str, offset: int, length: int) -> bytes:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{name!r} is outside the staged folder")
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def sizes(self, names: list[str]) -> dict[str, int | None]:
        """name -> size in bytes (None when the head lacks it), for many files in one call."""
        out: dict[str, int | None] = {}
        for name in names:
            try:
                out[name] = (self.root / name).stat().st_size
            except OSError:
                out[name] = None
        return out


def fill_copy(root: str, manifest_text: str, server, node: str) -> dict:
    """On one worker node (a Ray task pinned to it): check its copy, fetch what is missing or differs
    from ``server`` (the head's ``FileServer``), each file checked before it is renamed into place,
    and, once every file is right, the manifest itself. Returns the ``NodeReport`` as a dict."""
    import ray

    folder = Path(root)
    manifest = parse_manifest(manifest_text, f"{node}: {MANIFEST}")
    report = NodeReport(node)
    verified, missing, differing, report.abandoned = check_copy(folder, manifest)
    report.verified = len(verified)
    wanted = missing + differing
    try:
        sizes = ray.get(server.sizes.remote(wanted)) if wanted else {}
    except ray.exceptions.RayError as err:
        report.problems.append(f"{node}: cannot reach the head's copy: {str(err).splitlines()[0]}")
        return asdict(report)
    for name in wanted:
        try:
            size = sizes[name]
            if size is None:
                raise StagingError(f"{node}: '{name}' is missing on the head; run the command again")
            with staged(folder / name) as tmp:
                digest = hashlib.sha256()
                with open(tmp, "wb") as out:
                    offsets = list(range(0, size, CHUNK_BYTES)) or [0]
                    pending = [server.read.remote(name, o, CHUNK_BYTES) for o in offsets[:IN_FLIGHT]]
                    for i in range(len(offsets)):
                        data = ray.get(pending.pop(0))
                        if i + IN_FLIGHT < len(offsets):
                            pending.append(server.read.remote(name, offsets[i + IN_FLIGHT], CHUNK_BYTES))
                        out.write(data)
                        digest.update(data)
                if digest.hexdigest() != manifest[name]:
                    raise StagingError(
                        f"{node}: '{name}' on the head does not match its checksum after copying; "
                        "the head's copy changed while staging: run the command again"
                    )
        except (OSError, StagingError, ray.exceptions.RayError) as err:
            report.problems.append(err.args[0] if isinstance(err, StagingError) else f"{node}: '{name}': {err}")
            continue
        (report.repaired if name in differing else report.copied).append(name)
    manifest_file = folder / MANIFEST
    if not report.problems and not (manifest_file.is_file() and manifest_file.read_text() == manifest_text):
        atomic_write_text(manifest_file, manifest_text)  # last: a node with the manifest has every file
    return asdict(report)


# --- on the head: the head's copy, then every worker ------------------------------------------------


def stage_nodes(roots: list[str], address: str, progress: Callable[[str], None] = print) -> dict:
    """On the head: check the head's copy of each dataset; where it is right, bring every alive
    worker node's copy to it. Returns ``{"head_bad": {root: [names]}, "problems": [...], "reports": [...]}``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    result: dict = {"head_bad": {}, "problems": [], "reports": []}
    ready = []
    for root in roots:
        folder = Path(root).expanduser().resolve()
        if not (folder / MANIFEST).is_file():
            result["problems"].append(f"head: '{folder}' has no manifest {MANIFEST}; the upload did not arrive")
            continue
        manifest_text = (folder / MANIFEST).read_text(encoding="utf-8")
        manifest = parse_manifest(manifest_text, folder / MANIFEST)
        verified, missing, differing, abandoned = check_copy(folder, manifest)
        for name in differing:  # rsync keeps a file of the same size and time: it must go to be copied again
            (folder / name).unlink(missing_ok=True)
        if missing or differing:
            result["head_bad"][str(folder)] = sorted(missing + differing)
        report = NodeReport(f"head {folder.name}", verified=len(verified), abandoned=abandoned)
        report.repaired = differing
        result["reports"].append(asdict(report))
        if not (missing or differing):
            ready.append((str(folder), manifest_text))
    if not ready:
        return result

    ray.init(address=address, log_to_driver=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    try:
        head_id = ray.get_runtime_context().get_node_id()
        workers = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != head_id]
        progress(f"{len(workers)} worker node(s) alive")
        result["workers"] = len(workers)
        pin = NodeAffinitySchedulingStrategy  # soft=False: on that node or not at all
        server_class = ray.remote(FileServer)
        fill = ray.remote(fill_copy)
        for folder, manifest_text in ready:
            server = server_class.options(num_cpus=0, scheduling_strategy=pin(head_id, soft=False)).remote(folder)
            tasks = {
                fill.options(num_cpus=0, scheduling_strategy=pin(n["NodeID"], soft=False), max_retries=0).remote(
                    folder, manifest_text, server, f"worker {n['NodeManagerAddress']} {Path(folder).name}"
                ): n
                for n in workers
            }
            for ref, node in tasks.items():
                try:
                    report = ray.get(ref)
                except ray.exceptions.RayError as err:
                    result["problems"].append(
                        f"worker {node['NodeManagerAddress']}: staging '{folder}' failed: {str(err).splitlines()[0]}"
                    )
                    continue
                result["problems"].extend(report.pop("problems"))
                result["reports"].append(report)
            ray.kill(server)
    finally:
        ray.shutdown()
    return result


# --- on the user's machine: the one command ---------------------------------------------------------


def _ray_cli() -> list[str]:
    ray = Path(sys.executable).parent / "ray"
    return [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def _ray(args: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*_ray_cli(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout).split())[-300:]
        raise StagingError(f"{what} failed (exit {result.returncode}): {tail}")
    return result


def stage(cluster_config: Path, data: list[Path], dest: str, progress: Callable[[str], None] = print) -> int:
    """The whole staging: manifests, upload to the head, check, copy to every worker. Returns the
    exit status (0 when every node holds a verified copy of every dataset)."""
    if not cluster_config.is_file():
        raise StagingError(f"--cluster-config '{cluster_config}': no such file")
    names = [d.name for d in data]
    if len(set(names)) != len(names):
        raise StagingError(
            f"--data: two datasets share a folder name ({', '.join(names)}); each lands in {dest}/<name>"
        )
    manifests = {d: ensure_manifest(d, progress) for d in data}
    for folder, manifest in manifests.items():
        size = sum((folder / n).stat().st_size for n in manifest)
        progress(f"{folder.name}: {len(manifest)} files, {size / 1e9:.2f} GB")
    remote = {d: f"{dest.rstrip('/')}/{d.name}" for d in data}
    config = str(cluster_config)
    exec_flags = ["--no-config-cache", "--disable-usage-stats", "--log-style", "record"]
    _ray(["exec", *exec_flags, config, "mkdir -p " + " ".join(_remote_path(p) for p in remote.values())], "ray exec")
    pending = list(data)
    for attempt in (1, 2):
        for folder in pending:
            started = time.monotonic()
            _ray(["rsync-up", "--log-style", "record", config, f"{folder}/", f"{remote[folder]}/"], "ray rsync-up")
            progress(f"{folder.name}: uploaded to the head ({time.monotonic() - started:.0f} s)")
        command = "python -m orchestrator.cluster stage-nodes --address auto " + " ".join(
            _remote_path(p) for p in remote.values()
        )
        started = time.monotonic()
        out = _ray(["exec", *exec_flags, config, command], "stage-nodes on the head (ray exec)")
        result = _parse_result(out.stdout + out.stderr)
        progress(f"checked on the head, copied to the workers ({time.monotonic() - started:.0f} s)")
        for report in result["reports"]:
            progress(NodeReport(**{**report, "problems": []}).line())
        if result["head_bad"] and attempt == 1:
            bad = sum(len(v) for v in result["head_bad"].values())
            progress(f"the head's copy lacked or differed in {bad} file(s); uploading them again")
            pending = [d for d in data if any(Path(k).name == d.name for k in result["head_bad"])]
            continue
        problems = list(result["problems"])
        for folder, names_bad in result["head_bad"].items():
            problems.append(
                f"head: {len(names_bad)} file(s) of '{folder}' still do not match the manifest after uploading "
                f"again (first: {names_bad[0]}); the source file changed since its manifest was written?"
            )
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return EXIT_PROBLEMS
        where = result.get("home", "")
        for path in remote.values():
            shown = path.replace("~", where, 1) if where and path.startswith("~") else path
            progress(f"staged on every node: {shown} (the head and {result.get('workers', 0)} worker node(s))")
        later = autoscaled_types(cluster_config)
        if later:
            progress(
                f"note: node type(s) {', '.join(later)} may start more workers later (min_workers < max_workers); "
                "they will lack the datasets: run this command again once they are up, or raise min_workers"
            )
        return 0
    return EXIT_PROBLEMS  # not reached: the second attempt returns


def autoscaled_types(cluster_config: Path) -> list[str]:
    """Worker node types of a cluster file that the autoscaler may start after staging (their
    ``min_workers`` below ``max_workers``); empty for fixed hosts (the ``local`` provider)."""
    try:
        raw = yaml.safe_load(cluster_config.read_text()) or {}
        types = raw.get("available_node_types") or {}
        return [
            name
            for name, spec in types.items()
            if name != raw.get("head_node_type")
            and int(spec.get("max_workers", raw.get("max_workers", 0)) or 0) > int(spec.get("min_workers", 0) or 0)
        ]
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return []  # `ray` itself reads the file and says what is wrong with it


def _remote_path(path: str) -> str:
    """A path for the remote shell: ``~/x`` stays expandable, the rest is quoted."""
    if path == "~" or path.startswith("~/"):
        return "~/" + shlex.quote(path[2:]) if len(path) > 2 else "~"
    return shlex.quote(path)


def _parse_result(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = " ".join(output.split())[-300:]
    raise StagingError(f"stage-nodes on the head gave no result: {tail}")


# --- command line -----------------------------------------------------------------------------------


def add_subcommands(sub) -> None:
    """The ``stage`` and ``stage-nodes`` subcommands of ``python -m orchestrator.cluster``."""
    stage_parser = sub.add_parser(
        "stage",
        help="copy datasets to every node of a running cluster, verified by SHA-256, resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage_parser.add_argument("--cluster-config", required=True, type=Path, metavar="FILE", help="the `ray up` file")
    stage_parser.add_argument(
        "--data", required=True, action="append", type=Path, metavar="DIR", help="a dataset folder (repeatable)"
    )
    stage_parser.add_argument(
        "--dest", default=DEFAULT_DEST, metavar="DIR", help=f"where datasets go on every node (default {DEFAULT_DEST})"
    )
    nodes_parser = sub.add_parser(
        "stage-nodes", help="(run on the head by `stage`) check the head's copy, fill the workers'"
    )
    nodes_parser.add_argument("roots", nargs="+", metavar="DIR")
    nodes_parser.add_argument("--address", default="auto")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "stage":
            return stage(args.cluster_config, [d.expanduser().resolve() for d in args.data], args.dest)
        result = stage_nodes(args.roots, args.address, progress=lambda msg: print(f"stage: {msg}", flush=True))
        result["home"] = str(Path.home())
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    except StagingError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
