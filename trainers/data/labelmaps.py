"""Raw label ids of Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES, and their mapping to class sets.

A label PNG stores a dataset's own *raw ids*; a model is trained on *class indices* 0..K-1 of a class
set (plus ``IGNORE_INDEX``). Domain adaptation needs the same class set on both sides (GTA5 ->
Cityscapes uses the 19 Cityscapes evaluation classes, SYNTHIA -> Cityscapes the 16 or 13 classes
SYNTHIA has), so the mapping is built from class *names*: the class set decides which names exist
and their order; each dataset's id table says which raw id carries which name.

Every raw id a dataset defines is either a class of the set or ignored (void, or a class the set
leaves out). An id the table does not define at all means the file is not what we think it is (a
colour label, a trainId label, another dataset), so it is refused with ``DatasetError`` rather than
silently ignored.

Sources of the facts below:

- Cityscapes ids: cityscapesScripts ``cityscapesscripts/helpers/labels.py`` (mcordts/cityscapesScripts
  on GitHub; the same table is ``torchvision.datasets.Cityscapes.classes``). gtFine ``*_labelIds.png``
  use ids 0..33; 'license plate' has id -1 and never appears in a PNG. GTA5 (Richter et al., "Playing
  for Data", ECCV 2016) labels use the same ids.
- SYNTHIA-RAND-CITYSCAPES ids: the README.txt shipped with the dataset, as reproduced in the
  m-birke/automotive-segmentation-datasets table ``synthia_rand_cityscapes.md`` (ids 0..22) and used by
  the DAFormer conversion script (lhoyer/DAFormer ``tools/convert_datasets/synthia.py``), which maps
  the same ids to Cityscapes trainIds and ignores void, parking-slot, road-work and lane-marking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

IGNORE_INDEX = 255

# Cityscapes label ids in id order (index = id), names as in labels.py in snake_case.
CITYSCAPES_ID_NAMES: tuple[str, ...] = (
    "unlabeled",
    "ego_vehicle",
    "rectification_border",
    "out_of_roi",
    "static",
    "dynamic",
    "ground",
    "road",
    "sidewalk",
    "parking",
    "rail_track",
    "building",
    "wall",
    "fence",
    "guard_rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
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
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)

# SYNTHIA-RAND-CITYSCAPES class ids in id order (index = id). 'pedestrian' is Cityscapes' 'person'.
SYNTHIA_ID_NAMES: tuple[str, ...] = (
    "void",
    "sky",
    "building",
    "road",
    "sidewalk",
    "fence",
    "vegetation",
    "pole",
    "car",
    "traffic_sign",
    "person",
    "bicycle",
    "motorcycle",
    "parking_slot",
    "road_work",
    "traffic_light",
    "terrain",
    "rider",
    "truck",
    "bus",
    "train",
    "wall",
    "lane_marking",
)

_CITYSCAPES19 = (
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
_SYNTHIA16 = tuple(name for name in _CITYSCAPES19 if name not in ("terrain", "truck", "train"))
_SYNTHIA13 = tuple(name for name in _SYNTHIA16 if name not in ("wall", "fence", "pole"))

CLASS_SETS: dict[str, tuple[str, ...]] = {
    # The 19 Cityscapes evaluation classes, in trainId order.
    "cityscapes19": _CITYSCAPES19,
    # The classes SYNTHIA annotates (SYNTHIA -> Cityscapes benchmarks).
    "synthia16": _SYNTHIA16,
    # The 13-class SYNTHIA protocol, without the thin structures SYNTHIA renders poorly.
    "synthia13": _SYNTHIA13,
    # The bundled synthetic domains (trainers/data/synthetic.py), in their order: version 1 ...
    "synthetic": ("road", "sidewalk", "building", "pole", "traffic_sign", "vegetation", "sky", "person", "car"),
    # ... and version 2 (trainers/data/synthetic_v2.py): the 19 Cityscapes classes less rider, truck, bus,
    # train, motorcycle and bicycle.
    "synthetic_v2": tuple(
        name for name in _CITYSCAPES19 if name not in ("rider", "truck", "bus", "train", "motorcycle", "bicycle")
    ),
}


@dataclass(frozen=True)
class LabelMapping:
    """Raw id -> class index of one dataset's id table and one class set.

    ``lut[raw_id]`` is the class index (``IGNORE_INDEX`` for ignored ids); ``defined[raw_id]`` says
    whether the dataset defines that id at all. Both have 256 entries: every id table here is far
    below 256, and a wider raw id (a 16-bit label) is undefined by construction.
    """

    table_name: str
    class_set: str
    lut: np.ndarray
    defined: np.ndarray

    def apply(self, raw_ids: np.ndarray, path: str | Path) -> np.ndarray:
        """Map a (H, W) array of raw ids to uint8 class indices; undefined ids raise ``DatasetError``.

        ``path`` is only used to name the file in the error message.
        """
        raw = np.asarray(raw_ids)
        if raw.size == 0:
            return np.zeros(raw.shape, dtype=np.uint8)
        if raw.dtype.kind not in "iub":
            raise DatasetError(f"label '{path}' holds {raw.dtype} values, not integer ids")
        if raw.dtype.kind == "b" or raw.dtype == np.uint64:  # np.bincount takes neither
            raw = raw.astype(np.int64)
        lowest = int(raw.min())
        if lowest < 0:
            raise DatasetError(f"label '{path}' has negative ids (min {lowest}), not in the {self.table_name} id table")
        # bincount is a single linear pass: cheaper than np.unique's sort on a 2048x1024 label.
        present = np.flatnonzero(np.bincount(raw.ravel()))
        undefined = [int(i) for i in present if i >= self.defined.size or not self.defined[i]]
        if undefined:
            shown = ", ".join(str(i) for i in undefined[:10]) + (", ..." if len(undefined) > 10 else "")
            raise DatasetError(
                f"label '{path}' has ids not in the {self.table_name} id table "
                f"(defined: 0..{int(np.flatnonzero(self.defined).max())}): {shown}"
            )
        return self.lut[raw]


def _class_names(class_set: str) -> tuple[str, ...]:
    try:
        return CLASS_SETS[class_set]
    except KeyError:
        raise ValueError(f"unknown class set '{class_set}'; choose one of: {', '.join(CLASS_SETS)}") from None


def _build_mapping(table_name: str, id_names: tuple[str, ...], class_set: str) -> LabelMapping:
    names = _class_names(class_set)
    id_of_name = {name: raw_id for raw_id, name in enumerate(id_names)}
    missing = [name for name in names if name not in id_of_name]
    if missing:
        # Cannot happen for the built-in sets; guards a class set added later without its ids.
        raise ValueError(f"class set '{class_set}' has classes the {table_name} id table lacks: {missing}")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for class_index, name in enumerate(names):
        lut[id_of_name[name]] = class_index
    defined = np.zeros(256, dtype=bool)
    defined[: len(id_names)] = True
    lut.setflags(write=False)
    defined.setflags(write=False)
    return LabelMapping(table_name=table_name, class_set=class_set, lut=lut, defined=defined)


def cityscapes_mapping(class_set: str) -> LabelMapping:
    """Mapping of Cityscapes label ids (also GTA5's) to ``class_set``."""
    return _build_mapping("Cityscapes", CITYSCAPES_ID_NAMES, class_set)


def synthia_mapping(class_set: str) -> LabelMapping:
    """Mapping of SYNTHIA-RAND-CITYSCAPES class ids to ``class_set``."""
    return _build_mapping("SYNTHIA-RAND-CITYSCAPES", SYNTHIA_ID_NAMES, class_set)


def cityscapes_id_lut(class_set: str) -> np.ndarray:
    """(256,) uint8: Cityscapes label id -> index in ``class_set``; 255 = ignored or undefined."""
    return cityscapes_mapping(class_set).lut


def synthia_id_lut(class_set: str) -> np.ndarray:
    """(256,) uint8: SYNTHIA-RAND-CITYSCAPES class id -> index in ``class_set``; 255 = ignored or undefined."""
    return synthia_mapping(class_set).lut


def cityscapes_defined_ids() -> np.ndarray:
    """(256,) bool: which raw ids a Cityscapes/GTA5 label may contain (0..33)."""
    return cityscapes_mapping("cityscapes19").defined


def synthia_defined_ids() -> np.ndarray:
    """(256,) bool: which raw ids a SYNTHIA-RAND-CITYSCAPES label may contain (0..22)."""
    return synthia_mapping("synthia16").defined
