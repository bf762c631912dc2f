"""The typed experiment configuration: one ``ExperimentConfig`` describes one trial completely.

This package sits below ``trainers/`` and ``orchestrator/``: the driver builds and validates the
config, and Ray Train workers and ranking actors receive the same typed object. It imports neither
torch nor Ray (``--help`` must answer at once); of the project it imports only the selection rules'
registry, ``pixel_selectors.rules``, which imports nothing but the standard library.

- ``schema``: the dataclasses, their defaults, help texts and allowed ranges; ``ConfigError``.
- ``loading``: YAML files, ``--set`` overrides, validation (``load_config``, ``with_overrides``).
- ``reference``: the key reference for ``--help`` and docs/configuration.md.
- ``choices``: the names the config accepts (models, formats, class sets), without importing the
  code that implements them.
"""

from .loading import (
    from_dict,
    load_config,
    merge_layers,
    parse_set_args,
    read_yaml,
    validate,
    with_absolute_paths,
    with_overrides,
)
from .reference import describe_keys, markdown_reference, yaml_value
from .schema import (
    CASES_AXIS,
    NO_SELECTION,
    S3_URI,
    SMOKE_OVERRIDES,
    ConfigError,
    ExperimentConfig,
    path_keys,
    storage_uri_problem,
)

__all__ = [
    "CASES_AXIS",
    "NO_SELECTION",
    "S3_URI",
    "SMOKE_OVERRIDES",
    "ConfigError",
    "ExperimentConfig",
    "describe_keys",
    "from_dict",
    "load_config",
    "markdown_reference",
    "merge_layers",
    "parse_set_args",
    "path_keys",
    "read_yaml",
    "storage_uri_problem",
    "validate",
    "with_absolute_paths",
    "with_overrides",
    "yaml_value",
]
