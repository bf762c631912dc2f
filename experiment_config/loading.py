"""Loading a config: YAML files, overrides and validation.

``load_config`` reads YAML layers (a partial file is fine), applies ``--smoke`` and ``--set`` overrides, and
validates; ``with_overrides`` gives a new validated config with dotted keys applied. Validation and
overriding are one unit: a search-space axis is checked by applying each of its values.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pixel_selectors.rules import REGIONS, RULES

# Names only (no torch): `--help` must not wait seconds for torch to import. tests/test_choices.py
# keeps these lists equal to the registries that implement them.
from .choices import IMAGENET_MODELS, MIN_BATCH_SIZE
from .schema import (
    AWS_REGION,
    CASES_AXIS,
    IMAGENET,
    S3_ENDPOINT,
    S3_OBJECT,
    SEARCH_SPACE_KINDS,
    SMOKE_OVERRIDES,
    URI,
    ConfigError,
    ExperimentConfig,
    field_meta,
    get_key,
    path_keys,
    storage_uri_problem,
)

# Keys renamed since earlier versions: a config that still uses one is refused, naming the new key.
RENAMED_KEYS = {"selection.selector": "selection.rule"}  # renamed key: the old name stays here


def renamed_problem(key: str) -> str | None:
    """Why ``key`` is refused when it is a renamed key (None when it is not)."""
    if key not in RENAMED_KEYS:
        return None
    return f"renamed to '{RENAMED_KEYS[key]}' (the selection rule; 'selector' names only LabOR's selector network S)"


# --- loading, overriding, validating ---------------------------------------------------------


def load_config(
    path: str | Path | list | tuple | None = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    *,
    smoke: bool = False,
) -> ExperimentConfig:
    """YAML file(s) (or defaults) -> smoke overrides -> ``--set`` overrides -> validated config.

    ``path`` may be a list of files: they are merged in order, a later file's keys winning over an
    earlier one's (section by section; a mapping-valued key such as ``sweep.search_space`` is
    replaced whole). Each file's keys and types are checked on their own, so an error names the file.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    raw: dict = {}
    for one in paths:
        layer = read_yaml(one)
        try:
            _build(ExperimentConfig, layer, prefix="")  # unknown keys and wrong types, named with the file
        except ConfigError as err:
            raise ConfigError(err.key, f"{err.problem} (in '{one}')") from None
        raw = merge_layers(raw, layer)
    try:
        cfg = from_dict(raw)
    except ConfigError as err:  # an out-of-range value of one file is that file's
        raise (ConfigError(err.key, f"{err.problem} (in '{paths[0]}')") if len(paths) == 1 else err) from None
    if smoke:
        cfg = with_overrides(cfg, SMOKE_OVERRIDES)
    if overrides:
        pairs = parse_set_args(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        cfg = with_overrides(cfg, pairs)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges a mapping whose keys the explicit ones may override
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class refuses it ("found unhashable key")
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader = _UniqueKeyLoader  # public for other YAML readers (dataset YAMLs): one duplicate-key rule


def merge_layers(base: Mapping[str, Any], layer: Mapping[str, Any], cls: type | None = None) -> dict:
    """``layer`` over ``base`` (raw YAML dicts): sections merge key by key, values are replaced whole."""
    cls = cls or ExperimentConfig
    hints = typing.get_type_hints(cls)
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        section = hints.get(key)
        if dataclasses.is_dataclass(section) and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_layers(out[key], value, section)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    """A config file's sections; ``ConfigError`` naming the file unless it is a UTF-8 YAML mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("", f"config file '{path}' is a folder, not a file")
    if not path.is_file():
        raise ConfigError("", f"config file '{path}' does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            "", f"config file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ConfigError("", f"config file '{path}' cannot be read: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise ConfigError("", f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if raw is None:  # empty, or only comments: most likely the wrong file, never a wish for the defaults
        raise ConfigError(
            "", f"config file '{path}' holds no mapping of sections (it is empty); give at least one section"
        )
    if not isinstance(raw, dict):
        raise ConfigError("", f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """``["adapt.lr=0.01", ...]`` -> ``{"adapt.lr": 0.01}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("", f"--set expects key=value, got '{pair}'")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(key, f"value '{text}' is not valid YAML") from None
    return out


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, raw, prefix="")
    validate(cfg)
    return cfg


def with_overrides(cfg: ExperimentConfig, pairs: Mapping[str, Any]) -> ExperimentConfig:
    """A new validated config with ``{"section.sub.key": value}`` applied (dict-valued keys replaced whole).

    A ``cases`` entry (a sampled value of the ``CASES_AXIS`` search-space axis) is a mapping of such
    keys; they are applied first, then the other pairs, and the result (a trial's config) has an empty
    search space unless the pairs set one.
    """
    pairs = dict(pairs)
    for key in pairs:
        if renamed_problem(key):
            raise ConfigError(key, renamed_problem(key))
    case = pairs.pop(CASES_AXIS, None)
    if case is not None:
        if not isinstance(case, Mapping):
            raise ConfigError(CASES_AXIS, f"a case must be a mapping of config keys, got {case!r}")
        pairs = {**case, **pairs}
        # A config with a sampled case applied is one trial's: its cases axis is done with, and
        # validating the other cases on top of this one would mix in keys that only this case sets
        # (e.g. selection.spl_mode=whole_mask under another case's labor_ppl). The other axes stay: a
        # PBT trial's config is only valid with the axes PBT mutates.
        pairs.setdefault("sweep.search_space", {k: v for k, v in cfg.sweep.search_space.items() if k != CASES_AXIS})
    data = cfg.to_dict()
    for key, value in pairs.items():
        parts = key.split(".")
        node, node_cls = data, ExperimentConfig
        for depth, part in enumerate(parts):
            fields = [f.name for f in dataclasses.fields(node_cls)]
            if part not in fields:
                if depth == 0 and len(parts) > 1:
                    raise ConfigError(key, f"unknown section '{part}'; choose one of: {', '.join(_sections())}")
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(key, f"unknown key; '{where}' has: {', '.join(fields)}")
            field_type = typing.get_type_hints(node_cls)[part]
            last = depth == len(parts) - 1
            if dataclasses.is_dataclass(field_type):
                if last:
                    inner = ", ".join(f.name for f in dataclasses.fields(field_type))
                    raise ConfigError(key, f"is a section, not a value; set one of its keys: {inner}")
                node, node_cls = node[part], field_type
            elif not last:
                raise ConfigError(key, f"'{'.'.join(parts[: depth + 1])}' is a value, not a section")
            else:
                node[part] = value
    return from_dict(data)


def _sections() -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(ExperimentConfig)
        if dataclasses.is_dataclass(getattr(ExperimentConfig(), f.name))
    ]


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(key, renamed_problem(key) or f"unknown key; allowed here: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        ftype = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value if value is not None else {}, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, ftype)
    return cls(**kwargs)


def _coerce(key: str, value: Any, ftype: type) -> Any:
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(key, f"must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(key, f"must be a number, got {value!r}")
    if ftype is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"must be a string, got {value!r}")
    if ftype is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    if ftype is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    raise TypeError(f"unsupported config type {ftype} for {key}")  # a bug in this module, not input


def validate(cfg: ExperimentConfig) -> None:
    """Range, choice and cross-field checks; raises the first ``ConfigError`` found."""
    for key, (f, value) in field_meta(cfg).items():
        meta = f.metadata
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None:
            if meta.get("min_exclusive") and not value > lo:
                raise ConfigError(key, f"must be > {lo:g}, got {value!r}")
            if not meta.get("min_exclusive") and not value >= lo:
                raise ConfigError(key, f"must be >= {lo:g}, got {value!r}")
        if hi is not None and not value <= hi:
            raise ConfigError(key, f"must be <= {hi:g}, got {value!r}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            noun = key.split(".")[-1]
            noun = {
                "name": "model",
                "format": "format",
                "rule": "rule",
                "class_set": "class set",
                "pool_split": "split",
                "val_split": "split",
            }.get(noun, noun)
            raise ConfigError(key, f"unknown {noun} '{value}'; choose one of: {', '.join(sorted(choices))}")
    # sweep.name becomes a folder under output_dir: it must not climb out of it or hide control characters.
    sweep_name = cfg.sweep.name
    if (
        not sweep_name
        or any(c in sweep_name for c in "/\\")
        or sweep_name.startswith(".")
        or not sweep_name.isprintable()
    ):
        raise ConfigError(
            "sweep.name",
            f"must be a plain folder name (printable, no '/' or '\\', not starting with '.'), got {sweep_name!r}",
        )
    if not cfg.output_dir:
        raise ConfigError("output_dir", "must not be empty")
    problem = pretrained_problem(cfg)
    if problem:
        raise ConfigError("model.pretrained", problem)
    if cfg.source.checkpoint and not Path(cfg.source.checkpoint).is_file():
        raise ConfigError("source.checkpoint", f"file '{cfg.source.checkpoint}' does not exist")
    min_batch = MIN_BATCH_SIZE.get(cfg.model.name, 1)
    for section in ("source", "adapt"):
        if getattr(cfg, section).batch_size < min_batch:
            raise ConfigError(
                f"{section}.batch_size",
                f"model '{cfg.model.name}' normalises with batch statistics and "
                f"needs >= {min_batch} images per step per Train worker; for "
                f"batch size 1 use deeplabv2_resnet101 (frozen batch norm) or "
                f"small_segnet",
            )
    if cfg.data.augment.scale_min > cfg.data.augment.scale_max:
        raise ConfigError(
            "data.augment.scale_min",
            f"must be <= data.augment.scale_max ({cfg.data.augment.scale_max:g}), got {cfg.data.augment.scale_min:g}",
        )
    pixels = cfg.data.height * cfg.data.width
    validate_procedure(cfg)
    whole_mask = cfg.selection.spl_mode == "whole_mask"
    rule = RULES.get(cfg.selection.rule)  # None: no selection
    if rule is not None and rule.kind == REGIONS and cfg.selection.budget_fraction <= 0 and not whole_mask:
        raise ConfigError(
            "selection.budget_fraction",
            f"region rule '{cfg.selection.rule}' spends a pixel budget: set it > 0 (LabOR SPL used 0.022)",
        )
    if cfg.selection.budget_fraction * cfg.selection.rounds > 1:
        raise ConfigError(
            "selection.budget_fraction",
            f"{cfg.selection.budget_fraction:g} x {cfg.selection.rounds} rounds is more than every pool pixel",
        )
    if cfg.selection.region_size % 2 == 0:
        raise ConfigError(
            "selection.region_size", f"must be odd (a square centred on a pixel), got {cfg.selection.region_size}"
        )
    if cfg.selection.budget_fraction == 0 and cfg.selection.points_per_image * cfg.selection.rounds > pixels:
        raise ConfigError(
            "selection.points_per_image",
            f"{cfg.selection.points_per_image} points x {cfg.selection.rounds} rounds exceed "
            f"the {pixels} pixels of a {cfg.data.height}x{cfg.data.width} image",
        )
    if cfg.selection.unlabeled_classes and cfg.selection.oracle == "human":
        raise ConfigError(
            "selection.unlabeled_classes",
            "withholds classes from the simulated oracle only; with "
            "selection.oracle=human, people label what they are shown",
        )
    validate_storage(cfg)
    validate_data_roots(cfg)
    validate_search_space(cfg)
    cases = next(iter(cfg.sweep.search_space[CASES_AXIS].values())) if CASES_AXIS in cfg.sweep.search_space else []
    varies_rounds = "selection.rounds" in cfg.sweep.search_space or any("selection.rounds" in c for c in cases)
    if cfg.sweep.scheduler != "fifo" and varies_rounds:
        raise ConfigError(
            "sweep.scheduler",
            f"{cfg.sweep.scheduler} compares trials round by round up to "
            f"selection.rounds: keep selection.rounds out of sweep.search_space "
            f"(or use sweep.scheduler=fifo)",
        )
    if cfg.sweep.scheduler == "pbt" and all(next(iter(spec)) == "grid" for spec in cfg.sweep.search_space.values()):
        raise ConfigError(
            "sweep.scheduler",
            "pbt mutates hyperparameters: give sweep.search_space at least one "
            "choice, uniform, loguniform or randint axis",
        )


def pretrained_problem(cfg: ExperimentConfig) -> str | None:
    """Why ``model.pretrained`` cannot start the configured model (None when it can, or is '').

    The form of a URI is checked here; whether its object exists is the pre-flight's (it needs the network).
    """
    value, name = cfg.model.pretrained, cfg.model.name
    if value == "":
        return None
    if value == IMAGENET:
        if name not in IMAGENET_MODELS:
            return f"model '{name}' has no ImageNet weights; 'imagenet' is for: {', '.join(IMAGENET_MODELS)}"
        if name == "deeplabv2_resnet101" and cfg.model.deeplabv2_style == "adaptsegnet":
            # Same tensor names, other input: the ImageNet file of this layout is DeepLab's Caffe conversion.
            return (
                "'imagenet' is torchvision's ResNet-101 for RGB input; deeplabv2_style 'adaptsegnet' takes "
                "Caffe BGR input: give DeepLab's ImageNet file (DeepLab_resnet_pretrained_init) as a path"
            )
        return None
    if value.startswith("s3://"):
        return None if S3_OBJECT.match(value) else f"must be s3://bucket/key of one object, got {value!r}"
    if value.startswith("file://"):
        local = value[len("file://") :]
        return None if Path(local).is_file() else f"file '{local}' does not exist"
    if URI.match(value):
        return f"unsupported URI {value!r}; give 'imagenet', a file, file://PATH or s3://bucket/key"
    return None if Path(value).is_file() else f"file '{value}' does not exist"


def validate_procedure(cfg: ExperimentConfig) -> None:
    """The warm-up, the step split over rounds, SPL's whole-mask mode and RIPU's point window."""
    if 0 < cfg.adapt.total_steps < cfg.selection.rounds:
        raise ConfigError(
            "adapt.total_steps",
            f"{cfg.adapt.total_steps} steps cannot be split over "
            f"{cfg.selection.rounds} rounds (at least one step per round)",
        )
    if cfg.selection.spl_mode == "whole_mask":
        if cfg.selection.rule != "labor_spl":
            raise ConfigError(
                "selection.spl_mode",
                f"'whole_mask' is labor_spl's mode; rule '{cfg.selection.rule}' takes 'budget'",
            )
        if cfg.selection.budget_fraction > 0:
            raise ConfigError(
                "selection.budget_fraction",
                "must be 0 with selection.spl_mode=whole_mask (the whole "
                "inconsistency mask is labeled, whatever it costs)",
            )
    if cfg.selection.point_window and cfg.selection.point_window % 2 == 0:
        raise ConfigError(
            "selection.point_window",
            f"must be odd (a square centred on a pixel) or 0, got {cfg.selection.point_window}",
        )


def validate_data_roots(cfg: ExperimentConfig) -> None:
    """A folder dataset names its folder: it has no bundled synthetic stand-in (that one is written in
    the GTA5 and Cityscapes layouts). Whether the folder and its dataset.yaml are good is preflight's."""
    for side in ("source", "target"):
        domain = getattr(cfg.data, side)
        if domain.format == "folder" and not domain.root:
            raise ConfigError(
                f"data.{side}.root", "format 'folder' needs the dataset's folder (the one holding dataset.yaml)"
            )


def validate_storage(cfg: ExperimentConfig) -> None:
    """The form of the storage keys; whether the bucket can be reached is ``storage.check_storage``."""
    problem = storage_uri_problem(cfg.storage.uri)
    if problem:
        raise ConfigError("storage.uri", problem)
    if cfg.storage.endpoint and not S3_ENDPOINT.match(cfg.storage.endpoint):
        raise ConfigError(
            "storage.endpoint",
            f"must be http(s)://host[:port] of an S3-compatible server ('': AWS S3), got {cfg.storage.endpoint!r}",
        )
    if cfg.storage.region and not AWS_REGION.match(cfg.storage.region):
        raise ConfigError(
            "storage.region",
            f"must be a region name such as 'eu-west-1' ('': the bucket's own), got {cfg.storage.region!r}",
        )
    for key in ("endpoint", "region"):
        if getattr(cfg.storage, key) and not cfg.storage.uri:
            raise ConfigError(f"storage.{key}", "is set but storage.uri is empty (give s3://bucket/prefix)")


def validate_search_space(cfg: ExperimentConfig) -> None:
    """Every axis names a real config key and every value it can take is valid for that key."""
    space = cfg.sweep.search_space
    meta = field_meta(cfg)
    for key, spec in space.items():
        where = f"sweep.search_space.{key}"
        if renamed_problem(key):
            raise ConfigError(where, renamed_problem(key))
        if key == CASES_AXIS:
            _validate_cases(cfg, spec, where)
            continue
        if key.startswith("sweep.") or key not in meta:
            raise ConfigError(where, "not a tunable config key (use 'section.name' outside 'sweep')")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(where, f"must be one of {{{' | '.join(SEARCH_SPACE_KINDS)}: ...}}, got {spec!r}")
        ((kind, values),) = spec.items()
        if kind not in SEARCH_SPACE_KINDS:
            raise ConfigError(where, f"unknown search kind '{kind}'; choose one of: {', '.join(SEARCH_SPACE_KINDS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, f"'{kind}' needs a non-empty list, got {values!r}")
        if kind in ("grid", "choice"):
            samples = values
        else:
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(where, f"'{kind}' needs [low, high] numbers, got {values!r}")
            low, high = values
            if not low < high:
                raise ConfigError(where, f"'{kind}' needs low < high, got {values!r}")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(where, f"'loguniform' needs low > 0, got {values!r}")
            if kind == "randint" and not all(float(v).is_integer() for v in values):
                raise ConfigError(where, f"'randint' needs integer bounds, got {values!r}")
            samples = [low, high - 1 if kind == "randint" else high]
        for sample in samples:
            try:
                with_overrides(_without_space(cfg), {key: sample})
            except ConfigError as err:
                raise ConfigError(where, f"value {sample!r} is invalid: {err.problem}") from None


def _validate_cases(cfg: ExperimentConfig, spec: Any, where: str) -> None:
    """``cases: {grid|choice: [{key: value, ...}, ...]}``: every case a valid set of tunable keys."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in ("grid", "choice"):
        raise ConfigError(where, f"must be {{grid: [cases]}} or {{choice: [cases]}}, got {spec!r}")
    ((_, cases),) = spec.items()
    if not isinstance(cases, list) or not cases:
        raise ConfigError(where, f"needs a non-empty list of cases, got {cases!r}")
    meta = field_meta(cfg)
    other_axes = set(cfg.sweep.search_space) - {CASES_AXIS}
    for number, case in enumerate(cases, start=1):
        if not isinstance(case, Mapping) or not case:
            raise ConfigError(where, f"case {number} must be a non-empty mapping of config keys, got {case!r}")
        for key in case:
            if renamed_problem(key):
                raise ConfigError(where, f"case {number}: '{key}' {renamed_problem(key)}")
            if key.startswith("sweep.") or key not in meta:
                raise ConfigError(where, f"case {number}: '{key}' is not a tunable config key")
            if key in other_axes:
                raise ConfigError(where, f"case {number}: '{key}' is also its own search-space axis")
        # Each case with every combination of the other grid/choice axes (a case may be valid alone
        # and not beside another axis' value, e.g. a budget fraction times more rounds).
        for combination in _axis_combinations(cfg):
            try:
                with_overrides(_without_space(cfg), {**case, **combination})
            except ConfigError as err:
                beside = f" with {', '.join(f'{k}={v!r}' for k, v in combination.items())}" if combination else ""
                raise ConfigError(where, f"case {number}{beside} is invalid: {err.key}: {err.problem}") from None


def _axis_combinations(cfg: ExperimentConfig) -> list[dict]:
    """Every combination of the values of the grid and choice axes besides ``cases`` ([{}] if none)."""
    axes = {
        key: spec[next(iter(spec))]
        for key, spec in cfg.sweep.search_space.items()
        if key != CASES_AXIS and next(iter(spec)) in ("grid", "choice")
    }
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _without_space(cfg: ExperimentConfig) -> ExperimentConfig:
    clone = copy.deepcopy(cfg)
    clone.sweep.search_space = {}
    clone.sweep.scheduler = "fifo"  # checked on the whole config, not per sampled value
    return clone


def with_absolute_paths(cfg: ExperimentConfig, base: str | Path | None = None) -> ExperimentConfig:
    """Relative paths (every key of ``path_keys()``) resolved against ``base`` (default: the working
    directory, where the command ran), once, in the driver. Names (``model.pretrained: imagenet``) and
    URIs (``s3://``, ``file://``) are left as they are.

    Ray Tune runs trials in their own working directories, so a relative path would mean
    something else in every process.
    """
    base = Path(base or Path.cwd())
    pairs = {}
    for key in path_keys():
        value = get_key(cfg, key)
        if (value == IMAGENET and key == "model.pretrained") or URI.match(value):
            continue  # a name or a URI, not a relative path
        if value and not Path(value).is_absolute():
            pairs[key] = str((base / value).resolve())
    return with_overrides(cfg, pairs) if pairs else cfg
