"""Pixel selection: plain PyTorch/numpy, probabilities in, queries out.

The selection rules are described in ``rules`` (one record per rule in ``RULES``: function, kind,
the network it reads, tiling, window); ``apply.select_image`` applies one to one image. The other
modules hold the rules (``labor``, ``baselines``, ``ripu``), the query types (``base``), the
pool-wide budget (``budget``), annotation cost (``cost``) and mask encodings (``encoding``).

Importing this package imports no torch: the config validates rule names against ``rules.RULES``
without it (``--help`` answers at once). The names below are imported from their modules on
first use.
"""

from __future__ import annotations

import importlib

from .rules import KINDS, NETWORKS, POINTS, REGIONS, RULES, SEGMENTER, SELECTOR_NETWORK, SelectionRule

# name -> the module that defines it, imported when the name is first asked for (PEP 562).
_LAZY = {
    **dict.fromkeys(("PointQuery", "RegionQuery", "allocate_evenly", "labeled_mask"), "base"),
    **dict.fromkeys(("entropy_points", "margin_points", "random_points", "random_regions"), "baselines"),
    **dict.fromkeys(
        (
            "BudgetResult",
            "GlobalBudget",
            "Pick",
            "merge_points",
            "merge_regions",
            "points_per_image",
            "points_to_regions",
            "share_cap",
            "share_of_candidates",
            "within_share_cap",
        ),
        "budget",
    ),
    **dict.fromkeys(("clicks_for_points", "clicks_for_region", "clicks_for_regions"), "cost"),
    **dict.fromkeys(("pack_bits", "rle_decode", "rle_encode", "unpack_bits"), "encoding"),
    **dict.fromkeys(("head_discrepancy", "inconsistency_mask", "labor_ppl", "labor_spl"), "labor"),
    **dict.fromkeys(
        (
            "blocked_by_labels",
            "region_impurity",
            "region_impurity_regions",
            "ripu_maps",
            "ripu_point_window",
        ),
        "ripu",
    ),
    "select_image": "apply",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "KINDS",
    "NETWORKS",
    "POINTS",
    "REGIONS",
    "RULES",
    "SEGMENTER",
    "SELECTOR_NETWORK",
    "SelectionRule",
    *_LAZY,
]
