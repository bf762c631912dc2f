"""The bundled synthetic domains: deterministic, in the real layouts, read by the real loaders."""

import numpy as np

from conftest import run_cli
from experiment_config import load_config
from trainers.data import build_domains
from trainers.data.synthetic import CITYSCAPES_ID_OF_CLASS, SYNTHETIC_CLASSES, ensure_synthetic_domains, generate_sample


def test_generation_is_deterministic_and_domains_differ():
    a_img, a_lab = generate_sample(3, "target", "train", 5, 32, 64)
    b_img, b_lab = generate_sample(3, "target", "train", 5, 32, 64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    other_img, _ = generate_sample(4, "target", "train", 5, 32, 64)
    assert not np.array_equal(a_img, other_img)
    src_img, _ = generate_sample(3, "source", "train", 5, 32, 64)
    assert src_img.shape == a_img.shape == (32, 64, 3) and a_lab.dtype == np.uint8


def test_class_statistics_are_street_like():
    counts = np.zeros(len(SYNTHETIC_CLASSES))
    for i in range(30):
        _, label = generate_sample(0, "target", "train", i, 64, 128)
        counts += np.bincount(label.ravel(), minlength=len(SYNTHETIC_CLASSES))
    share = counts / counts.sum()
    names = dict(zip(SYNTHETIC_CLASSES, share))
    assert (share > 0).all()  # every class appears
    assert names["pole"] + names["traffic_sign"] + names["person"] < 0.05  # small, thin, rare
    assert names["road"] > 0.05 and names["sky"] > 0.05


def test_difficulty_zero_renders_the_target_in_source_colours():
    img0, lab = generate_sample(1, "target", "train", 0, 32, 64, difficulty=0.0)
    src_img, src_lab = generate_sample(1, "source", "train", 0, 32, 64)
    road = lab == 0
    # Same palette (up to the source's own small lighting jitter), unlike the default target style.
    assert np.abs(img0[road].mean(0) - src_img[src_lab == 0].mean(0)).max() < 0.15
    img1, _ = generate_sample(1, "target", "train", 0, 32, 64, difficulty=1.0)
    assert np.abs(img1[road].mean(0) - img0[road].mean(0)).max() > 0.05


def test_written_layouts_are_read_back_by_the_real_loaders(tmp_path):
    settings = dict(source_images=3, target_train_images=4, target_val_images=2, seed=0, difficulty=1.0)
    source_root, target_root = ensure_synthetic_domains(tmp_path, 32, 64, settings)
    assert sorted(p.name for p in (source_root / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert (target_root / "gtFine" / "val" / "synthtown" / "synthtown_000001_000019_gtFine_labelIds.png").is_file()
    again = ensure_synthetic_domains(tmp_path, 32, 64, settings)
    assert again == (source_root, target_root)  # cached, not regenerated
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) == 0  # no staging left

    cfg = load_config(
        None,
        {
            "data.cache_dir": str(tmp_path),
            "data.height": 32,
            "data.width": 64,
            **{f"data.synthetic.{k}": v for k, v in settings.items()},
        },
    )
    domains = build_domains(cfg.data)
    assert (len(domains.source), len(domains.target_pool), len(domains.target_val)) == (3, 4, 2)
    _, expected = generate_sample(0, "target", "train", 2, 32, 64)
    assert np.array_equal(domains.target_pool.label(2).numpy(), expected)  # ids mapped back to classes
    image, label = domains.target_pool[2]
    assert tuple(image.shape) == (3, 32, 64) and label.max() < len(SYNTHETIC_CLASSES)
    assert len(CITYSCAPES_ID_OF_CLASS) == len(SYNTHETIC_CLASSES)


def test_synth_cli_writes_and_refuses_bad_input(tmp_path):
    out = tmp_path / "domains"
    result = run_cli(
        "orchestrator.synth",
        "--out",
        str(out),
        "--images",
        "4",
        "--height",
        "32",
        "--width",
        "64",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((out / "target" / "leftImg8bit" / "train" / "synthtown").iterdir())) == 4
    assert len(list((out / "target" / "leftImg8bit" / "val" / "synthtown").iterdir())) == 2
    again = run_cli("orchestrator.synth", "--out", str(out), cwd=tmp_path, timeout=60)
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr
    bad = run_cli("orchestrator.synth", "--out", str(tmp_path / "x"), "--difficulty", "3", cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --difficulty must be between 0 and 2"
    assert not (tmp_path / "x").exists()
