"""Procedurally generated street scenes: a game-like source domain and a camera-like target domain.

Three generator versions (``data.synthetic.version``): versions 3 (the default) and 2 (class set
``synthetic_v2``: 13 classes, textured, long-tailed; 3 is 2 with walls that no longer share a look
with facades) and version 1, described below. Each is kept byte for byte so that earlier results
reproduce; caches are keyed by the version.

Version 1: both domains draw the same kind of layout (sky, buildings, vegetation, road, sidewalk, poles with
traffic signs, persons, cars) with Cityscapes class semantics, and differ in how the layout is
rendered and in how often each class appears:

- source ("game engine"): one flat colour per class, clean edges, almost no noise;
- target ("camera"): a different colour per class with several appearance modes per class,
  texture, an illumination gradient, a colour cast per image, blur and sensor noise; more cars
  and persons, fewer trees.

Every image is a pure function of (seed, domain, split, index, size, difficulty). The domains are
written to disk in the real layouts (source like GTA5, target like Cityscapes, labels as Cityscapes
label ids), so the real loaders read them and the synthetic default exercises the same code path
as a GTA5 -> Cityscapes run. ``ensure_synthetic_domains`` generates them once per content hash and
caches them; ``python -m orchestrator.synth`` writes them anywhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainers.files import staged

from . import synthetic_v2

SYNTHETIC_CLASSES = ("road", "sidewalk", "building", "pole", "traffic_sign", "vegetation", "sky", "person", "car")
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = range(len(SYNTHETIC_CLASSES))
IGNORE_INDEX = 255
# On disk, labels are Cityscapes label ids, exactly as in GTA5 and Cityscapes.
CITYSCAPES_ID_OF_CLASS = (7, 8, 11, 17, 20, 21, 23, 24, 26)
TARGET_CITY = "synthtown"
# Part of every cache key. Bump only if the cache's layout changes: the content of a generator version
# never changes (a new look is a new version), so old results reproduce.
CACHE_REVISION = 2
GENERATOR_VERSIONS = (1, 2, 3, 4)
DEFAULT_VERSION = 4
# Per version: the class names (a class set of trainers/data/labelmaps.py) and their Cityscapes ids on disk.
CLASSES_OF_VERSION = {1: SYNTHETIC_CLASSES, 2: synthetic_v2.CLASSES, 3: synthetic_v2.CLASSES, 4: synthetic_v2.CLASSES}
CITYSCAPES_IDS_OF_VERSION = {
    1: CITYSCAPES_ID_OF_CLASS,
    2: synthetic_v2.CITYSCAPES_IDS,
    3: synthetic_v2.CITYSCAPES_IDS,
    4: synthetic_v2.CITYSCAPES_IDS,
}

# Flat game palette (RGB 0..1).
_SOURCE_PALETTE = np.array(
    [
        [0.50, 0.25, 0.50],  # road
        [0.95, 0.35, 0.90],  # sidewalk
        [0.30, 0.30, 0.30],  # building
        [0.60, 0.60, 0.60],  # pole
        [0.95, 0.85, 0.10],  # traffic sign
        [0.30, 0.60, 0.15],  # vegetation
        [0.30, 0.55, 0.90],  # sky
        [0.85, 0.10, 0.25],  # person
        [0.05, 0.05, 0.55],  # car
    ]
)

# Camera palette: per class, several appearance modes (one is drawn per object or region).
_TARGET_MODES = [
    [[0.35, 0.35, 0.38], [0.45, 0.42, 0.40], [0.25, 0.26, 0.30]],  # road: asphalt greys
    [[0.60, 0.58, 0.52], [0.50, 0.45, 0.42], [0.70, 0.62, 0.55]],  # sidewalk: pavers
    [[0.55, 0.45, 0.38], [0.70, 0.68, 0.62], [0.40, 0.30, 0.28], [0.62, 0.55, 0.45]],  # building
    [[0.25, 0.25, 0.22], [0.50, 0.50, 0.45]],  # pole
    [[0.85, 0.85, 0.80], [0.15, 0.35, 0.70], [0.80, 0.20, 0.15]],  # traffic sign
    [[0.20, 0.35, 0.12], [0.40, 0.45, 0.20], [0.15, 0.25, 0.15]],  # vegetation
    [[0.70, 0.78, 0.85], [0.85, 0.85, 0.88], [0.55, 0.65, 0.80]],  # sky
    [[0.20, 0.18, 0.20], [0.55, 0.40, 0.30], [0.30, 0.30, 0.50]],  # person
    [[0.75, 0.75, 0.78], [0.15, 0.15, 0.18], [0.55, 0.10, 0.10], [0.25, 0.35, 0.55]],  # car
]

# How often objects appear per domain (the class-frequency shift).
_LAYOUT = {
    "source": {"trees": (2, 5), "cars": (0, 3), "persons": (0, 2), "poles": (1, 3)},
    "target": {"trees": (0, 3), "cars": (1, 5), "persons": (1, 4), "poles": (1, 4)},
}

_DOMAIN_CODE = {"source": 1, "target": 2}
_SPLIT_CODE = {"train": 1, "val": 2}


def generate_layout(rng: np.random.Generator, height: int, width: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(class map (H, W) uint8, instance map (H, W) int32) of one street scene.

    Object counts follow the domain's layout. Every drawn object (building block, tree, pole, sign,
    person, car) gets its own instance id (> 0; later objects paint over earlier ones), so the
    renderer can give objects of one class different looks.
    """
    counts = _LAYOUT[domain]
    label = np.full((height, width), SKY, dtype=np.uint8)
    instance = np.zeros((height, width), dtype=np.int32)
    next_id = [0]

    def paint(mask, cls: int) -> None:
        next_id[0] += 1
        label[mask] = cls
        instance[mask] = next_id[0]

    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.38, 0.55))

    # Buildings: a row of blocks standing on the horizon, with gaps of sky.
    x = 0
    while x < width:
        w = int(width * rng.uniform(0.08, 0.25))
        if rng.random() < 0.8:
            top = int(horizon - height * rng.uniform(0.12, 0.45))
            block = (slice(max(top, 0), horizon), slice(x, x + w))
            paint(block, BUILDING)
        x += w

    # Trees: crowns (ellipses) near the horizon, each on a short trunk hidden by the crown.
    for _ in range(rng.integers(*counts["trees"], endpoint=True)):
        cx, cy = rng.uniform(0, width), horizon - height * rng.uniform(0.0, 0.2)
        rx, ry = width * rng.uniform(0.04, 0.10), height * rng.uniform(0.08, 0.2)
        paint(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1, VEGETATION)

    # Ground: sidewalk below the horizon, a road trapezoid towards the vanishing point.
    ground = yy >= horizon
    label[ground] = SIDEWALK
    instance[ground] = 0
    vanish_x = width * rng.uniform(0.35, 0.65)
    half_bottom = width * rng.uniform(0.3, 0.45)
    t = np.clip((yy - horizon) / max(height - horizon, 1), 0, 1)
    half = 2 + t * half_bottom
    centre = vanish_x + t * (width / 2 - vanish_x)
    road = ground & (np.abs(xx - centre) <= half)
    label[road] = ROAD

    # Poles on the sidewalk, some carrying a traffic sign near the top.
    for _ in range(rng.integers(*counts["poles"], endpoint=True)):
        base_y = int(rng.uniform(horizon + 2, height))
        tb = (base_y - horizon) / max(height - horizon, 1)
        side = rng.choice([-1, 1])
        px = int(
            np.clip(vanish_x + tb * (width / 2 - vanish_x) + side * (2 + tb * half_bottom + 2 + tb * 6), 0, width - 2)
        )
        pole_h = int(height * (0.15 + 0.35 * tb))
        thick = 1 + int(tb > 0.6)
        top = max(base_y - pole_h, 0)
        paint((slice(top, base_y), slice(px, px + thick)), POLE)
        if rng.random() < 0.7:
            s = max(2, int(2 + 4 * tb))
            paint((slice(top, top + s), slice(max(px - s // 2, 0), px + s // 2 + thick)), SIGN)

    # Persons on the sidewalk: small upright ellipses, larger when nearer.
    for _ in range(rng.integers(*counts["persons"], endpoint=True)):
        foot = rng.uniform(horizon + 3, height)
        tb = (foot - horizon) / max(height - horizon, 1)
        ph = height * (0.06 + 0.22 * tb)
        side = rng.choice([-1, 1])
        edge = vanish_x + tb * (width / 2 - vanish_x) + side * (2 + tb * half_bottom)
        cx = np.clip(edge + side * rng.uniform(2, 4 + 10 * tb), 0, width - 1)
        cy = foot - ph / 2
        paint(((xx - cx) / max(ph * 0.22, 0.8)) ** 2 + ((yy - cy) / (ph / 2)) ** 2 <= 1, PERSON)

    # Cars on the road: rounded boxes, larger when nearer.
    for _ in range(rng.integers(*counts["cars"], endpoint=True)):
        bottom = rng.uniform(horizon + 3, height)
        tb = (bottom - horizon) / max(height - horizon, 1)
        cw, ch = width * (0.05 + 0.25 * tb), height * (0.04 + 0.18 * tb)
        centre_b = vanish_x + tb * (width / 2 - vanish_x)
        cx = centre_b + rng.uniform(-0.7, 0.7) * (2 + tb * half_bottom)
        box = (np.abs(xx - cx) <= cw / 2) & (yy <= bottom) & (yy >= bottom - ch)
        cabin = (np.abs(xx - cx) <= cw * 0.3) & (yy < bottom - ch) & (yy >= bottom - ch * 1.45)
        paint(box | cabin, CAR)
    return label, instance


# Target objects of these classes each get their own colour (cars are painted, people dressed,
# poles and signs painted in many ways): no colour identifies them, only shape and context do.
_INSTANCE_COLOURED = (POLE, SIGN, PERSON, CAR)


def render(
    rng: np.random.Generator,
    label: np.ndarray,
    domain: str,
    difficulty: float = 1.0,
    instance: np.ndarray | None = None,
) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1] for a class map, in the domain's style.

    ``difficulty`` scales every target-style effect: 0 renders the target like the source (same
    palette, no texture, lighting or noise), 1 is the default gap, up to 2 is harsher. In the
    target, objects of ``_INSTANCE_COLOURED`` classes take a random colour each (needs ``instance``).
    """
    height, width = label.shape
    if domain == "source":
        # Flat shading with a little per-image lighting variation, as a game engine renders.
        colours = _SOURCE_PALETTE + rng.normal(0, 0.03, _SOURCE_PALETTE.shape)
        image = colours[label].astype(np.float32)
        return np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)

    d = float(difficulty)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for k, modes in enumerate(_TARGET_MODES):
        region = label == k
        if not region.any():
            continue
        # Each class takes one appearance mode per image, jittered, moved d of the way from the
        # source colour (d = 0: the source palette).
        mode = np.array(modes[rng.integers(len(modes))]) + rng.normal(0, 0.04, 3)
        image[region] = (1 - min(d, 1.0)) * _SOURCE_PALETTE[k] + min(d, 1.0) * mode
        if k in _INSTANCE_COLOURED and instance is not None:
            for obj in np.unique(instance[region]):
                colour = _random_colour(rng)
                image[region & (instance == obj)] = (1 - min(d, 1.0)) * _SOURCE_PALETTE[k] + min(d, 1.0) * colour
    texture = _smooth_noise(rng, height, width, cells=8) * 0.12 + _smooth_noise(rng, height, width, cells=24) * 0.06
    image += d * texture[..., None]
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + d * (-0.25 + 0.5 * (np.cos(angle) * xx + np.sin(angle) * yy) / 1.5)
    image *= gradient[..., None] * (1 + d * rng.uniform(-0.3, 0.15))  # illumination
    image += d * rng.normal(0, 0.05, 3)  # colour cast
    if rng.random() < min(d, 1.0) * 0.5:
        image = _box_blur(image, radius=1)
    image += d * rng.normal(0, 0.03, image.shape)  # sensor noise
    return np.clip(image, 0, 1).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour of moderate saturation and brightness (HSV sampled, then converted)."""
    hue, sat, val = rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.9)
    i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    return np.array([(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i])


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (cells, cells * 2)).astype(np.float32)
    t = torch.from_numpy(coarse)[None, None]
    up = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    if radius == 0:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    k = 2 * radius + 1
    t = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, [radius] * 4, mode="replicate"), k, stride=1)
    return t[0].numpy().transpose(1, 2, 0)


def generate_sample(
    seed: int,
    domain: str,
    split: str,
    index: int,
    height: int,
    width: int,
    difficulty: float = 1.0,
    version: int = DEFAULT_VERSION,
):
    """(image float32 (H, W, 3) in [0, 1], label uint8 (H, W) of class indices) of one synthetic image,
    by generator ``version`` (class indices of ``CLASSES_OF_VERSION[version]``)."""
    if domain not in _DOMAIN_CODE:
        raise ValueError(f"unknown domain '{domain}'; choose source or target")
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split '{split}'; choose train or val")
    if version not in GENERATOR_VERSIONS:
        raise ValueError(
            f"unknown generator version {version!r}; choose one of: {', '.join(map(str, GENERATOR_VERSIONS))}"
        )
    if version >= 2:
        # Versions 3 and 4 draw version 2's scenes (the same random numbers): only looks differ.
        rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], _SPLIT_CODE[split], index, 2])
        return synthetic_v2.generate(rng, height, width, domain, difficulty, version)
    rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], _SPLIT_CODE[split], index])
    label, instance = generate_layout(rng, height, width, domain)
    return render(rng, label, domain, difficulty, instance), label


def domain_hash(height: int, width: int, synthetic: dict) -> str:
    """Content key of one generated pair of domains (the settings include the generator version)."""
    synthetic = {"version": DEFAULT_VERSION, **synthetic}
    blob = json.dumps({"v": CACHE_REVISION, "h": height, "w": width, **synthetic}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_synthetic_domains(
    out: str | Path,
    height: int,
    width: int,
    source_images: int,
    target_train_images: int,
    target_val_images: int,
    seed: int = 0,
    difficulty: float = 1.0,
    progress=None,
    version: int = DEFAULT_VERSION,
) -> tuple[Path, Path]:
    """Write the source domain in the GTA5 layout and the target in the Cityscapes layout (generator
    ``version``; labels as Cityscapes label ids).

    ``out/source/{images,labels}/<index>.png`` and
    ``out/target/{leftImg8bit,gtFine}/{train,val}/synthtown/synthtown_<index>_000019_*.png``.
    Returns (source root, target root).
    """
    out = Path(out)
    source, target = out / "source", out / "target"
    jobs = [
        ("source", "train", source_images),
        ("target", "train", target_train_images),
        ("target", "val", target_val_images),
    ]
    total, done = sum(n for *_, n in jobs), 0
    id_of_class = np.asarray(CITYSCAPES_IDS_OF_VERSION[version], np.uint8)
    for domain, split, count in jobs:
        for index in range(count):
            image, label = generate_sample(seed, domain, split, index, height, width, difficulty, version)
            rgb = Image.fromarray((image * 255).round().astype(np.uint8))
            ids = Image.fromarray(id_of_class[label])
            if domain == "source":
                _save(rgb, source / "images" / f"{index:06d}.png")
                _save(ids, source / "labels" / f"{index:06d}.png")
            else:
                stem = f"{TARGET_CITY}_{index:06d}_000019"
                _save(rgb, target / "leftImg8bit" / split / TARGET_CITY / f"{stem}_leftImg8bit.png")
                _save(ids, target / "gtFine" / split / TARGET_CITY / f"{stem}_gtFine_labelIds.png")
            done += 1
            if progress is not None and (done % 100 == 0 or done == total):
                progress(f"generated {done}/{total} synthetic images")
    return source, target


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def synthetic_domain_folder(cache_dir: str | Path, height: int, width: int, synthetic: dict) -> Path:
    """Where ``ensure_synthetic_domains`` keeps the domains of these settings (complete once ``complete`` exists)."""
    return Path(cache_dir).resolve() / f"synthetic-{domain_hash(height, width, synthetic)}"


def ensure_synthetic_domains(
    cache_dir: str | Path, height: int, width: int, synthetic: dict, progress=None
) -> tuple[Path, Path]:
    """The generated domains for these settings, written once into ``cache_dir/synthetic-<hash>``.

    Generation goes to a private temporary folder that is renamed into place when complete, so
    concurrent callers (Train workers, ranking actors) never see a half-written domain; a caller
    that loses the race discards its copy (the content is identical by construction).
    """
    final = synthetic_domain_folder(cache_dir, height, width, synthetic)
    if not (final / "complete").is_file():
        try:
            with staged(final, folder=True, overwrite=False) as staging:
                write_synthetic_domains(staging, height, width, progress=progress, **synthetic)
                (staging / "complete").write_text(json.dumps({"height": height, "width": width, **synthetic}))
                if final.exists() and not (final / "complete").is_file():
                    shutil.rmtree(final, ignore_errors=True)  # damaged by hand or by a foreign tool: replace it
        except FileExistsError:  # another process finished first: its copy is the same, ours is discarded
            pass
    return final / "source", final / "target"
