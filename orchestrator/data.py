"""``python -m orchestrator.data check PATH``: check a dataset in the folder layout before a run uses it.

PATH is the dataset's folder (the one holding dataset.yaml)::

    dataset.yaml                          classes, ids, palette, ignore index, splits
    images/<split>/NAME.{png,jpg,jpeg}    (or images/NAME.* with split lists in dataset.yaml)
    labels/<split>/NAME.png               single-channel label ids

It checks the YAML (types, duplicate ids and names, palette entries, split lists), that every image
has its label, that image and label sizes match, and that every id in a label is declared; it reads
every file with the loaders' own code and prints the pixels per class of each split. Each problem is
one line on stderr; the exit status is 1 when there is any. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.command_line import HelpFormatter

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activeda data", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="check a folder dataset (dataset.yaml, images, labels) and print its pixels per class",
        description="Check a folder dataset and print its pixels per class; problems go to stderr, one per line.",
    )
    check.add_argument("path", metavar="PATH", help="the dataset folder, holding dataset.yaml")
    return parser


def pixel_table(report) -> list[str]:
    """The pixels per class of each split (native resolution), with each class's share, as text lines."""
    names = list(report.spec.class_set.names)
    splits = list(report.pixels)
    rows = [(str(k), name) for k, name in enumerate(names)] + [("", "(ignored)")]
    header = ["train id", "class", *splits]
    cells = []
    for row, (train_id, name) in enumerate(rows):
        values = []
        for split in splits:
            counts = report.pixels[split]
            total = int(counts.sum())
            share = f" ({100 * counts[row] / total:5.1f}%)" if total else ""
            values.append(f"{int(counts[row]):,}{share}")
        cells.append([train_id, name, *values])
    widths = [max(len(str(line[i])) for line in [header, *cells]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(str(v).rjust(w) if i != 1 else str(v).ljust(w) for i, (v, w) in enumerate(zip(line, widths)))

    return [fmt(header), *(fmt(line) for line in cells)]


def check(path: str) -> int:
    from trainers.data.folder import check_folder_dataset

    report = check_folder_dataset(path, progress=lambda text: print(text, file=sys.stderr, flush=True))
    if report.spec is not None:
        spec = report.spec
        print(f"dataset '{spec.name}' ({spec.path}): {len(spec.class_set.names)} classes")
        print("images: " + (", ".join(f"{split} {count}" for split, count in report.images.items()) or "none"))
        if report.pixels:
            print("pixels per class (labels at their own size):")
            print("\n".join(pixel_table(report)))
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found")
        return EXIT_PROBLEMS
    print("ok: no problems found")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check(args.path)
    return EXIT_USAGE  # argparse refuses other commands before this


if __name__ == "__main__":
    sys.exit(main())
