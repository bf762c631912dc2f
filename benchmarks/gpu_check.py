"""The GPU check: the plain-PyTorch layers on a real GPU, in a few minutes, with figures written as they come.

``scripts/gpu_check.sh OUT`` runs the tests marked ``gpu`` and then this module. It runs on a machine
that has torch, torchvision, numpy, scipy, pandas, pyarrow, pyyaml, matplotlib and pytest but
neither Ray, MLflow nor hypothesis, so it refuses to import those (a missing one would otherwise
surface halfway through). Parts, each timed on its own, each written to ``OUT/gpu-check.json`` and
``OUT/gpu-check.txt`` as soon as it finishes (a part that fails is recorded with its error and the
next one runs):

1. ``ranking``: the ranking network's forward pass (+ softmax) at 1024 x 2048 with 19 classes in
   bf16 and channels_last, then every selector on the GPU, each against the forward pass (goal:
   at most 0.25x), on the network's own maps and on trained-looking maps; ranking images/s through
   the actors' code (``orchestrator.round.ranking.rank_images``: forward + selection, on the GPU);
2. ``train``: adaptation steps of the recipe at its size, 640 x 1280 (segmenter, AdaptSeg discriminator,
   Tzeng's domain classifier and soft labels, LabOR's selector network S with its MCD updates) with
   bf16 autocast and channels_last, on batches already on the GPU: training images/s; then steps that
   leave S out, and source-only steps, each timed;
3. ``evaluate``: mIoU at the labels' native 1024 x 2048 from predictions at 640 x 1280, upsampled
   (``evaluate_native``).

Peak GPU memory is reported per part. ``--device cpu`` with a small model and sizes runs the same
code on a CPU (how the tests check this module).

    python -m benchmarks.gpu_check --out OUT [--model deeplabv2_resnet101]
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import math
import platform
import sys
import time
import traceback
from pathlib import Path

from trainers.files import atomic_write_json

# Not on the GPU machine: importing one must fail here as it would fail there.
ABSENT_ON_GPU_MACHINE = ("ray", "mlflow", "hypothesis")
FORWARD_MODEL = "deeplabv2_resnet101"
FALLBACK_MODEL = "deeplabv3_resnet101"


class RefuseAbsentPackages(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook that makes ``ray``, ``mlflow`` and ``hypothesis`` unimportable in this process.

    ``import ray`` fails with ModuleNotFoundError, as on the GPU machine. Probes that only ask
    whether a package exists (``importlib.util.find_spec``: torch's compiler asks about hypothesis)
    get a spec without an origin, which such probes skip.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ABSENT_ON_GPU_MACHINE:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(
            f"No module named '{spec.name}' (the GPU machine has none: the GPU check must not need it)", name=spec.name
        )

    def exec_module(self, module):  # pragma: no cover - create_module never returns
        raise ModuleNotFoundError(module.__name__)


def refuse_absent_packages() -> None:
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ABSENT_ON_GPU_MACHINE)
    if loaded:
        raise RuntimeError(f"already imported before the GPU check started: {', '.join(loaded)}")
    if not any(isinstance(finder, RefuseAbsentPackages) for finder in sys.meta_path):
        sys.meta_path.insert(0, RefuseAbsentPackages())


def size_arg(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 512x1024, got '{text}'") from None
    if height < 16 or width < 16:
        raise argparse.ArgumentTypeError(f"sizes must be at least 16x16, got '{text}'")
    return height, width


class Recorder:
    """Figures by part, rewritten to JSON after every part, and a text log appended as it goes."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.text_path = out / "gpu-check.json", out / "gpu-check.txt"
        self.figures: dict = {}
        self.text_path.write_text("")
        self.started = time.perf_counter()

    def line(self, text: str) -> None:
        stamped = f"[{time.perf_counter() - self.started:6.1f} s] {text}"
        print(stamped, flush=True)
        with self.text_path.open("a") as handle:
            handle.write(stamped + "\n")

    def part(self, name: str, figures: dict) -> None:
        self.figures[name] = figures
        atomic_write_json(self.json_path, self.figures, indent=1, default=str)


def forward_model_name(requested: str, progress) -> str:
    from trainers.models import MODELS

    if requested:
        if requested not in MODELS:
            raise ValueError(f"unknown model '{requested}'; choose one of: {', '.join(sorted(MODELS))}")
        return requested
    if FORWARD_MODEL in MODELS:
        return FORWARD_MODEL
    progress(f"NOTE: {FORWARD_MODEL} is not in this build's models; the figures are for {FALLBACK_MODEL}")
    return FALLBACK_MODEL


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def autocast(device):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def inference_network(model_name: str, classes: int, heads: int, device):
    """A freshly initialised network in eval mode on ``device`` (channels_last on a GPU, as the actors run it)."""
    import torch

    from trainers.models import build_model

    network = build_model(model_name, classes, 16, heads).to(device).eval()
    return network.to(memory_format=torch.channels_last) if device.type == "cuda" else network


def environment(device, progress) -> dict:
    import torch

    figures = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    progress("environment: " + ", ".join(f"{k} {v}" for k, v in figures.items() if v is not None))
    return figures


def check_ranking(args, device, model_name: str, progress) -> dict:
    """Forward pass vs each selector at the ranking size, on the GPU; ranking images/s."""
    import torch

    from benchmarks.scale_scene import CITYSCAPES_CLASSES, CheapSegmenter, GeneratedPool, time_selectors
    from orchestrator.round.ranking import rank_images
    from pixel_selectors.rules import RULES

    height, width = args.rank_size
    classes = CITYSCAPES_CLASSES
    pool = GeneratedPool(args.rank_images, height, width, classes, seed=3)
    images = torch.stack([pool[i][0] for i in range(len(pool))]).to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    network = inference_network(model_name, classes, 2, device)
    reset_peak(device)

    def forward(batch):
        with torch.no_grad(), autocast(device):
            return [[head[n].float().softmax(dim=0) for head in network(batch)] for n in range(len(batch))]

    forward(images[:1])  # warm-up: kernels, cudnn's choices
    synchronize(device)
    started = time.perf_counter()
    for n in range(len(images)):
        own_maps = forward(images[n : n + 1])
    synchronize(device)
    forward_s = (time.perf_counter() - started) / len(images)
    progress(
        f"ranking: {model_name} forward + softmax (2 heads) at {height}x{width}: {1000 * forward_s:.1f} ms per image"
    )
    own = [tuple(maps) for maps in (forward(images[n : n + 1])[0] for n in range(min(2, len(images))))]
    cheap = CheapSegmenter(classes).to(device).eval()
    with torch.no_grad():
        trained_like = [
            tuple(head[0].float().softmax(dim=0) for head in cheap(images[n : n + 1]))
            for n in range(min(2, len(images)))
        ]
    del own_maps
    names = sorted(RULES)
    figures = {
        "size": [height, width],
        "classes": classes,
        "model": model_name,
        "forward_ms": 1000 * forward_s,
        "selectors": {},
    }
    for label, maps in (("trained_like", trained_like), ("network_output", own)):
        # Five calls per map (ten per selector): one or two calls of a few milliseconds are noisy.
        for timing in time_selectors(
            maps, names, repeats=SELECTOR_REPEATS, progress=lambda line: progress(f"ranking: {label}: {line}")
        ):
            entry = figures["selectors"].setdefault(timing.name, {})
            entry[f"{label}_ms"] = 1000 * timing.seconds_per_image
            entry[f"{label}_ratio"] = timing.seconds_per_image / forward_s
    # The actors' code path: forward + selection on the device, queries to the host.
    for selector, settings in (
        ("labor_ppl", {"num_points": 40}),
        ("labor_spl", {"num_points": 0, "budget_pixels": int(0.022 * height * width)}),
    ):
        with torch.no_grad(), autocast(device):
            rank_images(network, images[:1], [0], {}, selector, seeds=[0], **settings)
            synchronize(device)
            started = time.perf_counter()
            for n in range(len(images)):
                rank_images(network, images[n : n + 1], [n], {}, selector, seeds=[n], **settings)
            synchronize(device)
        rate = len(images) / (time.perf_counter() - started)
        figures[f"ranking_images_per_s_{selector}"] = rate
        progress(f"ranking: forward + {selector} through rank_images: {rate:.2f} images/s")
    figures["peak_gpu_gib"] = peak_gib(device)
    # The goal is judged on trained-looking maps; untrained weights (heads disagreeing almost
    # everywhere, near-uniform softmax) are the selectors' worst case, reported beside it.
    for label in ("trained_like", "network_output"):
        name, entry = max(figures["selectors"].items(), key=lambda item: item[1][f"{label}_ratio"])
        worst = entry[f"{label}_ratio"]
        figures[f"worst_{label}_ratio"] = worst
        verdict = "met" if worst <= 0.25 else "MISSED"
        progress(
            f"ranking: {label}: slowest selector {name} = {worst:.3f} x the forward pass"
            + (f" (goal <= 0.25: {verdict})" if label == "trained_like" else " (untrained weights: worst case)")
        )
    return figures


# The papers' recipe (RIPU's schedule, AdaptSegNet's adversarial weights): DeepLab-V2, SGD with momentum
# 0.9 and weight decay 5e-4, the classifier at 10x, polynomial decay, 2 + 2 images a step, 640 x 1280.
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "gta5_to_cityscapes.yaml"
# Every adaptation loss on, so a step costs what the full method costs (the recipe's LabOR rows set
# Tzeng's off). The GPU machine has no network and its working tree no room for ImageNet weights: the
# networks start from random weights, which the recipe's model.pretrained would otherwise refuse.
ALL_LOSSES = {
    "adapt.adversarial_weight": 0.001,
    "adapt.confusion_weight": 0.1,
    "adapt.soft_label_weight": 0.1,
    "adapt.pseudo_label_weight": 1.0,
    "adapt.discrepancy_weight": 1.0,
    "adapt.selector_backbone_step": True,  # MCD's step C, off in LabOR's reading: on here, every update
    "model.pretrained": "",
    "model.allow_random_init": True,
}


SELECTOR_REPEATS = 5


def recipe_size() -> tuple[int, int]:
    """The recipe's training input size (data.height x data.width): what the paper configs train at."""
    from experiment_config import load_config

    cfg = load_config(RECIPE)
    return cfg.data.height, cfg.data.width


def check_training(args, device, model_name: str, progress) -> dict:
    """Adaptation steps of the papers' recipe (``configs/gta5_to_cityscapes.yaml``: SGD with momentum,
    weight decay and polynomial decay at the recipe's batch size) with every loss on, bf16 autocast
    and channels_last, batches already on the device; the losses of the last step and whether they
    stayed finite and within ``SANE_LOSS`` (a freshly initialised network starts near log K).

    Three step kinds are timed, the ones a plan prices (``orchestrator.sweep.plan.MEASURED``): an
    adaptation step that trains S too (the warm-up, rounds before the last), one that leaves S out
    (the last round, the oracle reference) and a source-only step."""
    import torch

    from experiment_config import load_config
    from trainers.engine import (
        apply_lr_schedule,
        base_learning_rates,
        build_adaptation_models,
        build_optimizers,
        loss_weights,
        lr_schedule_span,
        poly_lr_factor,
    )
    from trainers.step import adaptation_step

    height, width = args.train_size
    classes = 19
    overrides = {"model.name": model_name, "data.height": height, "data.width": width, **ALL_LOSSES}
    if args.batch_size:
        overrides["adapt.batch_size"] = args.batch_size
    cfg = load_config(RECIPE, overrides)
    weights = loss_weights(cfg, "adapt")
    models = build_adaptation_models(cfg, classes, weights)
    for name in ("segmenter", "selector", "discriminator", "domain_classifier", "soft_labels"):
        module = getattr(models, name)
        if module is not None:
            module.to(device)
            if device.type == "cuda" and name != "soft_labels":
                module.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(models, cfg, "adapt")
    base_lrs = base_learning_rates(optimizers)
    first, planned = lr_schedule_span(cfg, "adapt")
    generator = torch.Generator().manual_seed(0)
    batch = cfg.adapt.batch_size

    def make_batch(labeled_share: float):
        images = torch.randn(batch, 3, height, width, generator=generator).to(device)
        labels = torch.randint(0, classes, (batch, height, width), generator=generator)
        labels[torch.rand(batch, height, width, generator=generator) > labeled_share] = 255
        return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images, labels.to(
            device
        )

    source, target = make_batch(1.0), make_batch(0.022)
    reset_peak(device)
    history: list[dict] = []

    def steps(count: int, with_selector: bool = True, source_only: bool = False) -> None:
        with autocast(device):
            for _ in range(count):
                step = first + len(history)
                apply_lr_schedule(optimizers, base_lrs, poly_lr_factor(step, first, planned, cfg.adapt.lr_power))
                if source_only:  # a source job's step: no target batch, the source stage's losses
                    losses = adaptation_step(models, optimizers, source, None, source_weights)
                else:
                    losses = adaptation_step(
                        models, optimizers, source, target, weights, train_selector_network=with_selector
                    )
                history.append(losses)

    def timed(count: int, **kind) -> float:
        steps(min(count, 2), **kind)  # untimed: a kind's first steps build its kernels
        synchronize(device)
        started = time.perf_counter()
        steps(count, **kind)
        synchronize(device)
        return (time.perf_counter() - started) / count

    source_weights = loss_weights(cfg, "source")
    steps(args.warmup_steps)
    synchronize(device)
    started = time.perf_counter()
    steps(args.train_steps)
    synchronize(device)
    seconds = time.perf_counter() - started
    rate = args.train_steps * batch / seconds
    losses = history[-1]
    without_selector = timed(args.train_steps, with_selector=False)
    source_step = timed(args.train_steps, source_only=True)
    finite = all(math.isfinite(value) for step in history for value in step.values())
    sane = finite and all(abs(value) <= SANE_LOSS for step in history for value in step.values())
    progress(
        f"train: {args.train_steps} adaptation steps of {batch}+{batch} images at {height}x{width} "
        f"(recipe {RECIPE.name}: {cfg.adapt.optimizer} lr {cfg.adapt.lr:g}, S with num_k {cfg.adapt.num_k}): "
        f"{rate:.2f} target images/s ({seconds / args.train_steps:.3f} s a step), losses finite: {finite}, "
        f"all within {SANE_LOSS:g}: {sane}"
    )
    progress(
        f"train: {without_selector:.3f} s a step without S (the last round, the oracle reference), "
        f"{source_step:.3f} s a source-only step of {batch} images"
    )
    progress("train: last step's losses: " + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
    return {
        "size": [height, width],
        "model": model_name,
        "recipe": RECIPE.name,
        "optimizer": cfg.adapt.optimizer,
        "lr": cfg.adapt.lr,
        "batch_size": batch,
        "num_k": cfg.adapt.num_k,
        "steps": args.train_steps,
        "seconds_per_step": seconds / args.train_steps,
        "seconds_per_step_without_s": without_selector,
        "seconds_per_source_step": source_step,
        "images_per_s": rate,
        "losses_finite": finite,
        "losses_sane": sane,
        "losses": losses,
        "first_losses": history[0],
        "peak_gpu_gib": peak_gib(device),
    }


# A loss beyond this means the step diverged: cross-entropies of a fresh network start near
# log 19 = 2.9, the adversarial and domain losses near log 2.
SANE_LOSS = 100.0


def evaluate_native(segmenter, images_and_labels, input_size: tuple[int, int], num_classes: int, device):
    """Confusion matrix of ``segmenter`` scored at the labels' own size, through the product's own
    evaluator (``trainers.step.predict_confusion``): each image is shrunk to ``input_size`` (as the
    data pipeline does), predicted, and the logits are upsampled (bilinear) to the label before
    argmax, as the papers score Cityscapes."""
    import torch
    import torch.nn.functional as F

    from trainers.metrics import predict_confusion

    dataset = [
        (F.interpolate(image[None], size=input_size, mode="bilinear", align_corners=False)[0], label)
        for image, label in images_and_labels
    ]
    with torch.no_grad(), autocast(device):
        return predict_confusion(
            segmenter, dataset, list(range(len(dataset))), num_classes, batch_size=1, device=device
        )


def check_evaluation(args, device, model_name: str, progress) -> dict:

    from benchmarks.scale_scene import CITYSCAPES_CLASSES, GeneratedPool
    from trainers.metrics import mean_iou

    height, width = args.label_size
    pool = GeneratedPool(args.eval_images, height, width, CITYSCAPES_CLASSES, seed=5)
    items = [pool[i] for i in range(len(pool))]
    segmenter = inference_network(model_name, CITYSCAPES_CLASSES, 1, device)
    reset_peak(device)
    evaluate_native(segmenter, items[:1], args.train_size, CITYSCAPES_CLASSES, device)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    confusion = evaluate_native(segmenter, items, args.train_size, CITYSCAPES_CLASSES, device)
    synchronize(device)
    seconds = time.perf_counter() - started
    rate = len(items) / seconds
    counted = int(confusion.sum())
    progress(
        f"evaluate: {len(items)} images predicted at {args.train_size[0]}x{args.train_size[1]}, scored at "
        f"{height}x{width}: {rate:.2f} images/s, {counted:,} pixels counted (untrained weights: mIoU "
        f"{mean_iou(confusion.cpu()):.3f})"
    )
    return {
        "label_size": [height, width],
        "input_size": list(args.train_size),
        "images": len(items),
        "images_per_s": rate,
        "pixels_counted": counted,
        "all_pixels_counted": counted == len(items) * height * width,
        "peak_gpu_gib": peak_gib(device),
    }


PARTS = {"ranking": check_ranking, "train": check_training, "evaluate": check_evaluation}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for gpu-check.json and gpu-check.txt")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a small run of the same code)")
    parser.add_argument("--model", default="", help=f"the network (default {FORWARD_MODEL}, else {FALLBACK_MODEL})")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts, in order (default {','.join(PARTS)})")
    parser.add_argument("--rank-size", type=size_arg, default=(1024, 2048), help="ranking image size (1024x2048)")
    parser.add_argument("--rank-images", type=int, default=6, help="images the forward pass is timed on (6)")
    parser.add_argument(
        "--train-size",
        type=size_arg,
        default=None,
        help="training and evaluation input size (default: the recipe's data.height x data.width, 640x1280)",
    )
    parser.add_argument("--label-size", type=size_arg, default=(1024, 2048), help="evaluation label size (1024x2048)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="source and target images per step (default: the recipe's adapt.batch_size, 1 + 1)",
    )
    parser.add_argument("--train-steps", type=int, default=10, help="timed adaptation steps (10)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--eval-images", type=int, default=8, help="evaluation images (8)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        parser.error(f"unknown part '{unknown[0]}'; choose from: {', '.join(PARTS)}")
    for name in ("rank_images", "train_steps", "eval_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0 or args.batch_size < 0:
        parser.error("--warmup-steps and --batch-size must be >= 0")
    args.train_size = args.train_size or recipe_size()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_absent_packages()
    import torch

    recorder = Recorder(Path(args.out))
    if args.device == "cuda" and not torch.cuda.is_available():
        recorder.line("error: no CUDA device (use --device cpu for a CPU run of the same code)")
        return 2
    device = torch.device(args.device)
    recorder.part("environment", environment(device, recorder.line))
    try:
        model_name = forward_model_name(args.model, recorder.line)
    except ValueError as err:
        recorder.line(f"error: {err}")
        return 2
    failed = []
    for name in args.parts.split(","):
        recorder.line(f"{name}: starting")
        started = time.perf_counter()
        try:
            figures = PARTS[name](args, device, model_name, recorder.line)
            figures["wall_s"] = time.perf_counter() - started
            recorder.part(name, figures)
        except Exception as err:  # record it and go on: the other parts' figures still count
            failed.append(name)
            recorder.line(f"{name}: FAILED: {type(err).__name__}: {err}")
            recorder.part(name, {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    recorder.line(
        f"done: {len(args.parts.split(',')) - len(failed)} part(s) passed"
        + (f", failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
