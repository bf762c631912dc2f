"""Human annotation: export a round's queries, import the answers into the label store.

With ``selection.oracle: human`` a trial ranks the pool, writes the round's queries to
``<trial dir>/queries/round-NNNN.json`` and stops, waiting. People label exactly those pixels and
fill in the ``labels`` of every image; ``python -m orchestrator.annotate import`` checks the answers
against the queries and records them as the round; ``python -m orchestrator.sweep --resume`` then
trains on them and goes on.

File format (JSON, UTF-8; no pickle anywhere)::

    {"format": "activeda-queries", "version": 1, "round": 1, "strategy": "labor_ppl",
     "classes": ["road", ...],
     "images": [{"image_id": 3, "image": "<path of the pool image, for the annotation tool>",
                 "height": 64, "width": 128,
                 "original_height": 1024, "original_width": 2048,  # the original image's (and label's) size
                 "points": [[y, x], ...]          # point rules, in selection order
                 or "mask_rle": [start, length, ...],  # region rules: run-length mask
                 "clicks": 4.0,
                 "labels": [...]}]}               # the answer: one class index per point, or per mask
                                                  # pixel in ascending row-major order; 255 = unsure

``points`` and ``mask_rle`` are on the selection grid (``height x width``, the label store's
coordinates); grid pixel (y, x) stands for the original pixel under its centre,
``trainers.data.coordinates.label_coordinates`` (what the simulated oracle reveals, and where the
tool exports below put it).

The import never reads a path from the file and refuses anything that does not match the exported
queries pixel for pixel, so an answer file can neither move the budget nor point outside the pool.

Annotation tools: ``export --format labelstudio|coco|png`` writes the round's queries for Label Studio,
a COCO tool or as PNG masks, in the original image's coordinates, and ``import --format ...`` reads
their exports back through the same checks (``orchestrator.labels.formats``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.command_line import HelpFormatter
from orchestrator.labels import FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeda annotate",
        description=__doc__.split("\n\nFile format")[0]
        + "\n\nThe file format and the annotation tools: docs/annotation.md.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a round's queries for an annotation tool (original image coordinates)")
    exp.add_argument("--trial-dir", required=True, help="the trial's folder (runs/<sweep>/trials/<trial id>)")
    exp.add_argument("--round", type=int, required=True, help="the round whose queries to export")
    exp.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        metavar="FORMAT",
        help="labelstudio: tasks.json + labeling_config.xml; coco: coco.json (keypoints or RLE masks); "
        "png: masks/<image id>.png",
    )
    exp.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created)")
    exp.add_argument(
        "--image-url-prefix",
        default="",
        metavar="PREFIX",
        help="Label Studio: put before each image path in the tasks, e.g. '/data/local-files/?d=' "
        "(default: the path as it is)",
    )
    imp = sub.add_parser("import", help="record the answers of a round (then resume the sweep)")
    imp.add_argument("--trial-dir", required=True, help="the trial's folder (runs/<sweep>/trials/<trial id>)")
    imp.add_argument(
        "--answers",
        required=True,
        help="activeda: the queries file with every image's labels filled in; labelstudio: Label Studio's "
        "JSON export; coco: a COCO file with one category per class; png: a folder of <image id>.png "
        "label maps",
    )
    imp.add_argument("--round", type=int, required=True, help="the round the answers are for")
    imp.add_argument(
        "--format",
        default="activeda",
        choices=("activeda", *FORMATS),
        metavar="FORMAT",
        help=f"what --answers is: one of activeda, {', '.join(FORMATS)} (default: activeda)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The store, numpy and the image libraries load only once the arguments are good: --help answers at once.
    from orchestrator.labels.annotation import AnnotationError, import_tool_answers, queries_path, read_queries
    from orchestrator.labels.formats import FormatError, export

    if args.round < 1:
        print(f"error: --round must be >= 1, got {args.round}", file=sys.stderr)
        return 2
    trial_dir = Path(args.trial_dir)
    try:
        if args.command == "export":
            written = export(
                read_queries(queries_path(trial_dir, args.round)), args.format, Path(args.out), args.image_url_prefix
            )
            print(f"wrote {len(written)} file(s) into {args.out} for round {args.round}")
            return 0
        round_index = import_tool_answers(args.format, Path(args.answers), trial_dir, args.round)
    except (AnnotationError, FormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"recorded round {round_index} in {trial_dir / 'labels'}; resume the sweep to train on it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
