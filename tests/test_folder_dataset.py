"""A lab's own data in the folder layout (images, label PNGs, dataset.yaml): loaded as source and as
target through the real loaders' code, trained and evaluated in-process like every other format,
checked by ``python -m orchestrator.data check``, written by ``orchestrator.synth --layout folder``;
the YAML's palette reaches the overlays; SYNTHIA's mIoU-13 beside its mIoU-16.

The datasets here are written by the tests themselves, YAML text and PNGs, as a user would; the
expected class indices and pixel counts are worked out by hand from what was written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from experiment_config import ConfigError, load_config

# Raw label ids of the test datasets and the train ids dataset.yaml maps them to (255: void).
RAW_TO_TRAIN = {0: 255, 10: 0, 20: 1, 30: 2}
CLASSES = ("ground", "object", "sky")
COLOURS = {"ground": (10, 200, 30), "object": (250, 0, 250), "sky": (0, 128, 255)}
YAML_HEAD = """\
name: {name}
ignore_index: 255
classes:
  0: {{name: ground, color: [10, 200, 30]}}
  1: {{name: object, color: [250, 0, 250]}}
  2: {{name: sky, color: [0, 128, 255]}}
id_to_train_id:
  0: 255     # void
  10: 0
  20: 1
  30: 2
mious:
  miou_ground_sky: [ground, sky]
"""
HEIGHT, WIDTH = 24, 40  # native size of the test images; the config's input grid is 16 x 32


def scene(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Raw ids of one test label: sky on top, an object band that moves with ``index``, ground below,
    and a few void pixels."""
    ids = np.full((height, width), 10, np.uint8)
    ids[: height // 3] = 30
    top = height // 3 + index % 3
    ids[top : top + 4, 5 + 3 * index : 20 + 3 * index] = 20
    ids[-1, :3] = 0
    return ids


def render(ids: np.ndarray, seed: int) -> np.ndarray:
    """An RGB image in which each class has its own colour (plus noise), so a tiny model can learn."""
    base = {0: (0, 0, 0), 10: (90, 160, 60), 20: (200, 40, 200), 30: (80, 140, 230)}
    rgb = np.zeros((*ids.shape, 3), np.float64)
    for raw, colour in base.items():
        rgb[ids == raw] = colour
    rgb += np.random.default_rng(seed).normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_target(root: Path, pool: int = 4, val: int = 2) -> Path:
    """A target dataset with split folders: JPEG pool images under images/train, PNG val images."""
    (root).mkdir(parents=True)
    (root / "dataset.yaml").write_text(YAML_HEAD.format(name="lab-target"))
    for split, count, suffix in (("train", pool, ".jpg"), ("val", val, ".png")):
        for index in range(count):
            ids = scene(index + (10 if split == "val" else 0))
            save(render(ids, index), root / "images" / split / "city" / f"{index:03d}{suffix}")
            save(ids, root / "labels" / split / "city" / f"{index:03d}.png")
    return root


def make_source(root: Path, count: int = 4) -> Path:
    """A source dataset with a split list (images/NAME.png listed in splits/train.txt)."""
    root.mkdir(parents=True)
    (root / "dataset.yaml").write_text(YAML_HEAD.format(name="lab-source") + "splits:\n  train: splits/train.txt\n")
    names = [f"s{index:02d}.png" for index in range(count)]
    for index, name in enumerate(names):
        ids = scene(index)
        save(render(ids, 100 + index), root / "images" / name)
        save(ids, root / "labels" / name)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("# the source images\n" + "\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    return SimpleNamespace(source=make_source(base / "source"), target=make_target(base / "target"), base=base)


def lab_config(lab, cache: Path, **overrides):
    return load_config(
        None,
        {
            "data.source.format": "folder",
            "data.source.root": str(lab.source),
            "data.target.format": "folder",
            "data.target.root": str(lab.target),
            "data.class_set": "dataset",
            "data.height": 16,
            "data.width": 32,
            "data.cache_dir": str(cache),
            "source.steps": 2,
            "source.batch_size": 2,
            **overrides,
        },
        smoke=True,
    )


def mapped(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.int64)
    for raw, train in RAW_TO_TRAIN.items():
        out[ids == raw] = train
    return out


# ------------------------------------------------------------------------------------------ loaders


def test_folder_dataset_loads_as_source_and_target(lab):
    from trainers.data.folder import FolderSegmentation

    source = FolderSegmentation(lab.source, "train")
    assert len(source) == 4 and source.classes == CLASSES
    image, label = source[1]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
    assert torch.equal(label, torch.from_numpy(mapped(scene(1))))
    pool = FolderSegmentation(lab.target, "train", size=(16, 32))
    assert [Path(i).name for i, _ in pool.files] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
    assert pool[0][0].shape == (3, 16, 32) and pool.label(0).shape == (16, 32)
    assert torch.equal(pool.native_label(2), torch.from_numpy(mapped(scene(2))))
    val = FolderSegmentation(lab.target, "val", size=(16, 32), native_labels=True)
    image, label = val[1]
    assert image.shape == (3, 16, 32) and torch.equal(label, torch.from_numpy(mapped(scene(11))))


def test_a_named_class_set_takes_its_classes_from_the_yaml_by_name(lab):
    from trainers.data.dataset_yaml import read_dataset_yaml
    from trainers.data.folder import FolderSegmentation

    spec = read_dataset_yaml(lab.target / "dataset.yaml")
    two = spec.class_set.subset("two", ["sky", "ground"])
    assert two.colors == (COLOURS["sky"], COLOURS["ground"])
    label = FolderSegmentation(lab.target, "val", class_set=two).native_label(0)
    expected = {0: 255, 10: 1, 20: 255, 30: 0}  # object is not in the set: ignored
    ids = scene(10)
    assert torch.equal(label, torch.from_numpy(np.vectorize(expected.get)(ids).astype(np.int64)))


def test_the_bundled_yamls_are_the_real_datasets_id_tables():
    from trainers.data.dataset_yaml import bundled_dataset
    from trainers.data.labelmaps import CLASS_SETS, cityscapes_mapping

    cityscapes = bundled_dataset("cityscapes")
    assert cityscapes.class_set.names == CLASS_SETS["cityscapes19"]
    assert cityscapes.class_set.colors[0] == (128, 64, 128)  # road, cityscapesScripts' labels.py
    assert cityscapes.id_to_train_id[26] == 13 and cityscapes.id_to_train_id[9] == 255  # car; parking ignored
    assert bundled_dataset("synthia").id_to_train_id[10] == 11  # SYNTHIA's pedestrian is person
    assert cityscapes_mapping("synthetic").classes == CLASS_SETS["synthetic"]


# ------------------------------------------------------------------------ training and evaluation


def test_a_folder_pair_trains_and_evaluates_through_the_engine(lab, tmp_path):
    from trainers.data import build_domains, check_domains
    from trainers.engine import run_job
    from trainers.job import TrainJob

    cfg = lab_config(lab, tmp_path / "cache")
    check_domains(cfg.data)  # the preflight's decode of every file, cached
    assert (tmp_path / "cache" / "verified-files.json").is_file()
    domains = build_domains(cfg.data)
    assert domains.classes == CLASSES and len(domains.target_pool) == 4 and len(domains.target_val) == 2
    result = run_job(TrainJob(mode="source", config=cfg))
    metrics = result.metrics
    assert 0.0 <= metrics["target/miou"] <= 1.0 and metrics["train/steps"] == 2
    assert {f"target/iou/{name}" for name in CLASSES} <= set(metrics)
    # The YAML's further mIoU: the mean of the two classes' IoUs from the same evaluation.
    ious = [metrics["target/iou/ground"], metrics["target/iou/sky"]]
    assert metrics["target/miou_ground_sky"] == pytest.approx(np.nanmean(ious))
    assert tuple(result.confusion.shape) == (3, 3)
    # Native-resolution evaluation: every labeled val pixel at the labels' own 24 x 40 is scored.
    labeled = sum(int((mapped(scene(i)) != 255).sum()) for i in (10, 11))
    assert int(result.confusion.sum()) == labeled


def test_a_changed_id_table_is_verified_again(lab, tmp_path):
    """The verification cache keys files by the mapping too: files unchanged, YAML changed -> decoded again."""
    import shutil

    from trainers.data import DatasetError, check_domains

    target = tmp_path / "target"
    shutil.copytree(lab.target, target)
    cfg = lab_config(SimpleNamespace(source=lab.source, target=target), tmp_path / "cache")
    check_domains(cfg.data)
    text = (target / "dataset.yaml").read_text()
    (target / "dataset.yaml").write_text(text.replace("  0: 255     # void\n", ""))  # id 0 no longer declared
    with pytest.raises(DatasetError, match=r"has ids not in the lab-target id table \(defined: 10, 20, 30\): 0"):
        check_domains(cfg.data)


# --------------------------------------------------------------------- config and preflight checks


def test_the_template_config_reads_a_folder_pair(lab, tmp_path):
    from trainers.data import check_domains, resolve_class_set

    cfg = load_config(
        ROOT / "configs" / "bring_your_own.yaml",
        [f"data.source.root={lab.source}", f"data.target.root={lab.target}", f"data.cache_dir={tmp_path}"],
    )
    assert resolve_class_set(cfg.data).names == CLASSES
    check_domains(cfg.data)


def test_folder_format_needs_its_root():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"data.target.format": "folder"})
    assert str(err.value) == (
        "config key 'data.target.root': format 'folder' needs the dataset's folder (the one holding dataset.yaml)"
    )


def test_the_class_set_must_agree_with_the_target_and_the_source(lab, tmp_path):
    from orchestrator.sweep.preflight import preflight

    cfg = lab_config(lab, tmp_path / "cache", **{"data.class_set": "synthetic"})
    with pytest.raises(ConfigError) as err:
        preflight(cfg, f"sqlite:///{tmp_path}/m.db")
    assert str(err.value) == (
        f"config key 'data.class_set': class set 'synthetic' has classes the target dataset 'lab-target' "
        f"({lab.target / 'dataset.yaml'}) lacks: road, sidewalk, building, pole, traffic_sign, vegetation, person, "
        f"car (data.class_set: dataset takes the target's classes)"
    )
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    (narrow / "dataset.yaml").write_text(
        "classes:\n  0: {name: ground, color: [1, 2, 3]}\n  1: {name: sky, color: [4, 5, 6]}\n"
    )
    cfg = lab_config(lab, tmp_path / "cache", **{"data.source.root": str(narrow)})
    with pytest.raises(ConfigError) as err:
        preflight(cfg, f"sqlite:///{tmp_path}/m.db")
    assert str(err.value) == (
        f"config key 'data.class_set': the source dataset 'narrow' ({narrow / 'dataset.yaml'}) lacks classes "
        f"of class set 'lab-target': object"
    )
    (narrow / "dataset.yaml").write_text("classes: [ground, sky]\n")
    with pytest.raises(ConfigError) as err:
        preflight(cfg, f"sqlite:///{tmp_path}/m.db")
    assert str(err.value) == (
        f"config key 'data.source.root': dataset file '{narrow / 'dataset.yaml'}': classes: must be a non-empty "
        f"mapping train id -> {{name: NAME, color: [R, G, B]}}, got ['ground', 'sky']"
    )
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "cache").exists()


def test_withheld_classes_are_checked_against_the_yaml_classes(lab, tmp_path):
    from orchestrator.sweep.preflight import check_unlabeled_classes

    cfg = lab_config(lab, tmp_path / "cache", **{"selection.unlabeled_classes": ["car"]})
    with pytest.raises(ConfigError, match="unknown class 'car' in class set 'lab-target'; choose from: ground, object"):
        check_unlabeled_classes(cfg)


# ------------------------------------------------------------------------------- the palette


def test_the_yaml_palette_reaches_the_overlay(lab, tmp_path):
    from orchestrator.labels.store import LabeledPixels, LabelStore
    from orchestrator.round.loop import write_round_artifacts
    from trainers.data import build_domains
    from trainers.data.palette import class_palette

    domains = build_domains(lab_config(lab, tmp_path / "cache").data)
    assert domains.class_set.colors == tuple(COLOURS[name] for name in CLASSES)
    assert class_palette(domains.classes, domains.class_set.colors)[1] == (250 / 255, 0.0, 250 / 255)
    store = LabelStore(tmp_path / "labels")
    point = LabeledPixels(
        0,
        np.array([5], np.int32),
        np.array([9], np.int32),
        np.array([1], np.uint8),
        height=16,
        width=32,
        clicks=1.0,
        regions=False,
    )
    store.append_round(1, "labor_ppl", [point])
    write_round_artifacts(tmp_path / "round-001", domains, store, 1, {"target/iou/object": 0.5})
    drawn = np.asarray(Image.open(tmp_path / "round-001" / "selected-image00000.png").convert("RGB"))
    scale = drawn.shape[1] // 32  # the overlay upscales the 16 x 32 grid by an integer factor
    assert tuple(drawn[5 * scale + scale // 2, 9 * scale + scale // 2]) == COLOURS["object"]


# ------------------------------------------------------------------------------- data check


def check(path: Path, capsys) -> tuple[int, list[str], str]:
    from orchestrator.data import main

    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    return code, err.splitlines(), out


def files_of(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_data_check_accepts_a_good_dataset_and_counts_pixels(lab, capsys):
    before = files_of(lab.base)
    code, err, out = check(lab.target, capsys)
    assert code == 0 and err == [], err
    lines = out.splitlines()
    assert lines[0] == f"dataset 'lab-target' ({lab.target / 'dataset.yaml'}): 3 classes"
    assert lines[1] == "images: train 4, val 2"
    counts = {split: np.zeros(4, np.int64) for split in ("train", "val")}
    for split, indices in (("train", range(4)), ("val", (10, 11))):
        for index in indices:
            ids = scene(index)
            counts[split] += [(ids == raw).sum() for raw in (10, 20, 30, 0)]
    assert lines[3].split() == ["train", "id", "class", "train", "val"]
    for row, line in zip((0, 1, 2, 3), lines[4:8]):  # ground, object, sky, then the ignored pixels
        shown = [int(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*) \(", line)]
        assert shown == [counts["train"][row], counts["val"][row]], line
    assert lines[7].split()[0] == "(ignored)"
    assert lines[-1] == "ok: no problems found"
    assert files_of(lab.base) == before  # nothing written


@pytest.fixture
def broken(lab, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(lab.target, root)
    return root


def test_data_check_names_an_undeclared_id(broken, capsys):
    label = broken / "labels" / "val" / "city" / "001.png"
    ids = scene(11)
    ids[0, 0], ids[1, 1] = 40, 7
    save(ids, label)
    code, err, out = check(broken, capsys)
    assert code == 1 and err == [
        f"error: label '{label}' has ids not in the lab-target id table (defined: 0, 10, 20, 30): 7, 40"
    ]
    assert out.splitlines()[-1] == "1 problem found"


def test_data_check_names_a_size_mismatch_and_a_missing_label(broken, capsys):
    image = broken / "images" / "train" / "city" / "002.jpg"
    save(render(scene(2, HEIGHT, WIDTH - 8), 0), image)
    (broken / "labels" / "train" / "city" / "003.png").unlink()
    code, err, _ = check(broken, capsys)
    label = broken / "labels" / "train" / "city" / "002.png"
    assert code == 1 and err == [
        f"error: image '{broken / 'images' / 'train' / 'city' / '003.jpg'}' has no label file "
        f"'{broken / 'labels' / 'train' / 'city' / '003.png'}'",
        f"error: label '{label}' is 40x24 but image '{image}' is 32x24 (width x height)",
    ]


@pytest.mark.parametrize(
    "change, problems",
    [
        (
            lambda text: text.replace("  2: {name: sky,", "  1: {name: sky,"),
            [" is not valid YAML at line 6, column 3: key 1 is given twice"],
        ),
        (
            lambda text: text.replace("[0, 128, 255]", "[0, 128, 256]").replace("name: object", "name: ground"),
            [
                ": classes.1.name: 'ground' is also the name of classes.0",
                ": classes.2.color: must be [R, G, B] with integers 0..255, got [0, 128, 256]",
            ],
        ),
        (
            lambda text: text.replace("  30: 2", "  30: 3\n  -1: 0").replace("ignore_index: 255", "ignore_index: 2"),
            [
                ": ignore_index: 2 is also a train id (classes.2); use a value no class has",
                ": id_to_train_id.0: 255 is neither a train id of classes (0..2) nor ignore_index 2",
                ": id_to_train_id.30: 3 is neither a train id of classes (0..2) nor ignore_index 2",
                ": id_to_train_id.-1: a label id must be an integer 0..65535 (a 16-bit PNG value), got -1",
            ],
        ),
        (
            lambda text: text + "palette: []\n" + "splits:\n  train: splits/train.txt\n  val: splits/val.txt\n",
            [
                ": palette: unknown key; allowed: name, ignore_index, classes, id_to_train_id, splits, mious",
                ": splits.train: split list '{root}/splits/train.txt' does not exist",
                ": splits.val: split list '{root}/splits/val.txt' does not exist",
            ],
        ),
        (
            lambda text: "- just\n- a list\n",
            [" holds a list, not a mapping of keys (name, ignore_index, classes, id_to_train_id, splits, mious)"],
        ),
    ],
)
def test_data_check_names_every_problem_of_a_bad_yaml(broken, capsys, change, problems):
    yaml_file = broken / "dataset.yaml"
    yaml_file.write_text(change(yaml_file.read_text()))
    before = files_of(broken)
    code, err, out = check(broken, capsys)
    assert code == 1 and err == [
        f"error: dataset file '{yaml_file}'{problem.format(root=broken)}" for problem in problems
    ], err
    assert out.splitlines()[-1] == f"{len(problems)} problem{'s' if len(problems) > 1 else ''} found"
    assert files_of(broken) == before


def test_data_check_names_bad_split_list_lines(lab, tmp_path, capsys):
    import shutil

    root = tmp_path / "source"
    shutil.copytree(lab.source, root)
    (root / "splits" / "val.txt").write_text("s00.png\nmissing.png\ns00.png\n../outside.png\nnotes.txt\n")
    yaml_file = root / "dataset.yaml"
    yaml_file.write_text(yaml_file.read_text() + "  val: splits/val.txt\n")
    code, err, _ = check(root, capsys)
    listing = root / "splits" / "val.txt"
    assert code == 1 and err == [
        f"error: split list '{listing}' line 2: image '{root / 'images' / 'missing.png'}' does not exist",
        f"error: split list '{listing}' line 3: 's00.png' is also on line 1",
        f"error: split list '{listing}' line 4: '../outside.png' must be a path under {root / 'images'}",
        f"error: split list '{listing}' line 5: 'notes.txt' is not a .png, .jpg, .jpeg image",
    ], err


def test_data_check_of_a_folder_without_dataset_yaml(tmp_path, capsys):
    code, err, _ = check(tmp_path, capsys)
    assert code == 1 and err == [f"error: dataset file '{tmp_path / 'dataset.yaml'}' does not exist"]


def test_data_help_is_fast_and_listed_in_activeda(tmp_path):
    """``--help`` imports neither torch nor anything heavy (it answers in about 0.2 s here)."""
    probe = (
        "import sys, runpy; sys.argv = ['x', 'check', '--help']\n"
        "try:\n    runpy.run_module('orchestrator.data', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'PIL', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "PATH" in result.stdout
    from orchestrator.cli import COMMANDS

    assert COMMANDS["data"][0] == "orchestrator.data"


# ----------------------------------------------------------------------------------- synth


def test_synth_writes_a_folder_layout_that_data_check_accepts(tmp_path, capsys):
    from orchestrator.synth import main as synth

    assert (
        synth(["--out", str(tmp_path / "s"), "--layout", "folder", "--images", "2", "--height", "16", "--width", "32"])
        == 0
    )
    capsys.readouterr()
    for domain, splits in (("source", "train 2"), ("target", "train 2, val 1")):
        code, err, out = check(tmp_path / "s" / domain, capsys)
        assert code == 0 and err == [], err
        assert out.splitlines()[1] == f"images: {splits}"
    cfg = load_config(
        None,
        {
            "data.source.format": "folder",
            "data.source.root": str(tmp_path / "s" / "source"),
            "data.target.format": "folder",
            "data.target.root": str(tmp_path / "s" / "target"),
            "data.class_set": "synthetic",  # the generator's classes: the named set agrees with the YAML
            "data.cache_dir": str(tmp_path / "cache"),
        },
    )
    from trainers.data import build_domains

    domains = build_domains(cfg.data)
    assert domains.classes == domains.target_pool.classes and len(domains.source) == 2


# ------------------------------------------------------------------------------ SYNTHIA's mIoUs


def test_synthia16_reports_miou13_over_the_same_confusion():
    from trainers.data import resolve_class_set
    from trainers.engine import job_metrics

    cfg = load_config(None, {"data.class_set": "synthia16", "data.source.format": "synthia"})
    class_set = resolve_class_set(cfg.data)
    names = class_set.names
    assert len(names) == 16 and class_set.mious[0][0] == "miou13"
    road, wall, fence, car = (names.index(n) for n in ("road", "wall", "fence", "car"))
    confusion = torch.diag(torch.full((16,), 10, dtype=torch.int64))
    confusion[wall, wall], confusion[wall, road] = 0, 10  # every wall pixel predicted as road
    confusion[car, fence] = 10  # 10 more car pixels, predicted as fence
    # IoUs by hand: road 10/20, wall 0/10, fence 10/20, car 10/20, the 12 others 1.
    trajectory = SimpleNamespace(job=SimpleNamespace(planned_steps=0), global_step=0, start_step=0, loss_sums={})
    metrics = job_metrics(trajectory, confusion, names, 1.0, 1, class_set.miou_indices())
    assert metrics["target/miou"] == pytest.approx((0.5 + 0 + 0.5 + 0.5 + 12) / 16)
    # mIoU-13: without wall, fence and pole; road and car keep the IoUs the 16-class evaluation gave them.
    assert metrics["target/miou13"] == pytest.approx((0.5 + 0.5 + 11) / 13)
    cityscapes = resolve_class_set(load_config(None, {"data.class_set": "cityscapes19"}).data)
    assert cityscapes.mious == ()  # only SYNTHIA's 16 report a second mIoU
