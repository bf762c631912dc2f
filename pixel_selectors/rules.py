"""The selection rules: one record per rule, in one registry, ``RULES``.

A selection rule picks the pixels of one target image that the oracle is asked to label. Its record
says everything the rest of the project asks about it:

- ``function``: the rule itself, named ``"module:attr"`` and imported on first use, so that this
  module imports nothing but the standard library: the config (``experiment_config``, which never
  imports torch) validates rule names and kinds against this same registry;
- ``kind``: how it spends a budget, with one of two signatures:

  - ``"points"``: ``fn(head_probs, num_points, labeled=None, seed=0, **params) -> PointQuery``, the
    ``num_points`` best points of one image (exactly that many unless the image runs out; then
    ``shortfall`` says by how much);
  - ``"regions"``: ``fn(head_probs, labeled=None, seed=0, **params) -> RegionQuery``, every
    candidate region of one image, ranked, with no per-image budget: the pool-wide pixel budget is
    spent by ``budget.GlobalBudget``, which merges the candidates of all images;

- ``reads``: which network's outputs it reads, LabOR's two-head selector network S
  (``"selector_network"``) or the segmenter G (``"segmenter"``);
- ``tiles``: its candidate regions tile the unlabeled pixels (non-overlapping squares), so under the
  ``share`` spread a driver can bound, before ranking, the share any image can be asked for
  (``apply.select_image``'s ``max_share``); LabOR SPL's share is of its inconsistency mask, whose
  size only the ranking finds;
- ``window_key``: the ``selection`` config key that gives its window side ``k`` (its only
  parameter), and ``default_window`` the function of the image width used when that key is 0.

``head_probs`` is a sequence of (K, H, W) softmax maps of ONE target image, ``labeled`` an optional
bool (H, W) mask of pixels already labeled (never returned), ``seed`` makes random rules repeatable.
Point rules can spend a pool-wide budget too: ask each image for ``budget.points_per_image(...)``
points and merge with ``GlobalBudget.add_points`` / ``budget.merge_points``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

POINTS, REGIONS = "points", "regions"
KINDS = (POINTS, REGIONS)
SELECTOR_NETWORK, SEGMENTER = "selector_network", "segmenter"
NETWORKS = (SELECTOR_NETWORK, SEGMENTER)


@functools.cache
def _resolve(reference: str) -> Callable:
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class SelectionRule:
    """One selection rule: its function and what the config, the ranking actors and the driver ask of it."""

    name: str
    function: str
    kind: str
    reads: str
    tiles: bool = False
    window_key: str | None = None
    default_window: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.reads not in NETWORKS:
            raise ValueError(f"selection rule '{self.name}': kind must be one of {KINDS}, reads one of {NETWORKS}")
        if self.tiles and self.kind != REGIONS:
            raise ValueError(f"selection rule '{self.name}': only a region rule can tile")

    @property
    def select(self) -> Callable:
        """The rule's function (imported now if it was not yet)."""
        return _resolve(self.function)

    def params(self, selection: Any, width: int) -> dict[str, Any]:
        """Keyword parameters of the rule for images ``width`` pixels wide, from the ``selection``
        config section (``experiment_config.schema.SelectionConfig``): the window side ``k`` of the
        rules that have one (RIPU's points: ``selection.point_window``, 0 meaning RIPU's 65 at 2048
        wide, scaled; the square regions: ``selection.region_size``)."""
        if self.window_key is None:
            return {}
        k = int(getattr(selection, self.window_key) or 0)
        if not k and self.default_window is not None:
            k = _resolve(self.default_window)(width)
        return {"k": k}


RULES: dict[str, SelectionRule] = {
    rule.name: rule
    for rule in (
        SelectionRule("labor_ppl", "pixel_selectors.labor:labor_ppl", POINTS, SELECTOR_NETWORK),
        SelectionRule("labor_spl", "pixel_selectors.labor:labor_spl", REGIONS, SELECTOR_NETWORK),
        # random and random_regions read G for its shape only.
        SelectionRule("random", "pixel_selectors.baselines:random_points", POINTS, SEGMENTER),
        SelectionRule("entropy", "pixel_selectors.baselines:entropy_points", POINTS, SEGMENTER),
        SelectionRule("margin", "pixel_selectors.baselines:margin_points", POINTS, SEGMENTER),
        SelectionRule(
            "region_impurity",
            "pixel_selectors.ripu:region_impurity",
            POINTS,
            SEGMENTER,
            window_key="point_window",
            default_window="pixel_selectors.ripu:ripu_point_window",
        ),
        SelectionRule(
            "region_impurity_regions",
            "pixel_selectors.ripu:region_impurity_regions",
            REGIONS,
            SEGMENTER,
            tiles=True,
            window_key="region_size",
        ),
        SelectionRule(
            "random_regions",
            "pixel_selectors.baselines:random_regions",
            REGIONS,
            SEGMENTER,
            tiles=True,
            window_key="region_size",
        ),
    )
}
