"""``activeda COMMAND ...``: one entry point for every command (``[project.scripts]`` in pyproject.toml).

Each command is the same as ``python -m orchestrator.COMMAND``; nothing is imported until a command
is chosen, so ``activeda --help`` answers at once.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap

# command -> (module whose main(argv) runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("orchestrator.sweep.command", "run a Ray Tune sweep of active domain-adaptation trials"),
    "run": ("orchestrator.run", "run one trial without Tune, on the same code path (debugging)"),
    "annotate": ("orchestrator.annotate", "export a round's queries for people, import their answers"),
    "dashboard": ("orchestrator.dashboard", "serve the MLflow UI on 127.0.0.1 with each sweep's views"),
    "synth": ("orchestrator.synth", "write the bundled synthetic domains (GTA5/Cityscapes or folder layout)"),
    "data": ("orchestrator.data", "check a dataset in the folder layout (dataset.yaml, images, labels)"),
    "cluster": ("orchestrator.cluster.cluster_file", "check `ray up` cluster files, stage datasets to every node"),
    "tracking": ("orchestrator.tracking.command", "send what an MLflow outage left unsent (replay)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    columns = max(40, shutil.get_terminal_size().columns - 2)
    lines = ["usage: activeda COMMAND [ARGS ...]", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        head = f"  {name:<{width}}  "
        lines += textwrap.wrap(text, columns, initial_indent=head, subsequent_indent=" " * len(head))
    lines += ["", "activeda COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
