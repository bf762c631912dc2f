"""Cluster-wide storage: where checkpoints, Tune state, label stores and the model caches live.

With ``storage.uri`` empty everything stays under ``output_dir`` (a local folder, or a shared
filesystem mounted on every node). With ``storage.uri: s3://bucket/prefix`` the same layout lives
under that prefix instead, so a trial, Train worker or ranking actor on any node finds it::

    s3://bucket/prefix/source-models/<hash>/checkpoint/state.pt   + metrics.json (written last)
    s3://bucket/prefix/source-models/ray/...                      Ray Train runs of the source model
    s3://bucket/prefix/oracle-references/<hash>/metrics.json
    s3://bucket/prefix/<sweep>/sweep.json                         what --resume needs
    s3://bucket/prefix/<sweep>/tune/...                           Tune experiment state + trial checkpoints
    s3://bucket/prefix/<sweep>/trials/<id>/ray/round-NNN/...      Ray Train runs (model checkpoints)
    s3://bucket/prefix/<sweep>/trials/<id>/labels/round-NNNN.parquet, progress.json

A location is a string: an absolute local path, or an ``s3://`` URI. Every location mirrors a path
under ``output_dir`` (``Storage.location``), so code keeps computing local paths and asks for
their cluster-wide twin. Local files stay as node-local working copies (label stores are read
locally) and are pushed after each write and pulled when a node lacks them.

Credentials are never in the config: pyarrow uses the AWS default chain (instance role,
environment, ``~/.aws``).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from experiment_config import S3_URI, ConfigError, storage_uri_problem
from trainers.files import atomic_write_bytes, staged


def _plain(cfg: Any) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


@functools.lru_cache(maxsize=8)
def _s3_filesystem(bucket: str, endpoint: str, region: str, quick: bool = False) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["region"] = region or "us-east-1"  # S3-compatible servers mostly ignore it
    else:
        # Requests signed for another region than the bucket's are refused by AWS.
        kwargs["region"] = region or pafs.resolve_s3_region(bucket)
    if quick:  # the pre-flight check: say at once that the bucket is unreachable, do not retry for minutes
        kwargs.update(
            connect_timeout=5, request_timeout=15, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2)
        )
    return pafs.S3FileSystem(**kwargs)


class Storage:
    """The cluster-wide twin of ``output_dir``: local (``uri`` empty) or an S3 prefix."""

    def __init__(
        self, output_dir: str | Path, uri: str = "", endpoint: str = "", region: str = "", quick: bool = False
    ):
        self.output_dir = Path(output_dir).resolve()
        self.uri = uri.rstrip("/")
        self.remote = bool(uri)
        if self.remote:
            match = S3_URI.match(uri)
            if match is None:
                raise ConfigError("storage.uri", storage_uri_problem(uri) or "")
            self.bucket = match["bucket"]
            self.filesystem: pafs.FileSystem = _s3_filesystem(self.bucket, endpoint, region, quick)
        else:
            self.bucket = ""
            self.filesystem = pafs.LocalFileSystem()

    @property
    def ray_filesystem(self) -> pafs.FileSystem | None:
        """What Ray's ``storage_filesystem`` gets: None locally, so Ray resolves plain paths itself."""
        return self.filesystem if self.remote else None

    def train_storage(self, local_dir: str | Path) -> dict[str, Any]:
        """``run_training``'s storage arguments for the runs kept under ``local_dir``'s location."""
        return {"storage_path": self.location(local_dir), "filesystem": self.ray_filesystem}

    # --- locations ------------------------------------------------------------------------------
    def location(self, local_path: str | Path) -> str:
        """The cluster-wide location of a path under ``output_dir`` (the path itself when local)."""
        path = Path(local_path).resolve()
        relative = path.relative_to(self.output_dir)  # a path outside output_dir is a bug in the caller
        if not self.remote:
            return str(path)
        return f"{self.uri}/{relative.as_posix()}" if relative.parts else self.uri

    def fs_path(self, location: str) -> str:
        """``location`` as a path on ``self.filesystem`` (S3: ``bucket/key``; what Ray wants with a custom fs)."""
        if location.startswith("s3://"):
            return location[len("s3://") :].rstrip("/")
        return location

    def join(self, location: str, *parts: str) -> str:
        if location.startswith("s3://"):
            return "/".join([location.rstrip("/"), *parts])
        return str(Path(location, *parts))

    # --- files ----------------------------------------------------------------------------------
    def exists(self, location: str) -> bool:
        return self.filesystem.get_file_info(self.fs_path(location)).type != pafs.FileType.NotFound

    def read_text(self, location: str) -> str | None:
        """The file's text, or None when there is no such file."""
        data = self.read_bytes(location)
        return None if data is None else data.decode("utf-8")

    def read_bytes(self, location: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        path = self.fs_path(location)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def write_text(self, location: str, text: str) -> None:
        """Write a whole file so that readers see the old file or the new one, never a part.

        S3 makes an object visible only once its upload completes; locally a temporary file is
        renamed into place.
        """
        self.write_bytes(location, text.encode("utf-8"))

    def write_bytes(self, location: str, data: bytes) -> None:
        """``write_text`` for bytes."""
        path = self.fs_path(location)
        if not self.remote:
            atomic_write_bytes(path, data)
            return
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(data)

    def upload_file(self, local_file: str | Path, location: str) -> None:
        pafs.copy_files(
            str(Path(local_file).resolve()),
            self.fs_path(location),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.filesystem,
        )

    def download_file(self, location: str, local_file: str | Path) -> None:
        """Copy one file to the node, via a temporary name, so a crash never leaves half a file."""
        with staged(local_file) as tmp:
            pafs.copy_files(
                self.fs_path(location),
                str(tmp.resolve()),
                source_filesystem=self.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )

    def download_dir(self, location: str, local_dir: str | Path) -> Path:
        """Copy a folder to the node: into a temporary sibling first, then renamed into place."""
        local_dir = Path(local_dir)
        with staged(local_dir, folder=True) as staging:
            pafs.copy_files(
                self.fs_path(location),
                str(staging.resolve()),
                source_filesystem=self.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        return local_dir

    def listdir(self, location: str) -> list[str]:
        """Names of the files directly in a folder (empty when the folder does not exist)."""
        selector = pafs.FileSelector(self.fs_path(location), allow_not_found=True)
        return sorted(
            Path(info.path).name for info in self.filesystem.get_file_info(selector) if info.type == pafs.FileType.File
        )

    # --- mirrored working copies --------------------------------------------------------------
    def push(self, local_file: str | Path) -> None:
        """Publish a local file under ``output_dir`` to its cluster-wide location (no-op when local)."""
        if self.remote:
            self.upload_file(local_file, self.location(local_file))

    def pull(self, local_file: str | Path) -> bool:
        """Fetch a file this node lacks from its cluster-wide location; True when the file is there now.

        For write-once files: a local copy is kept as it is, even when the cluster-wide file has
        changed since. A file rewritten in place (a trial's progress.json) is read from both places.
        """
        local_file = Path(local_file)
        if local_file.is_file():
            return True
        if not self.remote or not self.exists(self.location(local_file)):
            return False
        self.download_file(self.location(local_file), local_file)
        return True

    def push_folder(self, local_dir: str | Path, pattern: str = "*") -> None:
        """Publish the files of a local folder that its cluster-wide twin lacks (files are write-once)."""
        local_dir = Path(local_dir)
        if not self.remote or not local_dir.is_dir():
            return
        there = set(self.listdir(self.location(local_dir)))
        for path in sorted(local_dir.glob(pattern)):
            if path.is_file() and not path.name.startswith(".") and path.name not in there:
                self.upload_file(path, self.location(path))

    def pull_folder(self, local_dir: str | Path, pattern: str = "*") -> list[str]:
        """Fetch the files of the cluster-wide twin that this node's folder lacks; returns their names."""
        local_dir = Path(local_dir)
        if not self.remote:
            return []
        fetched = []
        for name in self.listdir(self.location(local_dir)):
            if Path(name).match(pattern) and not name.startswith(".") and not (local_dir / name).is_file():
                self.download_file(self.location(local_dir / name), local_dir / name)
                fetched.append(name)
        return fetched

    # --- cache entries --------------------------------------------------------------------------
    def publish_entry(
        self, local_entry: str | Path, folders: dict[str, str], files: dict[str, str], marker: str
    ) -> str:
        """Publish a cache entry whole: ``folders`` (name -> location to copy from) and ``files``
        (name -> text); ``marker`` (one of ``files``) is what readers test for, so it is written last.

        Locally the entry is assembled in a staging folder and renamed into place. On S3 there is no
        rename: the folders are copied first, and the marker is the last object written.
        """
        local_entry = Path(local_entry).resolve()
        if not self.remote:
            with staged(local_entry, folder=True, overwrite=False) as staging:
                for name, source in folders.items():
                    shutil.copytree(source, staging / name)
                for name, text in files.items():
                    (staging / name).write_text(text)
                if local_entry.exists() and not (local_entry / marker).is_file():
                    shutil.rmtree(local_entry)  # an entry without its marker is unfinished: replace it
            return str(local_entry)
        entry = self.location(local_entry)
        for name, source in folders.items():
            destination = self.fs_path(self.join(entry, name))
            self.filesystem.delete_dir_contents(destination, missing_dir_ok=True)
            pafs.copy_files(
                self.fs_path(source),
                destination,
                source_filesystem=self.filesystem,
                destination_filesystem=self.filesystem,
            )
        for name, text in files.items():
            if name != marker:
                self.write_text(self.join(entry, name), text)
        self.write_text(self.join(entry, marker), files[marker])
        return entry


def open_storage(cfg: Any) -> Storage:
    """The storage of a config (``ExperimentConfig`` or its dict form)."""
    plain = _plain(cfg)
    section = plain.get("storage") or {}
    return Storage(
        plain["output_dir"], section.get("uri", ""), section.get("endpoint", "").rstrip("/"), section.get("region", "")
    )


@contextlib.contextmanager
def local_checkpoint(location: str, cfg: Any) -> Iterator[str]:
    """A checkpoint folder readable on this node: the folder itself when local, else a temporary
    download that is removed afterwards (checkpoints of big models should not pile up on a node)."""
    if not location.startswith("s3://"):
        yield location
        return
    storage = open_storage(cfg)
    with tempfile.TemporaryDirectory(prefix="activeda-checkpoint-") as tmp:
        yield str(storage.download_dir(location, Path(tmp) / "checkpoint"))


def check_storage(cfg: Any) -> None:
    """Before any training: the bucket exists and a file can be written under the prefix.

    Raises ``ConfigError`` naming ``storage.endpoint`` (server unreachable) or ``storage.uri``.
    """
    plain = _plain(cfg)
    section = plain.get("storage") or {}
    uri, endpoint = section.get("uri", ""), section.get("endpoint", "").rstrip("/")
    if not uri:
        return
    where = f"'{uri}'" + (f" at {endpoint}" if endpoint else "")
    try:
        storage = Storage(plain["output_dir"], uri, endpoint, section.get("region", ""), quick=True)
        bucket = storage.filesystem.get_file_info(storage.bucket)
    except OSError as err:
        key = "storage.endpoint" if endpoint and _unreachable(err) else "storage.uri"
        raise ConfigError(key, f"cannot reach {where}: {_one_line(err)}") from None
    if bucket.type == pafs.FileType.NotFound:
        raise ConfigError(
            "storage.uri",
            f"bucket '{storage.bucket}' does not exist{' at ' + endpoint if endpoint else ''}"
            f" (or these credentials may not see it)",
        )
    probe = f"{storage.uri}/.activeda-write-check-{uuid.uuid4().hex[:8]}"
    try:
        storage.write_text(probe, "")
        storage.filesystem.delete_file(storage.fs_path(probe))
    except OSError as err:
        raise ConfigError("storage.uri", f"cannot write under {where}: {_one_line(err)}") from None


def _unreachable(err: OSError) -> bool:
    text = str(err)
    return any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "Couldn't resolve", "Timeout"))


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")
