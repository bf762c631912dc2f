"""The bundled domains, version 2: long-tailed classes, thin classes at least 2 px wide, several looks
per class (colour lookup fails), determinism, caches keyed by version; versions 1 and 2 unchanged."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from experiment_config import ConfigError, load_config
from trainers.data import CLASS_SETS, build_domains, synthetic_v2
from trainers.data.synthetic import (
    CITYSCAPES_IDS_OF_VERSION,
    CLASSES_OF_VERSION,
    domain_hash,
    ensure_synthetic_domains,
    generate_sample,
)
from trainers.data.synthetic_v2 import CLASSES, SOURCE_LOOKS, TARGET_LOOKS, THIN_CLASSES

NAMES = dict(enumerate(CLASSES))
LARGE = ("road", "building", "vegetation")  # 15-30% of the pixels each, like Cityscapes' largest
RARE = ("wall", "fence", "pole", "traffic_light", "traffic_sign", "person")  # 0.1-1.5% each


def shares(domain, images=80, size=(64, 128), seed=5):
    counts = np.zeros(len(CLASSES))
    for i in range(images):
        _, label = generate_sample(seed, domain, "train", i, *size)
        counts += np.bincount(label.ravel(), minlength=len(CLASSES))
    return dict(zip(CLASSES, counts / counts.sum()))


@pytest.mark.parametrize("domain", ["source", "target"])
def test_classes_are_long_tailed_like_cityscapes(domain):
    share = shares(domain)
    assert len(CLASSES) >= 12 and all(v > 0 for v in share.values())
    assert all(0.15 <= share[name] <= 0.30 for name in LARGE), share
    assert all(0.001 <= share[name] <= 0.015 for name in RARE), share


def test_the_target_has_more_cars_and_persons_and_fewer_trees_than_the_source():
    source, target = shares("source"), shares("target")
    assert target["car"] > source["car"] and target["person"] > source["person"]
    assert target["vegetation"] < source["vegetation"]


@pytest.mark.parametrize("size", [(64, 128), (32, 64), (48, 96)])
def test_thin_classes_are_at_least_two_pixels_wide_everywhere(size):
    """Every pixel of a thin class lies in a 2 x 2 square of its class: an opening by 2 x 2 keeps them all."""
    for domain in ("source", "target"):
        for index in range(40):
            _, label = generate_sample(2, domain, "train", index, *size)
            for cls in THIN_CLASSES:
                mask = label == cls
                kept = ndimage.binary_opening(mask, structure=np.ones((2, 2), bool))
                assert np.array_equal(mask, kept), (domain, index, NAMES[cls])


def colour_lookup_miou(version, levels=8, fit_images=40, test_images=20):
    """mIoU on held-out source images of a per-colour majority classifier (RGB quantised to
    ``levels`` per channel) fitted on source images: how far colour alone identifies a class."""

    def pixels(split, count):
        codes, labels = [], []
        for i in range(count):
            image, label = generate_sample(0, "source", split, i, 64, 128, version=version)
            q = np.minimum((image * levels).astype(int), levels - 1)
            codes.append(((q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]).ravel())
            labels.append(label.ravel())
        return np.concatenate(codes), np.concatenate(labels)

    codes, labels = pixels("train", fit_images)
    classes = len(CLASSES_OF_VERSION[version])
    table = np.zeros((levels**3, classes))
    np.add.at(table, (codes, labels), 1)
    codes, labels = pixels("val", test_images)
    predicted = table.argmax(axis=1)[codes]
    ious = [
        ((predicted == k) & (labels == k)).sum() / ((predicted == k) | (labels == k)).sum()
        for k in range(classes)
        if (labels == k).any()
    ]
    return float(np.mean(ious))


def test_colour_lookup_does_not_solve_the_source():
    """Version 1 was solved by colour (one flat colour per class); version 2 is not, with every class
    drawn in three looks of overlapping colours and textures."""
    assert colour_lookup_miou(1) > 0.95
    assert colour_lookup_miou(2) < 0.55
    assert all(len(SOURCE_LOOKS[k]) >= 3 and len(TARGET_LOOKS[k]) == len(SOURCE_LOOKS[k]) for k in range(len(CLASSES)))


def test_a_source_class_comes_in_several_looks():
    """Objects of one class differ: the mean colours of a class's objects over a sample spread widely."""
    spread = {}
    for cls in ("building", "car", "sidewalk", "vegetation", "pole"):
        k = CLASSES.index(cls)
        means = []
        for i in range(30):
            image, label = generate_sample(1, "source", "train", i, 64, 128)
            if (label == k).sum() > 4:
                means.append(image[label == k].mean(axis=0))
        spread[cls] = float(np.ptp(np.array(means), axis=0).max())
    assert all(v > 0.2 for v in spread.values()), spread


def test_a_target_look_is_the_cameras_version_of_a_source_look_of_its_class():
    """Class-consistent target looks: look j of a class in the target has the texture of look j in the
    source, with the same parameters and a colour within 0.35 per channel (the camera's version), so
    ``difficulty`` can move one into the other."""
    for k in range(len(CLASSES)):
        for (c0, kind0, p0), (c1, kind1, p1) in zip(SOURCE_LOOKS[k], TARGET_LOOKS[k], strict=True):
            assert kind0 == kind1 and set(p0) == set(p1), NAMES[k]
            assert np.abs(np.subtract(c0, c1)).max() <= 0.35, NAMES[k]


def test_generation_is_deterministic_by_seed():
    a = generate_sample(7, "target", "val", 3, 64, 128)
    b = generate_sample(7, "target", "val", 3, 64, 128)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = generate_sample(8, "target", "val", 3, 64, 128)
    assert not np.array_equal(a[1], c[1])
    image, label = a
    assert image.shape == (64, 128, 3) and image.dtype == np.float32 and label.dtype == np.uint8
    assert image.min() >= 0 and image.max() <= 1 and label.max() < len(CLASSES)


def test_difficulty_zero_renders_the_target_in_the_source_looks():
    """Without the style shift a target image is the source's looks on the target's layout: no camera
    effects, so its colours sit near those of the source's looks; at difficulty 1 they do not."""
    palette = np.array([look[0] for k in range(len(CLASSES)) for look in SOURCE_LOOKS[k]])

    def off_palette(difficulty):
        image, label = generate_sample(4, "target", "train", 0, 64, 128, difficulty=difficulty)
        road = image[label == CLASSES.index("road")].mean(axis=0)
        return float(np.abs(palette - road).max(axis=1).min())

    assert off_palette(0.0) < 0.1 and off_palette(1.0) > off_palette(0.0)


# Digests of earlier versions' images and labels, as generated before the next version existed:
# version 1 before version 2 (commit 80f2826), version 2 before version 3 (commit 21ebce8), version 3
# before version 4 (commit 82dfc20; each of these images holds walls and traffic lights).
EARLIER_VERSION_DIGESTS = {
    1: {
        (0, "source", "train", 0, 64, 128, 1.0): "ae665677eb54a2db",
        (0, "target", "train", 3, 64, 128, 1.0): "83ccae484d8eb6ab",
        (0, "target", "val", 1, 64, 128, 1.0): "6880c446eb037987",
        (5, "target", "train", 7, 32, 64, 0.5): "30958e5ac716354a",
        (2, "source", "train", 11, 48, 96, 1.0): "2e2b8d0da69f534a",
        (1, "target", "val", 2, 64, 128, 2.0): "f35ab5ade132bff6",
    },
    2: {
        (0, "source", "train", 0, 64, 128, 1.0): "9cc9ec58badabbc5",
        (3, "target", "train", 5, 64, 128, 1.0): "46e262284841bc6b",
        (7, "target", "val", 2, 64, 128, 2.0): "c5c96f4e443d5c91",
        (101, "target", "train", 11, 32, 64, 0.5): "b44f96ab2f06f8a5",
    },
    3: {
        (0, "source", "train", 5, 64, 128, 1.0): "cdeb8c837e947f0c",
        (4, "target", "train", 0, 64, 128, 1.0): "c8ed2883ace9689e",
        (8, "target", "val", 1, 48, 96, 2.0): "98bd267fa0161ecf",
        (102, "target", "train", 5, 32, 64, 0.5): "45ed2635d93a2830",
    },
}


@pytest.mark.parametrize("version", sorted(EARLIER_VERSION_DIGESTS))
def test_an_earlier_version_is_byte_for_byte_what_it_was(version):
    for args, digest in EARLIER_VERSION_DIGESTS[version].items():
        image, label = generate_sample(*args, version=version)
        assert hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()[:16] == digest, args


@pytest.mark.parametrize("version, changed_class", [(3, "wall"), (4, "traffic_light")])
def test_a_version_is_the_one_before_but_for_the_class_it_mends(version, changed_class):
    cls, seen = CLASSES.index(changed_class), 0
    for args in [
        (seed, domain, "train", i, 64, 128, 1.0) for seed in (0, 9) for domain in ("source", "target") for i in range(6)
    ]:
        before, label_before = generate_sample(*args, version=version - 1)
        image, label = generate_sample(*args, version=version)
        assert np.array_equal(label_before, label), args
        on_class = label == cls
        # (the target camera's 3 x 3 blur carries an object's colour one pixel beyond it)
        near_class = ndimage.binary_dilation(on_class, structure=np.ones((3, 3), bool))
        assert np.array_equal(before[~near_class], image[~near_class]), args
        if on_class.any():
            seen += 1
            assert not np.allclose(before[on_class], image[on_class]), args
    assert seen >= 4


def test_a_version_3_wall_shares_no_colour_with_a_facade():
    """Version 2's second wall look was a facade's brick red; in version 3 every wall look is at
    least 0.1 (RGB, 0-1) from every facade look, in both domains (texture still tells grey walls
    from grey pavements and facades)."""
    for looks in synthetic_v2.LOOKS_OF_VERSION[3]:
        walls = np.array([look[0] for look in looks[CLASSES.index("wall")]])
        facades = np.array([look[0] for look in looks[CLASSES.index("building")]])
        assert np.abs(walls[:, None] - facades[None]).max(axis=2).min() >= 0.1
    v2_walls = np.array([look[0] for look in synthetic_v2.LOOKS_OF_VERSION[2][0][CLASSES.index("wall")]])
    v2_facades = np.array([look[0] for look in synthetic_v2.LOOKS_OF_VERSION[2][0][CLASSES.index("building")]])
    assert np.abs(v2_walls[:, None] - v2_facades[None]).max(axis=2).min() < 0.1  # what version 3 mends


def test_caches_are_keyed_by_version_and_labels_read_back_in_the_versions_class_set(tmp_path):
    settings = dict(source_images=2, target_train_images=3, target_val_images=2, seed=0, difficulty=1.0)
    hashes = {v: domain_hash(32, 64, {**settings, "version": v}) for v in (1, 2, 3, 4)}
    assert len(set(hashes.values())) == 4
    assert domain_hash(32, 64, settings) == hashes[4]  # the default
    for version, class_set in ((1, "synthetic"), (2, "synthetic_v2"), (3, "synthetic_v2"), (4, "synthetic_v2")):
        assert CLASS_SETS[class_set] == CLASSES_OF_VERSION[version]
        assert len(CITYSCAPES_IDS_OF_VERSION[version]) == len(CLASSES_OF_VERSION[version])
        ensure_synthetic_domains(tmp_path, 32, 64, {**settings, "version": version})
        cfg = load_config(
            None,
            {
                "data.cache_dir": str(tmp_path),
                "data.height": 32,
                "data.width": 64,
                "data.class_set": class_set,
                **{f"data.synthetic.{k}": v for k, v in {**settings, "version": version}.items()},
            },
        )
        domains = build_domains(cfg.data)
        _, expected = generate_sample(0, "target", "train", 1, 32, 64, version=version)
        assert np.array_equal(domains.target_pool.label(1).numpy(), expected)
        assert domains.classes == CLASSES_OF_VERSION[version]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]) == 4


def test_the_class_set_must_match_the_bundled_version():
    assert load_config(None, {}).data.class_set == "synthetic_v2"
    load_config(None, {"data.synthetic.version": 1, "data.class_set": "synthetic"})
    with pytest.raises(ConfigError, match="data.synthetic.version=1 are labeled in class set 'synthetic'"):
        load_config(None, {"data.synthetic.version": 1})
    with pytest.raises(ConfigError, match="'data.synthetic.version': must be <= 4"):
        load_config(None, {"data.synthetic.version": 5})
    load_config(None, {"data.synthetic.version": 2})
    load_config(None, {"data.synthetic.version": 3})
    with pytest.raises(ValueError, match="unknown generator version 5; choose one of: 1, 2, 3, 4"):
        generate_sample(0, "source", "train", 0, 32, 64, version=5)


def test_a_version_4_light_wears_no_pole_or_sign_colour_and_shows_three_lenses():
    """In versions 2 and 3 a light's housings were a pole's dark grey and dark green and a yellow
    sign's yellow; in version 4 every housing is at least 0.1 (RGB, 0-1) from every pole and sign look,
    in both domains, and a light shows red over amber over green."""
    light, pole, sign = (CLASSES.index(name) for name in ("traffic_light", "pole", "traffic_sign"))
    for looks in synthetic_v2.LOOKS_OF_VERSION[4]:
        housings = np.array([look[0] for look in looks[light]])
        others = np.array([look[0] for look in looks[pole] + looks[sign]])
        assert np.abs(housings[:, None] - others[None]).max(axis=2).min() >= 0.1
    v3 = synthetic_v2.LOOKS_OF_VERSION[3][0]
    v3_housings = np.array([look[0] for look in v3[light]])
    v3_others = np.array([look[0] for look in v3[pole] + v3[sign]])
    assert np.abs(v3_housings[:, None] - v3_others[None]).max(axis=2).min() < 0.1  # what version 4 mends

    rng = np.random.default_rng(0)
    mask = np.zeros((6, 2), bool)
    mask[:, :] = True
    yy, xx = np.mgrid[0:6, 0:2]
    look = synthetic_v2.LIGHT_LOOKS_V4["source"][0]
    rgb = synthetic_v2._texture(rng, look, mask, yy, xx, {}).reshape(6, 2, 3)
    bands = [rgb[2 * i : 2 * i + 2].mean(axis=(0, 1)) for i in range(3)]
    assert bands[0].argmax() == 0 and bands[2].argmax() == 1  # red on top, green at the bottom
    assert bands[1][0] > bands[1][2] and bands[1][1] > bands[1][2]  # amber between
    brightest = max(range(3), key=lambda i: bands[i].sum())
    assert sum(bands[brightest]) > 1.5 * max(sum(bands[i]) for i in range(3) if i != brightest)  # one lit
