"""``python -m orchestrator.synth``: write the bundled synthetic domains to a folder.

The source domain goes into ``OUT/source`` in the GTA5 layout and the target into ``OUT/target``
in the Cityscapes layout, so any GTA5 -> Cityscapes tool (this one included, with
``--set data.source.root=OUT/source --set data.target.root=OUT/target``) can read them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.command_line import HelpFormatter


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
    args = parser.parse_args(argv)
    from trainers.data.synthetic import write_synthetic_domains  # torch: only once the arguments are good

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
    )
    print(f"source (GTA5 layout): {source}\ntarget (Cityscapes layout): {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
