"""The one atomic-write helper: a final file or folder appears whole or not at all, a failure leaves
nothing behind, concurrent writers never share a staging file, and no other module renames files
into place by hand."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT
from trainers import files
from trainers.files import atomic_write_bytes, atomic_write_json, atomic_write_text, is_staging_name, staged


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_appears_whole_under_its_name_and_nothing_else_remains(tmp_path):
    final = tmp_path / "deep" / "er" / "figure.png"  # the parent folders are created
    with staged(final) as tmp:
        assert tmp.parent == final.parent and tmp.suffix == ".png" and is_staging_name(tmp.name)
        assert not final.exists()  # nothing under the final name while writing
        tmp.write_bytes(b"\x89PNG whole")
    assert final.read_bytes() == b"\x89PNG whole"
    assert _entries(final.parent) == ["figure.png"]

    assert atomic_write_text(tmp_path / "a.txt", "ä\r\nb") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "ä\r\nb".encode()  # line ends kept as given
    atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1]}, indent=1, sort_keys=True)
    assert (tmp_path / "b.json").read_text() == json.dumps({"a": [1], "z": 1}, indent=1)
    atomic_write_bytes(tmp_path / "b.json", b"{}")  # replaces by default
    assert (tmp_path / "b.json").read_bytes() == b"{}"


def test_staging_names_are_unique_per_call_and_keep_the_suffix(tmp_path):
    names = {files.staging_path(tmp_path / "curve.html").name for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.startswith(f".curve.html.tmp-{os.getpid()}-") and name.endswith(".html")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_file_write_leaves_the_previous_version_and_no_staging_file(tmp_path, error):
    final = tmp_path / "state.json"
    final.write_text("old")
    with pytest.raises(type(error)), staged(final) as tmp:
        tmp.write_text("half")
        raise error
    assert final.read_text() == "old" and _entries(tmp_path) == ["state.json"]


def test_a_failed_rename_or_fsync_leaves_no_staging_file(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):
        atomic_write_text(tmp_path / "x.txt", "new")
    monkeypatch.undo()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError, match="no space"):
        atomic_write_text(tmp_path / "y.txt", "new", fsync=True)
    assert _entries(tmp_path) == []


def test_fsync_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    atomic_write_text(tmp_path / "round.parquet", "x", fsync=True)
    assert len(synced) == 2 and is_staging_name(os.path.basename(synced[0])) and synced[1] == str(tmp_path)
    synced.clear()
    atomic_write_text(tmp_path / "plain.txt", "x")
    assert synced == []


def test_never_overwrite_refuses_an_existing_file_and_keeps_it(tmp_path):
    final = tmp_path / "round-0001.parquet"
    atomic_write_bytes(final, b"paid for", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(final, b"bought twice", overwrite=False)
    assert final.read_bytes() == b"paid for" and _entries(tmp_path) == ["round-0001.parquet"]


def test_never_overwrite_without_hard_links_still_refuses(tmp_path, monkeypatch):
    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")  # what a filesystem without hard links says

    monkeypatch.setattr(files.os, "link", no_links)
    final = tmp_path / "a.bin"
    atomic_write_bytes(final, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(final, b"second", overwrite=False)
    assert final.read_bytes() == b"first" and _entries(tmp_path) == ["a.bin"]


def test_a_folder_is_renamed_into_place_whole(tmp_path):
    final = tmp_path / "synthetic-abc"
    with staged(final, folder=True) as staging:
        assert staging.is_dir() and not final.exists()
        (staging / "sub").mkdir()
        (staging / "sub" / "a.png").write_bytes(b"a")
        (staging / "complete").write_text("{}")
    assert (final / "sub" / "a.png").read_bytes() == b"a" and (final / "complete").is_file()
    assert _entries(tmp_path) == ["synthetic-abc"]


def test_a_failed_folder_write_leaves_nothing_behind(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), staged(final, folder=True, fsync=True) as staging:
        (staging / "checkpoint").mkdir()
        (staging / "checkpoint" / "state.pt").write_bytes(b"half")
        raise RuntimeError("node lost")
    assert _entries(tmp_path) == []


def test_folders_never_overwritten_or_replaced_whole(tmp_path):
    final = tmp_path / "entry"
    with staged(final, folder=True, overwrite=False) as staging:
        (staging / "metrics.json").write_text("first")
    with pytest.raises(FileExistsError), staged(final, folder=True, overwrite=False) as staging:
        (staging / "metrics.json").write_text("second")
    assert (final / "metrics.json").read_text() == "first" and _entries(tmp_path) == ["entry"]

    with staged(final, folder=True) as staging:  # overwrite: the new folder replaces the old one whole
        (staging / "other.json").write_text("third")
    assert _entries(final) == ["other.json"] and _entries(tmp_path) == ["entry"]


def test_concurrent_writers_in_threads_never_collide_and_readers_see_whole_files(tmp_path):
    final = tmp_path / "progress.json"
    size = 200_000
    payloads = [bytes([k]) * size for k in range(8)]
    atomic_write_bytes(final, payloads[0])
    errors, seen = [], set()
    done = threading.Event()

    def writer(k):
        try:
            for _ in range(40):
                atomic_write_bytes(final, payloads[k])
        except BaseException as err:  # a shared staging file shows up here (FileNotFoundError) or below
            errors.append(err)

    def reader():
        while not done.is_set():
            data = final.read_bytes()
            if len(data) != size or data != data[:1] * size:
                errors.append(AssertionError(f"a reader saw a partial or mixed file ({len(data)} bytes)"))
                return
            seen.add(data[0])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert errors == []
    assert final.read_bytes() in payloads and _entries(tmp_path) == ["progress.json"]


def test_concurrent_writers_in_processes_never_collide(tmp_path):
    final = tmp_path / "sweep.json"
    code = (
        "import sys\nfrom trainers.files import atomic_write_bytes\n"
        "k = int(sys.argv[2])\n"
        "for _ in range(60):\n    atomic_write_bytes(sys.argv[1], bytes([k]) * 100_000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(final), str(k)], env=env, stderr=subprocess.PIPE)
        for k in range(4)
    ]
    partial = 0
    while any(w.poll() is None for w in writers):
        if final.exists():
            data = final.read_bytes()
            partial += len(data) != 100_000 or data != data[:1] * 100_000
    stderr = [w.communicate()[1].decode() for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, stderr
    assert partial == 0 and _entries(tmp_path) == ["sweep.json"]


# Ways of renaming a file into place by hand. ``trainers/files.py`` is the one place that does it.
HAND_WRITTEN = re.compile(r"os\.(replace|rename|renames)\(|shutil\.move\(|\b\w*(tmp|staging)\w*\.(replace|rename)\(")
# Moves that are no writes: a paid-for round set aside into another folder, kept, never rewritten.
NOT_A_WRITE = {("orchestrator/labels/store.py", "os.replace(mine, destination)")}


def _project_sources():
    skip = {"tests", "runs", "data", "build", "test-artifacts"}  # tests stage broken files on purpose; outputs
    for folder, subfolders, names in os.walk(ROOT):
        top = Path(folder) == ROOT
        subfolders[:] = [s for s in subfolders if not s.startswith(".") and not (top and s in skip)]
        yield from (Path(folder) / n for n in names if n.endswith(".py"))


def test_no_module_renames_files_into_place_by_hand():
    found = []
    for path in sorted(_project_sources()):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "trainers/files.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if HAND_WRITTEN.search(line) and (relative, line.strip()) not in NOT_A_WRITE:
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == [], "write through trainers.files.staged (or atomic_write_*) instead:\n" + "\n".join(found)
    # The pattern does catch each way (a check that cannot fail is no check).
    for line in ("os.replace(tmp, p)", "os.rename(a, b)", "tmp.replace(final)", "staging.rename(x)"):
        assert HAND_WRITTEN.search(line), line
