"""Staging datasets to cluster nodes (orchestrator/cluster/staging.py), without a cluster: the manifest,
a node's check of its copy, the head's check, a worker's fill over a local Ray, and bad input.
tests/test_cluster_nodes.py runs the whole command on a real three-node cluster."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, run_cli
from orchestrator.cluster import staging
from orchestrator.cluster.staging import MANIFEST, StagingError, check_copy, ensure_manifest, read_manifest


def dataset(root):
    """A small dataset in GTA5's layout: images/ and labels/, one file larger than a fetch chunk."""
    for i in range(6):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{i:05d}.png").write_bytes(os.urandom(1000 + i))
        (root / "labels" / f"{i:05d}.png").write_bytes(bytes([i]) * 300)
    (root / "images" / "big.png").write_bytes(os.urandom(staging.CHUNK_BYTES + 12345))
    return root


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_is_written_once_in_sha256sum_format(tmp_path):
    root = dataset(tmp_path / "gta5")
    entries = ensure_manifest(root, progress=lambda msg: None)
    manifest = root / MANIFEST
    assert entries == {p.relative_to(root).as_posix(): sha(p) for p in root.rglob("*.png")}
    assert read_manifest(manifest) == entries
    check = subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    written = manifest.stat().st_mtime_ns
    assert ensure_manifest(root, progress=lambda msg: None) == entries  # read, not written again
    assert manifest.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: (r / "images" / "extra.png").write_bytes(b"x"),
            "1 file(s) are not in its manifest (first: images/extra.png)",
        ),
        (
            lambda r: (r / "labels" / "00003.png").unlink(),
            "1 file(s) of its manifest are missing (first: labels/00003.png)",
        ),
        (lambda r: (r / MANIFEST).write_text("not a checksum line\n"), "line 1 is not '<sha256>  <relative path>'"),
        (
            lambda r: (r / MANIFEST).write_text("0" * 64 + "  ../outside.png\n"),
            "line 1 is not '<sha256>  <relative path>'",
        ),
    ],
)
def test_a_dataset_that_no_longer_matches_its_manifest_is_refused_in_one_line(tmp_path, change, expected):
    root = dataset(tmp_path / "gta5")
    ensure_manifest(root, progress=lambda msg: None)
    change(root)
    with pytest.raises(StagingError) as err:
        ensure_manifest(root, progress=lambda msg: None)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_missing_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(StagingError, match="no such folder"):
        ensure_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagingError, match="the folder has no files"):
        ensure_manifest(tmp_path / "empty")


def damaged_copy(tmp_path):
    """A source with its manifest, and a copy of it with one file cut short, one with a byte flipped
    (same size and time), one missing, and an abandoned staging file."""
    source = dataset(tmp_path / "source" / "gta5")
    manifest = ensure_manifest(source, progress=lambda msg: None)
    copy = tmp_path / "copy" / "gta5"
    shutil.copytree(source, copy)
    cut = copy / "images" / "00001.png"
    cut.write_bytes(cut.read_bytes()[:100])
    flipped = copy / "labels" / "00002.png"
    stat = flipped.stat()
    data = bytearray(flipped.read_bytes())
    data[7] ^= 0xFF
    flipped.write_bytes(bytes(data))
    os.utime(flipped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (copy / "labels" / "00004.png").unlink()
    (copy / "images" / ".00005.png.tmp-99-abcd.png").write_bytes(b"half")
    return source, manifest, copy


def test_check_copy_finds_missing_cut_and_flipped_files_and_removes_abandoned_staging_files(tmp_path):
    _, manifest, copy = damaged_copy(tmp_path)
    verified, missing, differing, abandoned = check_copy(copy, manifest)
    assert missing == ["labels/00004.png"]
    assert sorted(differing) == ["images/00001.png", "labels/00002.png"]
    assert len(verified) == len(manifest) - 3 and abandoned == 1
    assert not (copy / "images" / ".00005.png.tmp-99-abcd.png").exists()


def test_head_check_deletes_what_differs_so_the_upload_brings_it_again(tmp_path):
    _, _, copy = damaged_copy(tmp_path)
    # Nothing is ready for the workers, so no Ray is started.
    result = staging.stage_nodes([str(copy)], address="unused", progress=lambda msg: None)
    assert result["head_bad"] == {str(copy.resolve()): ["images/00001.png", "labels/00002.png", "labels/00004.png"]}
    assert not (copy / "images" / "00001.png").exists() and not (copy / "labels" / "00002.png").exists()
    (copy / MANIFEST).unlink()
    result = staging.stage_nodes([str(copy)], address="unused", progress=lambda msg: None)
    assert result["problems"] == [f"head: '{copy.resolve()}' has no manifest {MANIFEST}; the upload did not arrive"]


def test_a_worker_fills_its_copy_from_the_head_keeping_what_is_right(tmp_path, ray_local):
    source, manifest, copy = damaged_copy(tmp_path)
    kept = {p: p.stat().st_ino for p in copy.rglob("*.png") if not p.name.startswith(".")}
    kept = {p: ino for p, ino in kept.items() if sha(p) == manifest[p.relative_to(copy).as_posix()]}
    server = ray_local.remote(staging.FileServer).remote(str(source))
    manifest_text = (source / MANIFEST).read_text()
    report = ray_local.get(ray_local.remote(staging.fill_copy).remote(str(copy), manifest_text, server, "worker test"))
    assert report["problems"] == [] and report["abandoned"] == 1
    assert report["copied"] == ["labels/00004.png"]
    assert sorted(report["repaired"]) == ["images/00001.png", "labels/00002.png"]
    assert {p.relative_to(copy).as_posix(): sha(p) for p in copy.rglob("*.png")} == manifest
    assert (copy / MANIFEST).read_text() == manifest_text  # written last, once every file is right
    assert all(p.stat().st_ino == ino for p, ino in kept.items())  # never copied again
    assert "did not match their checksum (corrupt or partial) copied anew" in staging.NodeReport(**report).line()


def test_stage_refuses_bad_input_in_one_line(tmp_path):
    source = dataset(tmp_path / "gta5")
    cases = [
        (["--cluster-config", str(tmp_path / "nope.yaml"), "--data", str(source)], "--cluster-config"),
        (["--cluster-config", __file__, "--data", str(tmp_path / "nope")], "no such folder"),
        (["--cluster-config", __file__, "--data", str(source), "--data", str(source)], "share a folder name"),
    ]
    for args, expected in cases:
        result = run_cli("orchestrator.cluster", "stage", *args, cwd=tmp_path, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


def test_node_types_the_autoscaler_may_start_after_staging_are_named():
    # cluster.yaml's GPU types scale from 0; cluster.local.yaml's hosts are fixed.
    assert staging.autoscaled_types(ROOT / "cluster.yaml") == ["gpu_single", "gpu_multi"]
    assert staging.autoscaled_types(ROOT / "cluster.local.yaml") == []
