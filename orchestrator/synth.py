"""``python -m orchestrator.synth``: write the bundled synthetic domains to a folder.

With ``--layout gta5-cityscapes`` (the default) the source domain goes into ``OUT/source`` in the
GTA5 layout and the target into ``OUT/target`` in the Cityscapes layout, labels as Cityscapes ids,
so any GTA5 -> Cityscapes tool (this one included, with ``--set data.source.root=OUT/source --set
data.target.root=OUT/target``) can read them. With ``--layout folder`` both are written in the
folder layout (``images/<split>/``, ``labels/<split>/`` of train ids, ``dataset.yaml`` with the
classes and their Cityscapes colours), the format ``python -m orchestrator.data check`` checks and
``data.source.format: folder`` / ``data.target.format: folder`` read.

``--version`` picks the generator version (``data.synthetic.version``): 3, the default, draws 13
textured, long-tailed classes (class set ``synthetic_v2``); 2 the same scenes with walls that share
a facade's look; 1 the earlier 9 flat-coloured classes (class set ``synthetic``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiment_config.choices import SYNTHETIC_CLASS_SET_OF_VERSION
from experiment_config.schema import SyntheticConfig
from orchestrator.command_line import HelpFormatter

LAYOUTS = ("gta5-cityscapes", "folder")
VERSIONS = tuple(SYNTHETIC_CLASS_SET_OF_VERSION)  # trainers.data.synthetic.GENERATOR_VERSIONS, without torch
DEFAULT_VERSION = SyntheticConfig.version


def write_folder_layout(
    out: Path,
    height: int,
    width: int,
    images: int,
    seed: int,
    difficulty: float,
    progress=print,
    version: int = DEFAULT_VERSION,
):
    """The synthetic domains of generator ``version`` in the folder layout: ``out/source`` (split
    train) and ``out/target`` (splits train and val); labels are train ids of that version's classes."""
    import numpy as np

    from trainers.data.dataset_yaml import bundled_dataset
    from trainers.data.folder import write_folder_dataset
    from trainers.data.synthetic import CLASSES_OF_VERSION, generate_sample

    # The generator's classes are Cityscapes classes: their colours are the bundled Cityscapes YAML's.
    class_set = bundled_dataset("cityscapes").class_set.subset(
        SYNTHETIC_CLASS_SET_OF_VERSION[version], CLASSES_OF_VERSION[version]
    )
    plan = {"source": [("train", images)], "target": [("train", images), ("val", images // 2)]}
    total = sum(count for jobs in plan.values() for _, count in jobs)
    written = [0]

    def samples(domain):
        for split, count in plan[domain]:
            for index in range(count):
                image, label = generate_sample(seed, domain, split, index, height, width, difficulty, version)
                yield split, f"{index:06d}", (image * 255).round().astype(np.uint8), label

    def tick(_):
        written[0] += 1
        if written[0] % 100 == 0 or written[0] == total:
            progress(f"generated {written[0]}/{total} synthetic images")

    roots = []
    for domain in plan:
        roots.append(
            write_folder_dataset(out / domain, class_set, samples(domain), name=f"synthetic-{domain}", progress=tick)
        )
    return tuple(roots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="activeda synth", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--images",
        type=int,
        default=96,
        metavar="N",
        help="N source images, N target train (pool) images and N/2 target val images (default 96)",
    )
    parser.add_argument("--height", type=int, default=64, help="image height (default 64)")
    parser.add_argument("--width", type=int, default=128, help="image width (default 128)")
    parser.add_argument(
        "--difficulty", type=float, default=1.0, help="target style strength, 0 (source-like) to 2 (harsh); default 1"
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=LAYOUTS[0],
        help="gta5-cityscapes: source like GTA5, target like Cityscapes (Cityscapes label ids); folder: "
        "both in the folder layout with a dataset.yaml (default: gta5-cityscapes)",
    )
    parser.add_argument(
        "--version",
        type=int,
        choices=VERSIONS,
        default=DEFAULT_VERSION,
        help="generator version: 4 (13 textured, long-tailed classes), 3 (4's scenes with traffic lights in a "
        "pole's or a sign's colours), 2 (3's with walls that share a facade's look) or 1 (the earlier 9 "
        f"flat-coloured classes); default {DEFAULT_VERSION}",
    )
    args = parser.parse_args(argv)
    problems = [
        (args.images < 2, "--images must be >= 2"),
        (args.seed < 0, "--seed must be >= 0"),
        (min(args.height, args.width) < 16, "--height and --width must be >= 16"),
        (not 0 <= args.difficulty <= 2, "--difficulty must be between 0 and 2"),
    ]
    out = Path(args.out)
    problems.append(
        (out.exists() and (not out.is_dir() or any(out.iterdir())), f"--out '{out}' exists and is not an empty folder")
    )
    for bad, message in problems:
        if bad:
            print(f"error: {message}", file=sys.stderr)
            return 2
    if args.layout == "folder":
        source, target = write_folder_layout(
            out, args.height, args.width, args.images, args.seed, args.difficulty, version=args.version
        )
        print(
            f"source (folder layout): {source}\ntarget (folder layout): {target}\n"
            f"use them with: --set data.source.format=folder --set data.source.root={source} "
            f"--set data.target.format=folder --set data.target.root={target} --set data.class_set=dataset"
        )
        return 0
    from trainers.data.synthetic import write_synthetic_domains  # torch: only once the arguments are good

    source, target = write_synthetic_domains(
        out,
        args.height,
        args.width,
        source_images=args.images,
        target_train_images=args.images,
        target_val_images=args.images // 2,
        seed=args.seed,
        difficulty=args.difficulty,
        progress=print,
        version=args.version,
    )
    print(f"source (GTA5 layout): {source}\ntarget (Cityscapes layout): {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
