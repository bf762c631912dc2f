"""The papers' protocol at full resolution: is the GPU fed, what does native-resolution evaluation cost,
and what does one round of ``configs/gta5_to_cityscapes.yaml`` take end to end.

On generated street scenes written at the label size (default 1024x2048, the Cityscapes size) and
used at the input size (default 512x1024, AdaptSegNet's), in the GTA5 and Cityscapes layouts:

1. the source loader's images/s (read, resize to GTA5's 720x1280, random crop, flip) with 0, 1 and
   2 DataLoader workers, against the images/s one adaptation step consumes from each loader;
2. target evaluation at the labels' native size (prediction upsampled) against evaluation on
   labels resized to the input: time per image and peak memory;
3. one adaptation round of ``configs/gta5_to_cityscapes.yaml`` through ``python -m orchestrator.run``
   (Ray actors rank, Ray Train adapts), cut to a few steps and a small backbone, with its wall time.

    python -m benchmarks.protocol                 # the figures of docs/protocol.md
    python -m benchmarks.protocol --quick         # a cut-down run (small scenes, few steps): it works

``gpu_protocol_check`` is the same protocol in-process on one GPU (plain PyTorch, no Ray, no MLflow,
no files): DeepLab-V2 adaptation steps with bf16 autocast and channels_last, and native-resolution
evaluation; ``scripts/gpu_check.sh`` calls it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiment_config import ExperimentConfig, with_overrides

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run: labels (and files) at ``label_*``, training input at ``input_*``."""

    label_height: int
    label_width: int
    input_height: int
    input_width: int
    source_height: int  # GTA5-like source resize before the crop (AdaptSegNet and RIPU: 720x1280)
    source_width: int
    images: int
    batches: int
    steps: int
    eval_images: int


FULL = Scale(1024, 2048, 512, 1024, 720, 1280, images=12, batches=8, steps=3, eval_images=6)
QUICK = Scale(128, 256, 64, 128, 90, 160, images=6, batches=4, steps=2, eval_images=3)


def protocol_config(scale: Scale, data_root: Path | None, model: str, overrides: list[str] = ()) -> ExperimentConfig:
    """The config of the measurements: the papers' sizes and recipe on the generated scenes."""
    from experiment_config import load_config

    pairs = {
        "data.class_set": "cityscapes19",
        "data.height": scale.input_height,
        "data.width": scale.input_width,
        "data.source.height": scale.source_height,
        "data.source.width": scale.source_width,
        "data.augment.hflip": True,
        "model.name": model,
        "source.batch_size": 1,
        "adapt.batch_size": 1,
        "adapt.optimizer": "sgd",
        "adapt.lr": 2.5e-4,
        "adapt.weight_decay": 5e-4,
        "adapt.lr_power": 0.9,
        "adapt.head_lr_factor": 10.0,
        "adapt.steps": scale.steps,
    }
    if data_root is not None:
        pairs.update({"data.source.root": str(data_root / "source"), "data.target.root": str(data_root / "target")})
    if model in ("deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"):
        pairs.update({"source.batch_size": 2, "adapt.batch_size": 2})
    from experiment_config import parse_set_args

    return load_config(None, {**pairs, **parse_set_args(list(overrides))})


def generate_scenes(scale: Scale, out: Path) -> Path:
    """Street scenes at the label size in the GTA5 and Cityscapes layouts (cached in ``out``)."""
    from trainers.data.synthetic import ensure_synthetic_domains

    synthetic = {
        "source_images": scale.images,
        "target_train_images": scale.images,
        "target_val_images": scale.eval_images,
        "seed": 0,
        "difficulty": 1.0,
    }
    source, _ = ensure_synthetic_domains(
        out, scale.label_height, scale.label_width, synthetic, progress=lambda msg: print(f"  {msg}", flush=True)
    )
    return source.parent


# --- 1: the loader against the train step -------------------------------------------------------


def loader_images_per_s(cfg: ExperimentConfig, workers: int, batches: int) -> float:
    """Source images/s of the training loader with ``workers`` processes (the first batch, which
    includes the workers' start, is not timed)."""
    from trainers.data import build_domains
    from trainers.loader import SOURCE_STREAM, training_loader

    domains = build_domains(cfg.data)
    batch = cfg.adapt.batch_size
    loader = training_loader(
        domains.source,
        batch,
        0,
        batches + 1,
        cfg.seed,
        SOURCE_STREAM,
        workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
    iterator = iter(loader)
    next(iterator)
    started = time.perf_counter()
    for _ in iterator:
        pass
    return batches * batch / (time.perf_counter() - started)


def adaptation_step_timing(
    cfg: ExperimentConfig, steps: int, device: torch.device, train_selector_network: bool = True
) -> dict[str, float]:
    """Seconds per adaptation step (G, Dis, theta_D and, if asked, LabOR's S) on pre-made batches at the
    input size, as ``trainers.engine.run_job`` runs it (bf16 autocast and channels_last on CUDA)."""
    from trainers.data import CLASS_SETS
    from trainers.engine import build_adaptation_models, build_optimizers, loss_weights
    from trainers.step import adaptation_step

    num_classes = len(CLASS_SETS[cfg.data.class_set])
    weights = loss_weights(cfg, "adapt")
    models = build_adaptation_models(cfg, num_classes, weights)
    use_gpu = device.type == "cuda"
    for name in ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels"):
        module = getattr(models, name)
        if module is not None:
            module.to(device)
            if use_gpu and name != "soft_labels":
                module.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(models, cfg, "adapt")
    batch, height, width = cfg.adapt.batch_size, cfg.data.height, cfg.data.width
    generator = torch.Generator().manual_seed(0)
    source = (
        torch.randn(batch, 3, height, width, generator=generator).to(device),
        torch.randint(0, num_classes, (batch, height, width), generator=generator).to(device),
    )
    sparse = torch.full((batch, height, width), 255, dtype=torch.int64)
    sparse[:, ::37, ::41] = torch.randint(0, num_classes, sparse[:, ::37, ::41].shape, generator=generator)
    target = (torch.randn(batch, 3, height, width, generator=generator).to(device), sparse.to(device))
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_gpu)
    if use_gpu:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> dict:
        with autocast:
            return adaptation_step(
                models, optimizers, source, target, weights, train_selector_network=train_selector_network
            )

    losses = step()  # warm-up (cuDNN autotuning, allocator)
    if use_gpu:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        losses = step()
    if use_gpu:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    return {
        "step_s": seconds,
        "images_per_s": batch / seconds,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if use_gpu else float("nan"),
        "losses_finite": all(value == value and abs(value) != float("inf") for value in losses.values()),
    }


# --- 2: native-resolution evaluation against evaluation at the input size ------------------------


def evaluation_cost(cfg: ExperimentConfig, resolution: str, device: torch.device) -> dict[str, float]:
    """Seconds per validation image and peak memory of evaluating G with ``data.eval_resolution``."""
    from trainers.data import build_domains
    from trainers.engine import build_adaptation_models
    from trainers.metrics import mean_iou, predict_confusion

    cfg = with_overrides(cfg, {"data.eval_resolution": resolution})
    domains = build_domains(cfg.data)
    model = build_adaptation_models(cfg, len(domains.classes)).segmenter.to(device)
    use_gpu = device.type == "cuda"
    if use_gpu:
        model.to(memory_format=torch.channels_last)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ids = list(range(len(domains.target_val)))
    started = time.perf_counter()
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_gpu):
        confusion = predict_confusion(
            model,
            domains.target_val,
            ids,
            len(domains.classes),
            batch_size=1,
            device=device,
            workers=cfg.train.loader_workers,
        )
    if use_gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if use_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "s_per_image": seconds / len(ids),
        "peak_gib": peak,
        "miou": mean_iou(confusion),
        "pixels_scored": int(confusion.sum()),
    }


def _evaluation_child(cfg: ExperimentConfig, resolution: str, queue) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    queue.put(evaluation_cost(cfg, resolution, torch.device("cpu")))


def evaluation_cost_isolated(cfg: ExperimentConfig, resolution: str) -> dict[str, float]:
    """``evaluation_cost`` on the CPU in a fresh process, so its peak resident memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_evaluation_child, args=(cfg, resolution, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


# --- 3: one round of the paper config end to end ------------------------------------------------


def paper_round(data_root: Path, workdir: Path, model: str, steps: int, scale: Scale) -> dict[str, float]:
    """``python -m orchestrator.run --config configs/gta5_to_cityscapes.yaml`` cut to ``steps`` steps, a
    small backbone and this machine's CPUs; returns its wall time and target mIoU."""
    sets = {
        "data.source.root": data_root / "source",
        "data.target.root": data_root / "target",
        "data.height": scale.input_height,
        "data.width": scale.input_width,
        "data.source.height": scale.source_height,
        "data.source.width": scale.source_width,
        "model.name": model,
        "source.steps": steps,
        "adapt.steps": steps,
        "adapt.total_steps": 0,  # the config's 30,000 would replace adapt.steps
        "warmup.steps": steps,
        "selection.rounds": 1,
        # no network here: the small backbone starts from random weights, which the config must allow
        "model.pretrained": "",
        "model.allow_random_init": True,
        "train.use_gpu": torch.cuda.is_available(),
        "train.num_workers": 1,
        "train.cpus_per_worker": 1,
        "train.loader_workers": 1,
        "ranking.num_actors": 1,
        "ranking.cpus_per_actor": 1,
        "ranking.gpus_per_actor": 1 if torch.cuda.is_available() else 0,
        "output_dir": workdir / "runs",
        "sweep.name": "protocol-benchmark",
        "sweep.oracle_reference": False,
    }
    if model in ("deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"):
        sets.update({"source.batch_size": 2, "adapt.batch_size": 2})
    argv = [
        sys.executable,
        "-m",
        "orchestrator.run",
        "--config",
        str(ROOT / "configs" / "gta5_to_cityscapes.yaml"),
        "--tracking-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
    ]
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"the paper-config round failed (exit {done.returncode}): "
            f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    mious = [
        float(line.split("target mIoU")[1].split()[0].rstrip(","))
        for line in done.stdout.splitlines()
        if "round 1: target mIoU" in line
    ]
    return {"wall_s": wall, "miou": mious[-1] if mious else float("nan")}


# --- the GPU check -------------------------------------------------------------------------------


def gpu_protocol_check(
    height: int = 512,
    width: int = 1024,
    label_scale: int = 2,
    steps: int = 5,
    batch_size: int = 1,
    eval_images: int = 4,
    device: str = "cuda",
) -> dict[str, float]:
    """DeepLab-V2 ResNet-101 at ``height x width`` on one device, in-process (plain PyTorch: no Ray, no
    MLflow, no files, random weights):

    - ``steps`` adaptation steps of G, Dis, theta_D and LabOR's S at ``batch_size`` source + target
      images, SGD with the references' recipe, bf16 autocast and channels_last as the Train workers run;
    - evaluation of ``eval_images`` images with labels ``label_scale`` x the input size (the prediction
      upsampled: native resolution) and with labels at the input size.

    Returns step seconds, images/s, peak memory (GiB) and whether every loss stayed finite, and the
    evaluation's seconds per image at both resolutions with the confusion matrix's pixel counts.
    """
    from trainers.data import CLASS_SETS
    from trainers.engine import build_adaptation_models
    from trainers.metrics import predict_confusion

    dev = torch.device(device)
    cfg = protocol_config(
        QUICK,
        None,
        "deeplabv2_resnet101",
        [
            f"data.height={height}",
            f"data.width={width}",
            f"adapt.batch_size={batch_size}",
            f"source.batch_size={batch_size}",
        ],
    )
    out = {f"train_{k}": v for k, v in adaptation_step_timing(cfg, steps, dev).items()}
    num_classes = len(CLASS_SETS[cfg.data.class_set])
    model = build_adaptation_models(cfg, num_classes).segmenter.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    for name, scale in (("native", label_scale), ("input", 1)):
        labels = torch.randint(0, num_classes, (eval_images, height * scale, width * scale), generator=generator)
        dataset = [(torch.randn(3, height, width, generator=generator), labels[i]) for i in range(eval_images)]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        started = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            confusion = predict_confusion(
                model, dataset, list(range(eval_images)), num_classes, batch_size=1, device=dev
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        out[f"eval_{name}_s_per_image"] = (time.perf_counter() - started) / eval_images
        out[f"eval_{name}_pixels"] = int(confusion.sum())
        out[f"eval_{name}_peak_gib"] = (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        )
    return out


# --- the command ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.protocol", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small scenes (128x256 labels, 64x128 input), few batches and steps: shows that it works, in minutes",
    )
    parser.add_argument(
        "--model",
        help="model of the train-step and evaluation figures (default deeplabv2_resnet101; with --quick small_segnet)",
    )
    parser.add_argument(
        "--round-model",
        default="deeplabv3_mobilenet_v3_large",
        help="model of the end-to-end paper-config round (default deeplabv3_mobilenet_v3_large)",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help="where the generated scenes are cached (default: a temporary folder)"
    )
    parser.add_argument("--skip-round", action="store_true", help="leave out the end-to-end round (it starts Ray)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the loader, step and evaluation figures",
    )
    args = parser.parse_args(argv)
    from experiment_config import ConfigError

    scale = QUICK if args.quick else FULL
    args.model = args.model or ("small_segnet" if args.quick else "deeplabv2_resnet101")
    try:
        protocol_config(scale, None, args.model, args.overrides)
        protocol_config(scale, None, args.round_model)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="activeda-protocol-") as scratch:
        return _run(args, scale, Path(args.data_dir) if args.data_dir else Path(scratch) / "data", Path(scratch))


def _run(args, scale: Scale, data_dir: Path, scratch: Path) -> int:
    from benchmarks.common import machine_line

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine_line()}")
    print(
        f"scenes: labels {scale.label_height}x{scale.label_width}, input {scale.input_height}x"
        f"{scale.input_width}, source resized to {scale.source_height}x{scale.source_width} then cropped"
    )
    print("generating scenes ...", flush=True)
    data_root = generate_scenes(scale, data_dir)
    cfg = protocol_config(scale, data_root, args.model, args.overrides)

    print("timing the loader and the train step ...", flush=True)
    step = adaptation_step_timing(cfg, scale.steps, device)
    need = step["images_per_s"]
    print(f"\n| source loader | images/s | / images/s one {args.model} adaptation step consumes ({need:.2f}) |")
    print("|---|---|---|")
    for workers in (0, 1, 2):
        rate = loader_images_per_s(cfg, workers, scale.batches)
        print(f"| {workers} worker{'s' if workers != 1 else ''} | {rate:.2f} | {rate / need:.1f}x |")
    print(
        f"train step on {device}: {step['step_s']:.2f} s at batch {cfg.adapt.batch_size} "
        f"(G, Dis, theta_D and LabOR's S), peak {step['peak_gib']:.2f} GiB"
    )

    print("\ntiming evaluation ...", flush=True)
    print("\n| evaluation | s per image | peak memory (GiB) | pixels scored | mIoU |")
    print("|---|---|---|---|---|")
    for resolution, label in (
        ("input", f"labels resized to {scale.input_height}x{scale.input_width} (before)"),
        ("native", f"native {scale.label_height}x{scale.label_width}, prediction upsampled"),
    ):
        cost = (
            evaluation_cost(cfg, resolution, device)
            if device.type == "cuda"
            else evaluation_cost_isolated(cfg, resolution)
        )
        print(
            f"| {label} | {cost['s_per_image']:.3f} | {cost['peak_gib']:.2f} | {cost['pixels_scored']} | "
            f"{cost['miou']:.4f} |"
        )
    if device.type != "cuda":
        print("(CPU: peak memory is the evaluating process's peak resident set, model included)")

    if not args.skip_round:
        print("\nrunning one round of configs/gta5_to_cityscapes.yaml ...", flush=True)
        round_figures = paper_round(data_root, scratch, args.round_model, scale.steps, scale)
        print(
            f"\none round of configs/gta5_to_cityscapes.yaml ({args.round_model}, {scale.steps} source + "
            f"{scale.steps} adaptation steps, {scale.images} pool images, Ray start-up included): "
            f"{round_figures['wall_s']:.0f} s wall, target mIoU {round_figures['miou']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
