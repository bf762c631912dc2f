"""Class colours for overlays, annotation exports and reports.

A dataset's YAML gives each class its RGB colour (``dataset_yaml``; the Cityscapes colours are those
of the bundled ``datasets/cityscapes.yaml``), and ``class_palette`` takes that palette. Without one,
each class name takes its Cityscapes colour, and names Cityscapes lacks take matplotlib's ``tab20``
colours in order (their values written out here, so this module needs neither matplotlib nor torch).
"""

from __future__ import annotations

from collections.abc import Sequence

from .dataset_yaml import bundled_dataset

# The Cityscapes palette, by this project's class names (0-255 RGB): the bundled Cityscapes YAML's.
CITYSCAPES_PALETTE: dict[str, tuple[int, int, int]] = dict(
    zip(bundled_dataset("cityscapes").class_set.names, bundled_dataset("cityscapes").class_set.colors)
)

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


def class_palette(
    class_names: Sequence[str], colors: Sequence[Sequence[int]] | None = None
) -> list[tuple[float, float, float]]:
    """RGB in [0, 1] per class id: ``colors`` (0-255 RGB per class id: a dataset YAML's palette,
    ``ClassSet.colors``) when given; else the Cityscapes colour of each name, tab20 for names it lacks."""
    if colors is not None:
        if len(colors) != len(class_names):
            raise ValueError(f"{len(colors)} colours for {len(class_names)} classes")
        return [tuple(c / 255.0 for c in colour) for colour in colors]
    fallback = fallback_colours(len(class_names))
    return [
        tuple(c / 255.0 for c in CITYSCAPES_PALETTE[name]) if name in CITYSCAPES_PALETTE else fallback[i]
        for i, name in enumerate(class_names)
    ]
