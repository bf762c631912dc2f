"""Loss ablation on the bundled domains, measured in one run (issue 4's table).

One source model, one set of labels (LabOR PPL at the default budget, chosen once with the source
model's selector), then adaptation with the losses switched on one after another:

  source-only -> sparse target CE -> + AdaptSeg adversarial -> + Tzeng domain confusion
  -> + Tzeng soft labels (-> + LabOR selector heads: pseudo labels and MCD)

The selector network's losses train the selector network S, not the segmenter G, so they change which pixels
a *later* round buys, not this round's mIoU; the last row shows that (it equals the row above it).

    python -m benchmarks.ablation [--in-process] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.calibrate_domains import selected_labels, trainer
from benchmarks.common import benchmark_config
from experiment_config import with_overrides
from trainers.data import build_domains, domain_roots
from trainers.job import TrainJob

OFF = {
    "adapt.adversarial_weight": 0.0,
    "adapt.confusion_weight": 0.0,
    "adapt.soft_label_weight": 0.0,
    "adapt.pseudo_label_weight": 0.0,
    "adapt.discrepancy_weight": 0.0,
}
STEPS = [
    ("sparse target CE only", {}),
    ("+ AdaptSeg adversarial", {"adapt.adversarial_weight": None}),
    ("+ Tzeng domain confusion", {"adapt.confusion_weight": None}),
    ("+ Tzeng soft labels", {"adapt.soft_label_weight": None}),
    (
        "+ LabOR selector heads (pseudo labels, MCD)",
        {"adapt.pseudo_label_weight": None, "adapt.discrepancy_weight": None},
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--in-process", action="store_true", help="run the engine here instead of on Ray Train")
    args = parser.parse_args(argv)
    base = benchmark_config(args.overrides)
    if base is None:
        return 2
    defaults = base.flat()
    domain_roots(base.data)
    pool = build_domains(base.data).target_pool
    train = trainer(args.in_process, base, Path(tempfile.mkdtemp(prefix="activeda-ablation-")))

    started = time.perf_counter()
    metrics, source_ckpt = train(TrainJob(mode="source", config=base), "source")
    rows = [("source-only", metrics)]
    labels = selected_labels(source_ckpt, base, "labor_ppl", pool)
    switched_on: dict = {}
    for name, turn_on in STEPS:
        switched_on.update({key: defaults[key] for key in turn_on})
        cfg = with_overrides(base, {**OFF, **switched_on})
        job = TrainJob(mode="adapt", config=cfg, init_checkpoint=source_ckpt, labels=labels, round=1)
        metrics, _ = train(job, f"ablation-{len(rows)}")
        rows.append((name, metrics))
        print(f"{name}: {metrics['target/miou']:.4f}", flush=True)

    print(f"\n| losses ({base.selection.points_per_image} PPL points/image, {base.adapt.steps} steps) | target mIoU |")
    print("|---|---|")
    for name, metrics in rows:
        print(f"| {name} | {metrics['target/miou']:.4f} |")
    print(f"\n({time.perf_counter() - started:.0f} s, {'in-process' if args.in_process else 'Ray Train'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
