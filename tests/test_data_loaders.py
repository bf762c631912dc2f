"""Real dataset loaders (Cityscapes, GTA5, SYNTHIA-RAND-CITYSCAPES) on tiny folders in each real layout.

Expected class indices are written out by hand from the public id tables (cityscapesScripts labels.py,
the SYNTHIA-RAND-CITYSCAPES README table), not computed with the code under test.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.data.cityscapes import CityscapesSegmentation
from trainers.data.errors import DatasetError
from trainers.data.gta5 import GTA5Segmentation
from trainers.data.labelmaps import (
    CLASS_SETS,
    IGNORE_INDEX,
    cityscapes_defined_ids,
    cityscapes_id_lut,
    synthia_defined_ids,
    synthia_id_lut,
)
from trainers.data.synthetic import IGNORE_INDEX as SYNTHETIC_IGNORE_INDEX
from trainers.data.synthetic import SYNTHETIC_CLASSES
from trainers.data.synthia import SynthiaSegmentation
from trainers.data.transforms import MEAN, STD, denormalize, deterministic_transform, normalize, training_transform

X = IGNORE_INDEX

# Cityscapes label id -> expected index, for ids 0..33 (column j of the test label holds id j).
CITYSCAPES19_BY_ID = [
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    0,
    1,
    X,
    X,
    2,
    3,
    4,
    X,
    X,
    X,
    5,
    X,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    X,
    X,
    16,
    17,
    18,
]
# synthia16 drops terrain (22), truck (27), train (31).
SYNTHIA16_BY_CITYSCAPES_ID = [
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    0,
    1,
    X,
    X,
    2,
    3,
    4,
    X,
    X,
    X,
    5,
    X,
    6,
    7,
    8,
    X,
    9,
    10,
    11,
    12,
    X,
    13,
    X,
    X,
    X,
    14,
    15,
]
# synthia13 also drops wall (12), fence (13), pole (17).
SYNTHIA13_BY_CITYSCAPES_ID = [
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    0,
    1,
    X,
    X,
    2,
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    3,
    4,
    5,
    X,
    6,
    7,
    8,
    9,
    X,
    10,
    X,
    X,
    X,
    11,
    12,
]
# synthetic: road 7, sidewalk 8, building 11, pole 17, traffic sign 20, vegetation 21, sky 23, person 24, car 26.
SYNTHETIC_BY_CITYSCAPES_ID = [
    X,
    X,
    X,
    X,
    X,
    X,
    X,
    0,
    1,
    X,
    X,
    2,
    X,
    X,
    X,
    X,
    X,
    3,
    X,
    X,
    4,
    5,
    X,
    6,
    7,
    X,
    8,
    X,
    X,
    X,
    X,
    X,
    X,
    X,
]

# SYNTHIA class id -> expected index, for ids 0..22: 0 void, 1 sky, 2 building, 3 road, 4 sidewalk,
# 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle,
# 13 parking-slot, 14 road-work, 15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train,
# 21 wall, 22 lane-marking.
SYNTHIA16_BY_SYNTHIA_ID = [X, 9, 2, 0, 1, 4, 8, 5, 12, 7, 10, 15, 14, X, X, 6, X, 11, X, 13, X, 3, X]
CITYSCAPES19_BY_SYNTHIA_ID = [X, 10, 2, 0, 1, 4, 8, 5, 13, 7, 11, 18, 17, X, X, 6, 9, 12, 14, 15, 16, 3, X]
SYNTHIA13_BY_SYNTHIA_ID = [X, 6, 2, 0, 1, X, 5, X, 9, 4, 7, 12, 11, X, X, 3, X, 8, X, 10, X, X, X]


# --------------------------------------------------------------------------- file writers


def write_rgb(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB").save(path)


def write_grey_ids(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="L").save(path)


def write_palette_ids(path: Path, ids: np.ndarray) -> None:
    """Like a GTA5 label: a palette PNG whose indices are the ids (the palette is only for display)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="L").convert("P")
    image.putdata(np.asarray(ids, dtype=np.uint8).ravel().tolist())
    rng = np.random.default_rng(0)  # a palette that is not the identity, so grey conversion would be wrong
    image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    image.save(path)


def write_png_16bit(path: Path, values: np.ndarray) -> None:
    """16-bit PNG (grey (H, W) or RGB (H, W, 3)), encoded by hand: neither PIL nor torchvision's
    encode_png writes 16-bit multi-channel PNGs, and this is how SYNTHIA's labels are stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    big_endian = np.asarray(values, dtype=">u2")
    if big_endian.ndim == 2:
        big_endian = big_endian[..., None]
    height, width, channels = big_endian.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + big_endian[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def id_columns(num_ids: int, height: int = 4) -> np.ndarray:
    """A (height, num_ids) label whose column j holds id j."""
    return np.tile(np.arange(num_ids), (height, 1))


def plain_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- layouts


def cityscapes_paths(root: Path, split: str, city: str, frame: int) -> tuple[Path, Path]:
    stem = f"{city}_000000_{frame:06d}"
    return (
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
    )


def make_cityscapes(root: Path, labels: dict[tuple[str, int], np.ndarray], split: str = "val") -> Path:
    for (city, frame), ids in labels.items():
        image_path, label_path = cityscapes_paths(root, split, city, frame)
        write_rgb(image_path, plain_image(*ids.shape, seed=frame))
        write_grey_ids(label_path, ids)
    return root


def make_gta5(root: Path, labels: dict[str, np.ndarray]) -> Path:
    for name, ids in labels.items():
        write_rgb(root / "images" / name, plain_image(*ids.shape))
        write_palette_ids(root / "labels" / name, ids)
    return root


def make_synthia(root: Path, labels: dict[str, np.ndarray]) -> Path:
    """SYNTHIA layout with 16-bit RGB labels: class id in channel 0, an instance id in channel 1."""
    for name, ids in labels.items():
        write_rgb(root / "RGB" / name, plain_image(*ids.shape))
        stacked = np.stack([ids, np.full_like(ids, 1234), np.zeros_like(ids)], axis=-1)
        write_png_16bit(root / "GT" / "LABELS" / name, stacked)
    return root


# --------------------------------------------------------------------------- label maps


def test_class_sets_are_the_published_ones():
    assert CLASS_SETS["cityscapes19"] == (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic_light",
        "traffic_sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
    assert CLASS_SETS["synthia16"] == (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic_light",
        "traffic_sign",
        "vegetation",
        "sky",
        "person",
        "rider",
        "car",
        "bus",
        "motorcycle",
        "bicycle",
    )
    assert CLASS_SETS["synthia13"] == (
        "road",
        "sidewalk",
        "building",
        "traffic_light",
        "traffic_sign",
        "vegetation",
        "sky",
        "person",
        "rider",
        "car",
        "bus",
        "motorcycle",
        "bicycle",
    )
    assert CLASS_SETS["synthetic"] == SYNTHETIC_CLASSES
    assert IGNORE_INDEX == SYNTHETIC_IGNORE_INDEX == 255


@pytest.mark.parametrize(
    "class_set, expected",
    [
        ("cityscapes19", CITYSCAPES19_BY_ID),
        ("synthia16", SYNTHIA16_BY_CITYSCAPES_ID),
        ("synthia13", SYNTHIA13_BY_CITYSCAPES_ID),
        ("synthetic", SYNTHETIC_BY_CITYSCAPES_ID),
    ],
)
def test_cityscapes_lut(class_set, expected):
    lut = cityscapes_id_lut(class_set)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert lut[:34].tolist() == expected
    assert (lut[34:] == 255).all()
    assert np.flatnonzero(cityscapes_defined_ids()).tolist() == list(range(34))


@pytest.mark.parametrize(
    "class_set, expected",
    [
        ("synthia16", SYNTHIA16_BY_SYNTHIA_ID),
        ("cityscapes19", CITYSCAPES19_BY_SYNTHIA_ID),
        ("synthia13", SYNTHIA13_BY_SYNTHIA_ID),
    ],
)
def test_synthia_lut(class_set, expected):
    lut = synthia_id_lut(class_set)
    assert lut[:23].tolist() == expected
    assert (lut[23:] == 255).all()
    assert np.flatnonzero(synthia_defined_ids()).tolist() == list(range(23))


def test_unknown_class_set_names_the_choices():
    with pytest.raises(ValueError, match="unknown class set 'cityscapes20'; choose one of: cityscapes19"):
        cityscapes_id_lut("cityscapes20")


# --------------------------------------------------------------------------- reading and mapping


@pytest.mark.parametrize(
    "class_set, expected",
    [
        ("cityscapes19", CITYSCAPES19_BY_ID),
        ("synthia16", SYNTHIA16_BY_CITYSCAPES_ID),
        ("synthetic", SYNTHETIC_BY_CITYSCAPES_ID),
    ],
)
def test_cityscapes_maps_every_id(tmp_path, class_set, expected):
    root = make_cityscapes(tmp_path, {("aachen", 19): id_columns(34)})
    ds = CityscapesSegmentation(root, "val", class_set=class_set)
    image, label = ds[0]
    assert image.shape == (3, 4, 34) and image.dtype == torch.float32
    assert label.shape == (4, 34) and label.dtype == torch.int64
    assert (label == torch.tensor(expected)).all()
    assert torch.equal(ds.label(0), label)
    assert ds.classes == CLASS_SETS[class_set]


def test_cityscapes_files_are_sorted_across_cities(tmp_path):
    ids = np.full((2, 3), 7)
    root = make_cityscapes(
        tmp_path, {("zurich", 1): ids, ("aachen", 2): ids, ("aachen", 1): ids, ("bochum", 5): ids}, split="train"
    )
    ds = CityscapesSegmentation(root, "train")
    names = [Path(image).name for image, _ in ds.files]
    assert names == [
        "aachen_000000_000001_leftImg8bit.png",
        "aachen_000000_000002_leftImg8bit.png",
        "bochum_000000_000005_leftImg8bit.png",
        "zurich_000000_000001_leftImg8bit.png",
    ]
    for image, label in ds.files:
        assert Path(label).name == Path(image).name.replace("leftImg8bit", "gtFine_labelIds")


def test_cityscapes_image_is_normalized_rgb(tmp_path):
    root = make_cityscapes(tmp_path, {("aachen", 0): np.full((2, 3), 7)})
    image_path = CityscapesSegmentation(root, "val").files[0][0]
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 128)
    write_rgb(Path(image_path), pixels)
    image, _ = CityscapesSegmentation(root, "val")[0]
    expected = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (128 / 255 - MEAN[2]) / STD[2]]
    assert torch.allclose(image[:, 0, 0], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(denormalize(image)[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-5)


def test_gta5_reads_palette_indices_as_ids(tmp_path):
    root = make_gta5(tmp_path, {"00001.png": id_columns(34), "00002.png": np.full((4, 34), 26)})
    ds = GTA5Segmentation(root)
    assert [Path(image).name for image, _ in ds.files] == ["00001.png", "00002.png"]
    assert (ds[0][1] == torch.tensor(CITYSCAPES19_BY_ID)).all()
    assert (ds.label(1) == 13).all()  # car


def test_gta5_synthia16_class_set(tmp_path):
    root = make_gta5(tmp_path, {"00001.png": id_columns(34)})
    assert (GTA5Segmentation(root, class_set="synthia16").label(0) == torch.tensor(SYNTHIA16_BY_CITYSCAPES_ID)).all()


@pytest.mark.parametrize(
    "class_set, expected",
    [
        ("synthia16", SYNTHIA16_BY_SYNTHIA_ID),
        ("cityscapes19", CITYSCAPES19_BY_SYNTHIA_ID),
        ("synthia13", SYNTHIA13_BY_SYNTHIA_ID),
    ],
)
def test_synthia_16bit_rgb_labels_use_the_first_channel(tmp_path, class_set, expected):
    root = make_synthia(tmp_path, {"0000000.png": id_columns(23)})
    ds = SynthiaSegmentation(root, class_set=class_set)
    image, label = ds[0]
    assert image.shape == (3, 4, 23)
    assert (label == torch.tensor(expected)).all()
    assert torch.equal(ds.label(0), label)


def test_synthia_accepts_single_channel_8_and_16_bit_labels(tmp_path):
    ids = id_columns(23)
    write_rgb(tmp_path / "RGB" / "a.png", plain_image(4, 23))
    write_rgb(tmp_path / "RGB" / "b.png", plain_image(4, 23))
    write_grey_ids(tmp_path / "GT" / "LABELS" / "a.png", ids)
    (tmp_path / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "GT" / "LABELS" / "b.png")  # PIL 'I;16'
    with Image.open(tmp_path / "GT" / "LABELS" / "b.png") as written:
        assert written.mode == "I;16"
    ds = SynthiaSegmentation(tmp_path)
    assert (ds.label(0) == torch.tensor(SYNTHIA16_BY_SYNTHIA_ID)).all()
    assert (ds.label(1) == torch.tensor(SYNTHIA16_BY_SYNTHIA_ID)).all()


def test_resize_uses_nearest_for_labels_and_bilinear_for_images(tmp_path):
    # Blocks of road (7 -> 0), building (11 -> 2) and car (26 -> 13): a blended label would show
    # values in between (1, 7, ...), nearest only ever shows 0, 2 and 13.
    ids = np.full((8, 16), 7)
    ids[:, 5:11] = 11
    ids[3:6, 8:] = 26
    root = make_gta5(tmp_path, {"x.png": ids})
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, 8:] = 255  # a hard black/white edge: bilinear makes greys, nearest would not
    write_rgb(tmp_path / "images" / "x.png", pixels)
    ds = GTA5Segmentation(root, size=(5, 11))
    image, label = ds[0]
    assert image.shape == (3, 5, 11) and label.shape == (5, 11)
    assert set(label.unique().tolist()) == {0, 2, 13}
    grey = denormalize(image)[0]
    assert ((grey > 0.05) & (grey < 0.95)).any()
    assert torch.equal(ds.label(0), label)


def test_void_ids_stay_ignored_after_resize(tmp_path):
    ids = np.zeros((8, 16), np.uint8)  # unlabeled
    ids[:, 8:] = 23  # sky
    ids[:2] = 3  # out of roi
    root = make_cityscapes(tmp_path, {("aachen", 0): ids})
    label = CityscapesSegmentation(root, "val", size=(4, 8)).label(0)
    assert label.tolist() == [[255] * 8] + [[255] * 4 + [10] * 4] * 3


def test_deterministic_path_is_deterministic(tmp_path):
    root = make_synthia(tmp_path, {"0000000.png": id_columns(23, height=8), "0000001.png": id_columns(23, height=8)})
    first = SynthiaSegmentation(root, size=(6, 17))
    second = SynthiaSegmentation(root, size=(6, 17))
    torch.manual_seed(0)
    a_image, a_label = first[1]
    torch.manual_seed(1)  # no randomness may be involved without augment
    b_image, b_label = second[1]
    assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)
    assert torch.equal(first.label(1), a_label)
    assert first.files == second.files


# --------------------------------------------------------------------------- training transforms

# A colour per class index, far apart in RGB so a pixel's colour names its class unambiguously.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)
GTA5_ID_OF_CLASS = [7, 8, 11, 20, 23, 26]  # road, sidewalk, building, traffic sign, sky, car
CITYSCAPES19_INDEX_OF_CLASS = [0, 1, 2, 7, 10, 13]


def colour_coded_gta5(root: Path) -> Path:
    """A 32x48 image whose colour encodes its class, in an asymmetric layout of 6 blocks."""
    classes = np.zeros((32, 48), np.int64)
    classes[:, 16:] = 1
    classes[:, 36:] = 2
    classes[12:24, :20] = 3
    classes[:8, 24:] = 4
    classes[20:, 40:] = 5
    write_rgb(root / "images" / "c.png", PALETTE[classes])
    write_palette_ids(root / "labels" / "c.png", np.array(GTA5_ID_OF_CLASS)[classes])
    return root


def colour_class(image: torch.Tensor) -> torch.Tensor:
    """Class index of the nearest palette colour of each pixel of a normalized image: (H, W)."""
    rgb = denormalize(image).clamp(0, 1) * 255
    distances = ((rgb[None] - torch.tensor(PALETTE, dtype=torch.float32)[:, :, None, None]) ** 2).sum(1)
    nearest = distances.argmin(0)
    return torch.tensor(CITYSCAPES19_INDEX_OF_CLASS)[nearest]


def interior(label: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one class: away from edges blended by bilinear resizing.

    The crop border never counts as interior: the class edge may lie just outside the crop window.
    """
    padded = torch.nn.functional.pad(label.float(), (1, 1, 1, 1), value=-1.0)
    same = torch.ones_like(label, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


def test_training_transform_keeps_image_and_mask_aligned(tmp_path):
    root = colour_coded_gta5(tmp_path)
    ds = GTA5Segmentation(root, augment=training_transform(scale=(0.5, 1.5), crop=(24, 40), hflip=True))
    saw_padding = saw_flip = saw_unflipped = False
    for seed in range(12):
        torch.manual_seed(seed)
        image, label = ds[0]
        assert image.shape == (3, 24, 40) and label.shape == (24, 40)
        assert set(label.unique().tolist()) <= set(CITYSCAPES19_INDEX_OF_CLASS) | {255}
        check = interior(label) & (label != 255)
        assert check.sum() > 100
        assert torch.equal(colour_class(image)[check], label[check])
        padding = label == 255
        if padding.any():
            saw_padding = True
            assert (denormalize(image)[:, padding].abs() < 1e-5).all()  # image padded with black
        # Road (0) is on the left of the source and building (2) on the right: a flipped crop
        # shows building left of road. Both outcomes must occur, or the flip was never tested.
        columns_of = {c: (label == c).nonzero()[:, 1].float().mean() for c in (0, 2) if (label == c).any()}
        if len(columns_of) == 2:
            saw_flip |= bool(columns_of[2] < columns_of[0])
            saw_unflipped |= bool(columns_of[2] > columns_of[0])
    assert saw_padding and saw_flip and saw_unflipped


def test_flip_alone_flips_image_and_mask_together(tmp_path):
    root = colour_coded_gta5(tmp_path)
    reference_image, reference_label = GTA5Segmentation(root)[0]
    ds = GTA5Segmentation(root, augment=training_transform(scale=(1.0, 1.0), crop=None, hflip=True))
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, label = ds[0]
        flipped = torch.equal(label, reference_label.flip(-1))
        assert flipped or torch.equal(label, reference_label)
        expected_image = reference_image.flip(-1) if flipped else reference_image
        assert torch.allclose(image, expected_image)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_transform_helpers_validate_and_resize():
    with pytest.raises(ValueError, match="size must be"):
        deterministic_transform((0, 4))
    with pytest.raises(ValueError, match="crop must be"):
        training_transform(crop=(4,))
    with pytest.raises(ValueError, match="scale must be"):
        training_transform(scale=(1.5, 0.5))
    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)


# --------------------------------------------------------------------------- bad data


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    for build in (
        lambda: CityscapesSegmentation(missing, "train"),
        lambda: GTA5Segmentation(missing),
        lambda: SynthiaSegmentation(missing),
    ):
        with pytest.raises(DatasetError, match=f"dataset root '{missing}' does not exist"):
            build()


def test_missing_split_folders(tmp_path):
    make_cityscapes(tmp_path, {("aachen", 0): np.full((2, 3), 7)}, split="val")
    with pytest.raises(DatasetError, match=r"Cityscapes image folder '.*leftImg8bit/train' does not exist"):
        CityscapesSegmentation(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train").mkdir()
    with pytest.raises(DatasetError, match=r"Cityscapes label folder '.*gtFine/train' does not exist"):
        CityscapesSegmentation(tmp_path, "train")
    (tmp_path / "gtFine" / "train").mkdir()
    with pytest.raises(DatasetError, match=r"Cityscapes image folder '.*leftImg8bit/train' contains no"):
        CityscapesSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown Cityscapes split 'trian'"):
        CityscapesSegmentation(tmp_path, "trian")

    (tmp_path / "gta").mkdir()
    with pytest.raises(DatasetError, match=r"GTA5 image folder '.*gta/images' does not exist"):
        GTA5Segmentation(tmp_path / "gta")
    (tmp_path / "gta" / "images").mkdir()
    (tmp_path / "gta" / "labels").mkdir()
    with pytest.raises(DatasetError, match=r"GTA5 image folder '.*gta/images' contains no .png images"):
        GTA5Segmentation(tmp_path / "gta")

    (tmp_path / "syn" / "RGB").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"SYNTHIA label folder '.*syn/GT/LABELS' does not exist"):
        SynthiaSegmentation(tmp_path / "syn")


def test_image_without_label_is_named(tmp_path):
    make_cityscapes(tmp_path / "cs", {("aachen", 0): np.full((2, 3), 7), ("aachen", 1): np.full((2, 3), 7)})
    _, label_path = cityscapes_paths(tmp_path / "cs", "val", "aachen", 1)
    label_path.unlink()
    with pytest.raises(DatasetError, match=r"image '.*aachen_000000_000001_leftImg8bit.png' has no label file"):
        CityscapesSegmentation(tmp_path / "cs", "val")

    make_gta5(tmp_path / "gta", {"00001.png": np.full((2, 3), 7), "00002.png": np.full((2, 3), 7)})
    (tmp_path / "gta" / "labels" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"image '.*images/00002.png' has no label file '.*labels/00002.png'"):
        GTA5Segmentation(tmp_path / "gta")

    make_synthia(tmp_path / "syn", {"0000000.png": np.full((2, 3), 3)})
    (tmp_path / "syn" / "GT" / "LABELS" / "0000000.png").unlink()
    with pytest.raises(DatasetError, match=r"image '.*RGB/0000000.png' has no label file"):
        SynthiaSegmentation(tmp_path / "syn")


def test_stray_entries_are_refused_not_skipped(tmp_path):
    make_gta5(tmp_path / "gta", {"00001.png": np.full((2, 3), 7)})
    (tmp_path / "gta" / "images" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unexpected entry '.*images/notes.txt' in GTA5 image folder"):
        GTA5Segmentation(tmp_path / "gta")

    make_cityscapes(tmp_path / "cs", {("aachen", 0): np.full((2, 3), 7)})
    (tmp_path / "cs" / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000000_color.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"unexpected entry '.*aachen_000000_000000_color.png'"):
        CityscapesSegmentation(tmp_path / "cs", "val")
    (tmp_path / "cs" / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000000_color.png").unlink()
    (tmp_path / "cs" / "leftImg8bit" / "val" / "README").write_text("x")
    with pytest.raises(DatasetError, match=r"unexpected file '.*leftImg8bit/val/README'"):
        CityscapesSegmentation(tmp_path / "cs", "val")


def _link_out(inside: Path, outside: Path, relative: bool = False) -> None:
    """Move ``inside`` to ``outside`` and leave a symlink to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    inside.rename(outside)
    inside.symlink_to(Path(os.path.relpath(outside, inside.parent)) if relative else outside)


def test_files_that_resolve_outside_the_root_are_refused(tmp_path):
    outside = tmp_path / "outside"
    gta = make_gta5(tmp_path / "gta", {"00001.png": np.full((2, 3), 7)})
    _link_out(gta / "labels" / "00001.png", outside / "label.png")  # a readable label, but not the dataset's
    with pytest.raises(
        DatasetError,
        match=r"GTA5 file '.*gta/labels/00001.png' resolves to '.*outside/label.png', "
        r"outside the dataset root '.*gta'",
    ):
        GTA5Segmentation(gta)

    cityscapes = make_cityscapes(tmp_path / "cs", {("aachen", 0): np.full((2, 3), 7)})
    _link_out(cityscapes / "gtFine" / "val" / "aachen", outside / "aachen")  # a whole city folder
    with pytest.raises(
        DatasetError,
        match=r"Cityscapes file '.*aachen_000000_000000_gtFine_labelIds.png' "
        r"resolves to '.*outside/aachen/.*outside the dataset root",
    ):
        CityscapesSegmentation(cityscapes, "val")

    synthia = make_synthia(tmp_path / "syn", {"0000000.png": np.full((2, 3), 3)})
    _link_out(synthia / "RGB" / "0000000.png", outside / "image.png", relative=True)  # ../../outside/image.png
    with pytest.raises(DatasetError, match=r"SYNTHIA file '.*RGB/0000000.png' resolves to .* outside the dataset"):
        SynthiaSegmentation(synthia)


def test_a_symlinked_root_and_links_that_stay_inside_are_accepted(tmp_path):
    real = make_gta5(tmp_path / "real", {"00001.png": np.full((2, 3), 7), "00002.png": np.full((2, 3), 8)})
    (real / "labels" / "00002.png").unlink()
    (real / "labels" / "00002.png").symlink_to("00001.png")  # one label shared by two images, inside the root
    (tmp_path / "link").symlink_to(real)
    dataset = GTA5Segmentation(tmp_path / "link")
    assert len(dataset) == 2 and torch.equal(dataset.label(0), dataset.label(1))


def test_corrupt_files_are_named_at_read_time(tmp_path):
    root = make_gta5(
        tmp_path, {"00001.png": np.full((4, 6), 7), "00002.png": np.full((4, 6), 7), "00003.png": np.full((4, 6), 7)}
    )
    (root / "images" / "00001.png").write_bytes(b"not a png at all")
    valid = (root / "images" / "00003.png").read_bytes()
    (root / "images" / "00003.png").write_bytes(valid[: len(valid) // 2])  # truncated
    (root / "labels" / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = GTA5Segmentation(root)  # construction only lists files
    with pytest.raises(DatasetError, match=r"cannot read image '.*images/00001.png'"):
        ds[0]
    with pytest.raises(DatasetError, match=r"cannot read image '.*images/00001.png'"):
        ds.label(0)  # the oracle path checks the image header too
    with pytest.raises(DatasetError, match=r"cannot read label '.*labels/00002.png'"):
        ds[1]
    with pytest.raises(DatasetError, match=r"cannot read label '.*labels/00002.png'"):
        ds.label(1)
    with pytest.raises(DatasetError, match=r"cannot read image '.*images/00003.png'"):
        ds[2]


def test_corrupt_synthia_labels_are_named(tmp_path):
    root = make_synthia(tmp_path, {"a.png": np.full((4, 6), 3), "b.png": np.full((4, 6), 3)})
    (root / "GT" / "LABELS" / "a.png").write_bytes(b"JFIF not a png")
    valid = (root / "GT" / "LABELS" / "b.png").read_bytes()
    (root / "GT" / "LABELS" / "b.png").write_bytes(valid[:40])  # 16-bit RGB header, no pixel data
    ds = SynthiaSegmentation(root)
    with pytest.raises(DatasetError, match=r"cannot read label '.*LABELS/a.png': not a PNG file"):
        ds.label(0)
    with pytest.raises(DatasetError, match=r"cannot read label '.*LABELS/b.png'"):
        ds[1]


def test_rgb_label_is_refused_for_cityscapes_ids(tmp_path):
    root = make_cityscapes(tmp_path, {("aachen", 0): np.full((2, 3), 7)})
    _, label_path = cityscapes_paths(root, "val", "aachen", 0)
    write_rgb(label_path, plain_image(2, 3))  # a *_color.png saved under the labelIds name
    with pytest.raises(DatasetError, match=r"label '.*gtFine_labelIds.png' has PIL mode RGB"):
        CityscapesSegmentation(root, "val").label(0)


def test_undefined_ids_are_named_with_the_file(tmp_path):
    ids = np.full((4, 6), 7)
    ids[0, 0] = 34
    ids[1, 1] = 200
    make_cityscapes(tmp_path / "cs", {("aachen", 0): ids})
    with pytest.raises(
        DatasetError,
        match=r"label '.*aachen_000000_000000_gtFine_labelIds.png' has ids not in "
        r"the Cityscapes id table \(defined: 0..33\): 34, 200",
    ):
        CityscapesSegmentation(tmp_path / "cs", "val")[0]

    syn_ids = np.full((4, 6), 3)
    syn_ids[2, 2] = 23
    syn_ids[3, 3] = 1000  # only representable in a 16-bit label
    make_synthia(tmp_path / "syn", {"0000000.png": syn_ids})
    with pytest.raises(
        DatasetError,
        match=r"label '.*LABELS/0000000.png' has ids not in the "
        r"SYNTHIA-RAND-CITYSCAPES id table \(defined: 0..22\): 23, 1000",
    ):
        SynthiaSegmentation(tmp_path / "syn").label(0)


def test_size_mismatch_names_both_files(tmp_path):
    root = make_gta5(tmp_path, {"00001.png": np.full((4, 6), 7)})
    write_rgb(root / "images" / "00001.png", plain_image(4, 7))
    ds = GTA5Segmentation(root)
    message = r"label '.*labels/00001.png' is 6x4 but image '.*images/00001.png' is 7x4"
    with pytest.raises(DatasetError, match=message):
        ds[0]
    with pytest.raises(DatasetError, match=message):
        ds.label(0)


def test_errors_are_one_line_value_errors(tmp_path):
    assert issubclass(DatasetError, ValueError)
    assert "\n" not in str(DatasetError("a\nb\r\nc"))
    root = make_gta5(tmp_path, {"00001.png": np.full((4, 6), 7)})
    (root / "images" / "00001.png").write_bytes(b"junk")
    with pytest.raises(DatasetError) as caught:
        GTA5Segmentation(root)[0]
    assert "\n" not in str(caught.value) and str(root / "images" / "00001.png") in str(caught.value)
