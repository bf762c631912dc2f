"""Class colours for overlays, annotation exports and reports.

A class set's palette gives each class id an RGB colour: the Cityscapes colour of each class name it
knows (cityscapesScripts' label table), and for names it lacks, matplotlib's ``tab20`` colours in
order (their values written out here, so this module needs neither matplotlib nor torch).
"""

from __future__ import annotations

from collections.abc import Sequence

# The Cityscapes palette, by this project's class names (0-255 RGB).
CITYSCAPES_PALETTE: dict[str, tuple[int, int, int]] = {
    "road": (128, 64, 128),
    "sidewalk": (244, 35, 232),
    "building": (70, 70, 70),
    "wall": (102, 102, 156),
    "fence": (190, 153, 153),
    "pole": (153, 153, 153),
    "traffic_light": (250, 170, 30),
    "traffic_sign": (220, 220, 0),
    "vegetation": (107, 142, 35),
    "terrain": (152, 251, 152),
    "sky": (70, 130, 180),
    "person": (220, 20, 60),
    "rider": (255, 0, 0),
    "car": (0, 0, 142),
    "truck": (0, 0, 70),
    "bus": (0, 60, 100),
    "train": (0, 80, 100),
    "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
}

# matplotlib's qualitative colormap tab20 (0-255 RGB), the fallback for classes Cityscapes lacks.
TAB20: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (174, 199, 232),
    (255, 127, 14),
    (255, 187, 120),
    (44, 160, 44),
    (152, 223, 138),
    (214, 39, 40),
    (255, 152, 150),
    (148, 103, 189),
    (197, 176, 213),
    (140, 86, 75),
    (196, 156, 148),
    (227, 119, 194),
    (247, 182, 210),
    (127, 127, 127),
    (199, 199, 199),
    (188, 189, 34),
    (219, 219, 141),
    (23, 190, 207),
    (158, 218, 229),
)


def fallback_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` colours (RGB in [0, 1]) from tab20, repeating after 20."""
    return [tuple(c / 255.0 for c in TAB20[i % len(TAB20)]) for i in range(max(n, 1))]


def class_palette(class_names: Sequence[str]) -> list[tuple[float, float, float]]:
    """RGB in [0, 1] per class id: the Cityscapes colour of each name, tab20 for names it lacks."""
    fallback = fallback_colours(len(class_names))
    return [
        tuple(c / 255.0 for c in CITYSCAPES_PALETTE[name]) if name in CITYSCAPES_PALETTE else fallback[i]
        for i, name in enumerate(class_names)
    ]
