"""Command-line handling shared by ``orchestrator.sweep`` and ``orchestrator.run``.

Everything here is light: building the parser and printing ``--help`` import neither torch nor Ray
(``tests/test_cli.py`` times it). The config is assembled in this order, later steps winning:

1. the built-in defaults (the same as ``configs/default.yaml``);
2. each ``--config FILE``, in the order given (sections merge key by key);
3. ``--smoke``'s tiny settings;
4. ``--set KEY=VALUE`` and bare ``KEY=VALUE`` arguments (Hydra style), in that order;
5. the shortcuts (``--name``, ``--output-dir``, ``--num-samples``, ``--max-concurrent``);

then every path key (``config.path_keys()``) is made absolute against the directory the command
ran in, because Ray runs trials in other working directories.
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap

from experiment_config import (
    ConfigError,
    ExperimentConfig,
    describe_keys,
    load_config,
    with_absolute_paths,
    with_overrides,
)


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that set up trials, shared by ``orchestrator.sweep`` and ``orchestrator.run``."""
    parser.add_argument(
        "assignments",
        nargs="*",
        metavar="KEY=VALUE",
        help="override a config key, e.g. adapt.lr=0.0005 (the same as --set; values are YAML)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="experiment config; repeatable, later files win key by key (default: built-in "
        "defaults, the same as configs/default.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set adapt.lr=0.0005 (repeatable; values are YAML)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny images, few steps, two trials: the whole distributed path in about 2 minutes",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI: any store MLflow accepts (sqlite:///, postgresql://, mysql://, "
        "http(s)://, file:, databricks); default: tracking.uri, then $MLFLOW_TRACKING_URI, "
        "then sqlite:///mlflow.db in the working directory",
    )
    parser.add_argument(
        "--address", metavar="ADDR", help="Ray cluster to join ('auto' for the running one); default: start a local Ray"
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        metavar="N",
        help="CPUs of the local Ray (default: all of this machine's); ignored with --address",
    )
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="start the local Ray without its dashboard (default: on, at http://127.0.0.1:8265, "
        "unless $ACTIVEDA_RAY_DASHBOARD=0)",
    )
    parser.add_argument("--output-dir", metavar="DIR", help="shortcut for output_dir=DIR")
    parser.add_argument("--name", metavar="NAME", help="shortcut for sweep.name=NAME")
    parser.add_argument("-q", "--quiet", action="store_true", help="less progress output")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help, with descriptions and epilogs wrapped to the terminal's width too.

    A paragraph of unindented lines is filled to the width; an indented line (an example command, a
    key of the config table) keeps its indent and wraps under it. argparse takes the width from the
    terminal (``$COLUMNS`` when set).
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            lines = block.split("\n")
            if any(line.startswith(" ") for line in lines):
                blocks.append("\n".join(self._wrap_indented(line, width, indent) for line in lines))
                continue
            # Unindented: a paragraph, or a list whose items ("- ", "1. ") start lines of their own.
            items: list[list[str]] = []
            for line in lines:
                if not items or BULLET.match(line):
                    items.append([])
                items[-1].append(line.strip())
            filled = []
            for item in items:
                bullet = BULLET.match(item[0])
                hang = indent + " " * (len(bullet.group(0)) if bullet else 0)
                filled.append(textwrap.fill(" ".join(item), width, initial_indent=indent, subsequent_indent=hang))
            blocks.append("\n".join(filled))
        return "\n\n".join(blocks)

    @staticmethod
    def _wrap_indented(line: str, width: int, indent: str) -> str:
        if len(indent + line) <= width or not line.strip():
            return indent + line
        lead = indent + " " * (len(line) - len(line.lstrip()))
        return "\n".join(textwrap.wrap(line.strip(), width, initial_indent=lead, subsequent_indent=lead + "    "))


# A list item at the start of a help line: "- ", "* " or "1. ".
BULLET = re.compile(r"^(?:[-*]|\d+\.) ")


def help_width() -> int:
    """The columns argparse wraps help to (the terminal's, less its margin of 2)."""
    return max(40, shutil.get_terminal_size().columns - 2)


def config_epilog(prog: str) -> str:
    """The ``--help`` epilog: every config key with its YAML default, and examples."""
    return (
        "config keys (section.name, default as YAML, meaning) for KEY=VALUE, --set and YAML files:\n"
        + describe_keys(help_width())
        + "\n\nexamples:\n"
        f"  {prog} --smoke\n"
        f"  {prog} adapt.steps=200 selection.rounds=2\n"
        f"  {prog} --config configs/gta5_to_cityscapes.yaml --config my-cluster.yaml --set adapt.steps=200\n"
        f"  {prog} 'sweep.search_space={{selection.points_per_image: {{grid: [10, 40]}}}}'\n"
    )


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options and bare ``KEY=VALUE`` arguments in any order."""
    return parser.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """The validated config the command line describes, with every path key absolute."""
    for text in getattr(args, "assignments", []):
        key, sep, _ = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError("", f"'{text}' is not an option or a KEY=VALUE override (e.g. adapt.steps=200)")
    overrides = [*args.overrides, *getattr(args, "assignments", [])]
    cfg = load_config(args.config or None, overrides, smoke=args.smoke)
    shortcuts = {
        "sweep.num_samples": getattr(args, "num_samples", None),
        "sweep.max_concurrent": getattr(args, "max_concurrent", None),
        "output_dir": args.output_dir,
        "sweep.name": args.name,
    }
    shortcuts = {k: v for k, v in shortcuts.items() if v is not None}
    return with_absolute_paths(with_overrides(cfg, shortcuts) if shortcuts else cfg)


# Exit codes of every command.
EXIT_OK = 0
EXIT_TRIALS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_AWAITING_ANNOTATION = 3  # human oracle: trials wait for a round's answers; import them, then --resume
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
