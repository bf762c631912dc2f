"""The key reference: every config key with its default, allowed values and meaning (for ``--help``
and docs/configuration.md, which a test keeps identical to ``markdown_reference``)."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

# Names only (no torch): `--help` must not wait seconds for torch to import. tests/test_choices.py
# keeps these lists equal to the registries that implement them.
from .schema import ExperimentConfig, field_meta


def yaml_value(value: Any) -> str:
    """A value as it is written in YAML (``true``, ``''``, ``[]``, ``0.001``), for help texts."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def describe_keys(width: int = 0) -> str:
    """Every config key with its default (as YAML), help and allowed names, for ``--help``; with ``width``
    each key's help is wrapped to that many columns, under its own column (or, on a narrow terminal,
    on the lines below the key)."""
    lines = []
    for key, (f, value) in field_meta(ExperimentConfig()).items():
        shown = "{...}" if key == "sweep.search_space" else yaml_value(value)
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices is not None:
            text += f" (one of: {', '.join(choices)})"
        head = f"  {key:<28} {shown:<14} "
        if not width:
            lines.append(head + text)
        elif width - len(head) >= 30:
            lines += textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * len(head)) or [head]
        else:  # too narrow for a column: the help goes under the key
            lines.append(head.rstrip())
            lines += textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def markdown_reference() -> str:
    """Every config key as a Markdown table (key, default as YAML, allowed values, meaning): the
    reference in docs/configuration.md, which a test keeps identical to this."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, (f, value) in field_meta(ExperimentConfig()).items():
        meta = f.metadata
        shown = "see below" if key == "sweep.search_space" else yaml_value(value)
        allowed = []
        if meta.get("choices") is not None:
            allowed.append(", ".join(f"`{c}`" for c in meta["choices"]))
        if meta.get("min") is not None:
            allowed.append(f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']:g}")
        if meta.get("max") is not None:
            allowed.append(f"<= {meta['max']:g}")
        if meta.get("path"):
            allowed.append("a path (relative: to where the command runs)")
        text = meta.get("help", "").replace("|", "\\|")
        rows.append(f"| `{key}` | `{shown}` | {'; '.join(allowed) or '-'} | {text} |")
    return "\n".join(rows) + "\n"
