"""Writing a file or a folder so that readers see the old version or the new one, never a part.

Every file the project writes for another process (or a later run) to read goes through ``staged``:
the content is written under a staging name in the same folder as the final path, then renamed
into place. A rename within one folder is atomic on POSIX filesystems, so a reader never opens half
a file, and a crash leaves at most a hidden staging file behind, never a damaged final one. Any
failure inside the ``with`` block, or an interruption, removes the staging file or folder.

Staging names are ``.<name>.tmp-<pid>-<random><suffix>``: hidden (readers that skip dot files skip
them), unique per process and call (concurrent writers of one path never share a staging file),
and ending in the final suffix (so matplotlib, PIL or pandas pick the format from the name).

This module is the only place in the project that renames files into place; a test keeps it so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAGING_MARK = ".tmp-"

# Errors a filesystem gives when it cannot make hard links (FAT, some FUSE and network mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def staging_path(final: str | os.PathLike) -> Path:
    """A fresh staging name next to ``final`` (same folder, hidden, unique, same suffix)."""
    final = Path(final)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return final.with_name(f".{final.name}{STAGING_MARK}{token}{final.suffix}")


def is_staging_name(name: str) -> bool:
    """True for a name ``staging_path`` makes (an unfinished or abandoned write)."""
    return name.startswith(".") and STAGING_MARK in name


@contextmanager
def staged(
    path: str | os.PathLike, *, folder: bool = False, fsync: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a staging path for ``path``; when the block ends without an error, rename it to ``path``.

    ``folder=False``: the block creates the staging file (any writer that takes a path). ``folder=True``:
    the staging folder is created empty and the block fills it. The parent folder is created.

    ``fsync``: the staged file (or every file and folder in the staged folder) is flushed to disk
    before the rename, and the parent folder after it, so the new version survives a power loss.

    ``overwrite=False``: an existing ``path`` is never replaced; ``FileExistsError`` is raised instead
    (for a file, atomically, by hard-linking it into place; for a folder, by the rename itself).
    With ``overwrite=True`` an existing file is replaced atomically; an existing folder is moved
    aside, the new one renamed into place, and the old one removed.

    On any failure (in the block, the fsync or the rename) the staging file or folder is removed and
    the error propagates; ``path`` is then as it was before.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(final)
    if folder:
        staging.mkdir()
    try:
        yield staging
        if folder:
            if fsync:
                _fsync_tree(staging)
            _rename_folder(staging, final, overwrite)
        else:
            if fsync:
                _fsync_file(staging)
            _rename_file(staging, final, overwrite)
    except BaseException:
        _remove(staging)
        raise
    if fsync:
        _fsync_folder(final.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` whole (see ``staged``); returns ``path``."""
    with staged(path, fsync=fsync, overwrite=overwrite) as staging:
        staging.write_bytes(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = False, overwrite: bool = True
) -> Path:
    """Write ``text`` to ``path`` whole, encoded as given and with its line ends as they are."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync, overwrite=overwrite)


def atomic_write_json(
    path: str | os.PathLike,
    data: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Any = None,
    fsync: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write ``data`` as JSON (``json.dumps`` with these arguments) to ``path`` whole."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default)
    return atomic_write_text(path, text, fsync=fsync, overwrite=overwrite)


# --------------------------------------------------------------------------------------------- internals


def _rename_file(staging: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(staging, final)
        return
    try:
        os.link(staging, final)  # fails with FileExistsError when final exists: no window for a race
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        if final.exists():  # no hard links here: check, then rename (a narrow race, no better way)
            raise FileExistsError(errno.EEXIST, "file exists", str(final)) from None
        os.rename(staging, final)
        return
    staging.unlink()


def _rename_folder(staging: Path, final: Path, overwrite: bool) -> None:
    try:
        os.rename(staging, final)  # replaces an empty folder; refuses one with content
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "folder exists", str(final)) from None
    aside = staging_path(final)
    os.rename(final, aside)
    try:
        os.rename(staging, final)
    except BaseException:
        with contextlib.suppress(OSError):  # another writer's folder took the place: keep theirs
            os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _remove(staging: Path) -> None:
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open folders (Windows): nothing to flush this way
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):  # filesystems that do not sync folders
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            _fsync_file(Path(root) / name)
        _fsync_folder(Path(root))
