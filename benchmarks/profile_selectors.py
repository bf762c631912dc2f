"""Where each selector's time goes, on the device it runs on: a ``torch.profiler`` table per selector.

The GPU check (``scripts/gpu_check.sh``) runs this as its third part, so a run on a lent GPU brings
back, beside each selector's time, what it was spent on: kernels and their counts, host-device copies,
synchronisations, the greedy rounds and label-propagation passes (``greedy rounds`` and
``propagation passes`` rows, ``(graph)`` where a CUDA graph replays them), the phases marked in the selectors
(``select:`` rows). Plain PyTorch: no Ray, MLflow or hypothesis.

For each kind of probability maps (``trained_like``: the scale benchmark's cheap network, heads
disagreeing near class boundaries; ``network_output``: a freshly initialised network's own output,
heads disagreeing almost everywhere, the selectors' worst case) and each selector, as the GPU check
asks it (LabOR's budgets, RIPU's windows: ``benchmarks.scale_scene.selector_settings``): one
untimed call, then ``--repeats`` calls timed (wall clock, device synchronised) and profiled apart.

Writes to ``--out``: ``profile-<maps>-<selector>.txt`` (the tables, by device time and by host
time) and ``profile.json`` (per selector: wall ms, the profiled call's host and device ms, kernel
launches, synchronisations, host-device copies, greedy rounds, propagation passes, graph replays).

    python -m benchmarks.profile_selectors --device cuda --out DIR
    python -m benchmarks.profile_selectors --device cpu --size 256x512 --maps-from noise --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.gpu_check import refuse_absent_packages, size_arg
from pixel_selectors.regions import PROPAGATION_PASSES_PER_CHECK, ROUNDS_PER_CHECK
from trainers.files import atomic_write_json

MAP_KINDS = ("trained_like", "network_output")


def _maps(kind: str, args, device, classes: int):
    """Two heads' (K, H, W) softmax maps of one generated image, on ``device``."""
    import torch

    from benchmarks.scale_scene import CheapSegmenter, GeneratedPool

    height, width = args.size
    image = GeneratedPool(1, height, width, classes, seed=3)[0][0][None].to(device)
    with torch.no_grad():
        if kind == "trained_like":
            heads = CheapSegmenter(classes).to(device).eval()(image)
        elif args.maps_from == "noise":  # an untrained network's look: near-uniform, heads disagreeing
            generator = torch.Generator().manual_seed(5)
            low = torch.randn(2, 1, classes, max(1, height // 8), max(1, width // 8), generator=generator) * 0.3
            heads = [
                torch.nn.functional.interpolate(
                    h.to(device), size=(height, width), mode="bilinear", align_corners=False
                )
                for h in low
            ]
        else:
            from benchmarks.gpu_check import autocast, inference_network

            network = inference_network(args.maps_from, classes, 2, device)
            with autocast(device):
                heads = network(image)
    return tuple(head[0].float().softmax(dim=0) for head in heads)


def _summary(events, name: str) -> dict:
    """Totals of one profile: the selector's own scope (host ms, with everything it called), host and
    device time of all operations, launches, synchronisations, copies, greedy rounds."""

    def count(*names):
        return sum(e.count for e in events if e.key in names)

    def host_count(*names):  # a scope shows twice: on the host and, around its kernels, on the device
        return sum(e.count for e in events if e.key in names and str(e.device_type).endswith("CPU"))

    scope = [e for e in events if e.key == f"select:{name}"]
    device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
    copies = [e for e in events if e.key.startswith("Memcpy")]
    return {
        "select_host_ms": scope[0].cpu_time_total / 1000 if scope else None,
        "host_ms": sum(e.self_cpu_time_total for e in events) / 1000,
        "device_ms": device_us / 1000,
        "kernel_launches": count("cudaLaunchKernel", "cudaLaunchKernelExC"),
        "synchronisations": count("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy"),
        "copies": {e.key: e.count for e in copies},
        # Rounds and passes run in blocks between two checks, counted per block (graph replays too).
        "greedy_rounds": ROUNDS_PER_CHECK * host_count("greedy rounds", "greedy rounds (graph)"),
        "propagation_passes": PROPAGATION_PASSES_PER_CHECK
        * host_count("propagation passes", "propagation passes (graph)"),
        "graph_replays": host_count("greedy rounds (graph)", "propagation passes (graph)"),
    }


def profile_selectors(args, progress=print) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.scale_scene import CITYSCAPES_CLASSES, selector_settings
    from pixel_selectors.apply import select_image
    from pixel_selectors.rules import RULES, SELECTOR_NETWORK

    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.selectors.split(",") if args.selectors else sorted(RULES)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_device = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    figures = {
        "device": str(device),
        "size": list(args.size),
        "classes": CITYSCAPES_CLASSES,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "selectors": {},
    }
    for kind in MAP_KINDS:
        maps = _maps(kind, args, device, CITYSCAPES_CLASSES)
        for name in names:
            settings = selector_settings(name, *args.size)
            probs = list(maps) if RULES[name].reads == SELECTOR_NETWORK else [maps[0]]

            def run(seed):
                return select_image(name, probs, seed=seed, **settings)

            run(0)
            synchronize()
            started = time.perf_counter()
            for repeat in range(args.repeats):
                query = run(1 + repeat)
            synchronize()
            wall_ms = 1000 * (time.perf_counter() - started) / args.repeats
            with profile(activities=activities) as prof:
                run(1)
                synchronize()
            events = prof.key_averages()
            summary = {"wall_ms": wall_ms, "query": len(query), **_summary(events, name)}
            figures["selectors"].setdefault(kind, {})[name] = summary
            tables = [
                f"{kind} {name}: {wall_ms:.2f} ms a call (wall, mean of {args.repeats}); "
                f"profiled call: {json.dumps(summary)}",
                events.table(sort_by=sort_device, row_limit=args.rows, max_name_column_width=60),
            ]
            if device.type == "cuda":
                tables.append(
                    events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60)
                )
            (out / f"profile-{kind}-{name}.txt").write_text("\n".join(tables))
            progress(
                f"profile: {kind}: {name}: {wall_ms:.2f} ms, {summary['kernel_launches']} launches, "
                f"{summary['synchronisations']} syncs, {summary['greedy_rounds']} greedy rounds, "
                f"{summary['propagation_passes']} propagation passes, {summary['graph_replays']} graph replays"
            )
            atomic_write_json(out / "profile.json", figures, indent=1)
    return figures


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_selectors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder for profile.json and the per-selector tables")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--size", type=size_arg, default=(1024, 2048), help="image size (1024x2048)")
    parser.add_argument("--selectors", default="", help="comma-separated selectors (default: all)")
    parser.add_argument(
        "--maps-from",
        default="deeplabv2_resnet101",
        help="the network whose untrained output gives the network_output maps "
        "(default deeplabv2_resnet101), or 'noise' (upsampled noise, no network)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per selector (3)")
    parser.add_argument("--rows", type=int, default=15, help="rows per table (15)")
    args = parser.parse_args(argv)
    from pixel_selectors.rules import RULES
    from trainers.models import MODELS

    unknown = [s for s in filter(None, args.selectors.split(",")) if s not in RULES]
    if unknown:
        parser.error(f"unknown rule '{unknown[0]}'; choose from: {', '.join(sorted(RULES))}")
    if args.maps_from != "noise" and args.maps_from not in MODELS:
        parser.error(f"unknown --maps-from '{args.maps_from}'; choose 'noise' or one of: {', '.join(sorted(MODELS))}")
    if args.repeats < 1 or args.rows < 1:
        parser.error("--repeats and --rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    refuse_absent_packages()
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    profile_selectors(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
