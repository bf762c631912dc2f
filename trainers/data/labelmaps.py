"""Class sets, and the mapping of a dataset's raw label ids to a class set.

A label PNG stores a dataset's own *raw ids*; a model is trained on *class indices* 0..K-1 of a class
set (plus ``IGNORE_INDEX``). Domain adaptation needs the same class set on both sides (GTA5 ->
Cityscapes uses the 19 Cityscapes evaluation classes, SYNTHIA -> Cityscapes the 16 or 13 classes
SYNTHIA has), so the mapping is built from class *names*: the class set decides which names exist
and their order; each dataset's YAML (``dataset_yaml``) says which raw id carries which class.

The named class sets below are lists of names, drawn from the classes of the target dataset's YAML
(their colours come from it); ``data.class_set: dataset`` takes the target YAML's classes whole.

Every raw id a dataset defines is either a class of the set or ignored (void, or a class the set
leaves out). An id the YAML does not define at all means the file is not what we think it is (a
colour label, a trainId label, another dataset), so it is refused with ``DatasetError`` rather than
silently ignored.

The id tables of Cityscapes (also GTA5's) and SYNTHIA-RAND-CITYSCAPES are the bundled YAMLs
``datasets/cityscapes.yaml`` and ``datasets/synthia.yaml``; their sources are named in them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset_yaml import ClassSet, DatasetSpec, bundled_dataset
from .errors import DatasetError

IGNORE_INDEX = 255
# data.class_set value that takes the classes of the target dataset's YAML whole.
CLASS_SET_FROM_DATASET = "dataset"

# The 19 Cityscapes evaluation classes in trainId order: the classes of the bundled Cityscapes YAML.
_CITYSCAPES19 = bundled_dataset("cityscapes").class_set.names
_SYNTHIA16 = tuple(name for name in _CITYSCAPES19 if name not in ("terrain", "truck", "train"))
_SYNTHIA13 = tuple(name for name in _SYNTHIA16 if name not in ("wall", "fence", "pole"))

CLASS_SETS: dict[str, tuple[str, ...]] = {
    # The 19 Cityscapes evaluation classes, in trainId order.
    "cityscapes19": _CITYSCAPES19,
    # The classes SYNTHIA annotates (SYNTHIA -> Cityscapes benchmarks).
    "synthia16": _SYNTHIA16,
    # The 13-class SYNTHIA protocol, without the thin structures SYNTHIA renders poorly.
    "synthia13": _SYNTHIA13,
    # The bundled synthetic domains (trainers/data/synthetic.py), in their order.
    "synthetic": ("road", "sidewalk", "building", "pole", "traffic_sign", "vegetation", "sky", "person", "car"),
}


# Further mIoU metrics of a named class set: metric -> the classes it averages, taken from the same
# confusion matrix. SYNTHIA -> Cityscapes tables report mIoU over SYNTHIA's 16 classes and over 13
# (without wall, fence and pole): the 16-class model's IoUs of those 13 classes, averaged (the
# synthia_set_16_to_13 selection of the public SYNTHIA -> Cityscapes evaluation code).
CLASS_SET_MIOUS: dict[str, dict[str, tuple[str, ...]]] = {"synthia16": {"miou13": _SYNTHIA13}}


@dataclass(frozen=True)
class LabelMapping:
    """Raw id -> class index of one dataset's id table and one class set.

    ``lut[raw_id]`` is the class index (``IGNORE_INDEX`` for ignored ids); ``defined[raw_id]`` says
    whether the dataset defines that id at all. Both have at least 256 entries (more when the dataset
    declares larger ids, up to 65535 for 16-bit labels); a wider raw id is undefined by construction.
    ``fingerprint`` changes whenever the mapping does (the verification cache keys files by it).
    """

    table_name: str
    class_set: str
    classes: tuple[str, ...]
    lut: np.ndarray
    defined: np.ndarray
    fingerprint: str

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
                f"(defined: {id_ranges(np.flatnonzero(self.defined))}): {shown}"
            )
        return self.lut[raw]


def id_ranges(ids) -> str:
    """Sorted ids as compact ranges: [0, 1, 2, 3, 7, 255] -> '0..3, 7, 255'."""
    parts, ids = [], [int(i) for i in ids]
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[k - 1] + 1:
            first, last = ids[start], ids[k - 1]
            parts.append(
                str(first) if first == last else f"{first}..{last}" if last > first + 1 else f"{first}, {last}"
            )
            start = k
    return ", ".join(parts)


def _class_names(class_set: str) -> tuple[str, ...]:
    try:
        return CLASS_SETS[class_set]
    except KeyError:
        raise ValueError(f"unknown class set '{class_set}'; choose one of: {', '.join(CLASS_SETS)}") from None


def named_class_set(name: str, dataset: DatasetSpec) -> ClassSet:
    """The named class set ``name`` (``CLASS_SETS``) with the colours ``dataset``'s YAML gives its classes.

    ``ValueError`` for an unknown name or when the dataset lacks one of its classes.
    """
    return dataset.class_set.subset(name, _class_names(name), CLASS_SET_MIOUS.get(name))


def build_label_mapping(dataset: DatasetSpec, class_set: ClassSet) -> LabelMapping:
    """Raw id -> index in ``class_set`` for ``dataset``'s id table, matched by class name.

    A class of the dataset that the class set leaves out is ignored; a class of the set that the
    dataset lacks is a ``DatasetError`` (it could never be learned from this dataset).
    """
    lacking = dataset.class_set.lacking(class_set.names)
    if lacking:
        raise DatasetError(
            f"class set '{class_set.name}' has classes the {dataset.name} dataset ('{dataset.path}') lacks: "
            f"{', '.join(lacking)}"
        )
    index_of = {name: index for index, name in enumerate(class_set.names)}
    class_of_train_id = [index_of.get(name, IGNORE_INDEX) for name in dataset.class_set.names]
    table = dataset.id_table()
    size = max(256, max(table) + 1)
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    defined = np.zeros(size, dtype=bool)
    for raw_id, train_id in table.items():
        defined[raw_id] = True
        if train_id != dataset.ignore_index:
            lut[raw_id] = class_of_train_id[train_id]
    lut.setflags(write=False)
    defined.setflags(write=False)
    digest = hashlib.sha256(lut.tobytes() + np.packbits(defined).tobytes()).hexdigest()[:16]
    return LabelMapping(
        table_name=dataset.name,
        class_set=class_set.name,
        classes=class_set.names,
        lut=lut,
        defined=defined,
        fingerprint=digest,
    )


def _mapping(bundled: str, class_set: str | ClassSet) -> LabelMapping:
    dataset = bundled_dataset(bundled)
    if not isinstance(class_set, ClassSet):
        class_set = named_class_set(class_set, dataset)
    return build_label_mapping(dataset, class_set)


def cityscapes_mapping(class_set: str | ClassSet) -> LabelMapping:
    """Mapping of Cityscapes label ids (also GTA5's) to ``class_set`` (a name of ``CLASS_SETS`` or a ``ClassSet``)."""
    return _mapping("cityscapes", class_set)


def synthia_mapping(class_set: str | ClassSet) -> LabelMapping:
    """Mapping of SYNTHIA-RAND-CITYSCAPES class ids to ``class_set`` (a name of ``CLASS_SETS`` or a ``ClassSet``)."""
    return _mapping("synthia", class_set)


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
