"""The plan of a sweep (or of one run) before anything starts: ``--dry-run``.

What the config asks for, job by job: the trials, their rounds, the steps of every training job,
the images each step takes and each job sees, the pool images ranked, the evaluations, and an
estimate of the device-hours from step times measured on real hardware (``MEASURED``; every figure
there names the command, machine, date and commit it came from). Nothing is started and nothing is
written: no Ray, no tracking store, no output folder, no generated data.

The estimate scales the nearest measured figure of the same model and device linearly in pixels x
images per step (a GPU at batch 1 is less busy than at batch 2, so this leans low there), prices a
step that a figure does not cover with the closest kind it does cover, and says so in its basis
lines. It is a budget to plan a cluster with, not a promise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiment_config import CASES_AXIS, ExperimentConfig, with_overrides
from orchestrator.round.loop import selector_network_trains
from orchestrator.round.start_models import warmup_cache_key
from pixel_selectors.rules import RULES
from trainers.engine import planned_adapt_steps, round_steps


@dataclass(frozen=True)
class Measured:
    """One measured cost: seconds per ``kind`` (a training step, or one image ranked or evaluated)."""

    kind: str  # one of KINDS
    model: str
    device: str  # "gpu" | "cpu"
    height: int  # the input size it was measured at
    width: int
    images: int  # images per step per device (source images, and as many target images)
    seconds: float
    what: str  # what ran
    source: str  # command, machine, date, commit
    rule: str = ""  # rank_image: the selection rule


# What a figure measures: a step that trains G and S (the warm-up, a round before the last), one that
# leaves S out (the last round, the oracle reference), a source-only step, an image ranked, an image
# evaluated. A kind without a figure of its own is priced as the next one in ``STAND_IN`` that has
# one, which does more work: the estimate then errs high.
KINDS = {
    "adapt_step": "adaptation step (G and S)",
    "adapt_step_without_s": "adaptation step without S",
    "source_step": "source-only step",
    "rank_image": "image ranked",
    "eval_image": "image evaluated",
}
STAND_IN = {"source_step": "adapt_step_without_s", "adapt_step_without_s": "adapt_step"}

_H200 = "bash scripts/gpu_check.sh, NVIDIA H200, torch 2.11.0+cu130, 2026-12-04, commit a22b766"
MEASURED: tuple[Measured, ...] = (
    Measured(
        "adapt_step",
        "deeplabv2_resnet101",
        "gpu",
        640,
        1280,
        2,
        0.890,
        "a step of configs/gta5_to_cityscapes.yaml's recipe, 2 + 2 images, every loss on, bf16, channels_last, "
        "S's MCD updates adapt.num_k 4 times: 0.890 s (2.25 target images/s)",
        _H200,
    ),
    Measured(
        "adapt_step_without_s",
        "deeplabv2_resnet101",
        "gpu",
        640,
        1280,
        2,
        0.137,
        "the same step leaving S out (what a last round trains): 0.137 s",
        _H200,
    ),
    Measured(
        "source_step",
        "deeplabv2_resnet101",
        "gpu",
        640,
        1280,
        2,
        0.149,
        "a source-only step of 2 images: 0.149 s",
        _H200,
    ),
    Measured(
        "adapt_step",
        "deeplabv2_resnet101",
        "cpu",
        512,
        1024,
        1,
        222.0,
        "a step of configs/gta5_to_cityscapes.yaml then, 1 + 1 images, adapt.num_k 4: 222 s",
        "python -m benchmarks.protocol, 2 shared CPUs (Intel Xeon), torch 2.14.1, 2026-11-27, commit 87e0265",
    ),
    Measured(
        "rank_image",
        "deeplabv2_resnet101",
        "gpu",
        1024,
        2048,
        1,
        1 / 19.75,
        "forward (two heads) + labor_ppl (40 points) in the ranking actors' code, untrained weights: 19.75 images/s",
        _H200,
        rule="labor_ppl",
    ),
    Measured(
        "rank_image",
        "deeplabv2_resnet101",
        "gpu",
        1024,
        2048,
        1,
        1 / 16.87,
        "forward (two heads) + labor_spl (2.2%) in the ranking actors' code, untrained weights: 16.87 images/s",
        _H200,
        rule="labor_spl",
    ),
    Measured(
        "eval_image",
        "deeplabv2_resnet101",
        "gpu",
        640,
        1280,
        1,
        1 / 23.4,
        "predicted at 640x1280, scored at the labels' native 1024x2048: 23.4 images/s",
        _H200,
    ),
)

# Published split sizes, for a plan made where the datasets are not: Cityscapes (Cordts et al., CVPR
# 2016: 2,975 / 500 / 1,525 finely annotated images), GTA5 (Richter et al., ECCV 2016: 24,966 images),
# SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016: 9,400 images).
PUBLISHED_TARGET = {"train": 2975, "val": 500, "test": 1525}
PUBLISHED_SOURCE = {"gta5": 24966, "synthia": 9400, "cityscapes": 2975}


@dataclass
class Price:
    """A cost per unit (step or image) on one worker's device, with where it came from."""

    seconds: float | None
    basis: str
    kind: str = ""  # the kind of the figure used


def price(
    kind: str,
    model: str,
    device: str,
    height: int,
    width: int,
    images: int = 1,
    rule: str = "",
    table: tuple[Measured, ...] = MEASURED,
) -> Price:
    """Seconds per ``kind`` at this size and batch, from the nearest measured figure of ``model`` on
    ``device``, scaled linearly in pixels x images (a kind without a figure takes its ``STAND_IN``'s);
    ``seconds`` None when nothing was measured."""
    wanted = kind
    while True:
        same = [m for m in table if m.kind == kind and m.model == model and m.device == device]
        if same or kind not in STAND_IN:
            break
        kind = STAND_IN[kind]
    if not same:
        return Price(None, f"no measured {KINDS[wanted]} of {model} on a {device.upper()}: left out")
    if kind == "rank_image":
        own = [m for m in same if m.rule == rule]
        # A rule without its own figure takes the slowest measured rule's: the estimate stays on the high side.
        same = own or [max(same, key=lambda m: m.seconds / (m.height * m.width))]
    work = height * width * images
    best = min(same, key=lambda m: abs(m.height * m.width * m.images - work))
    factor = work / (best.height * best.width * best.images)
    seconds = best.seconds * factor
    scaled = "" if abs(factor - 1) < 1e-9 else f", scaled x{factor:.3g} in pixels x images"
    stand_in = f"none measured, priced as an {KINDS[kind]} (high): " if kind != wanted else ""
    return Price(seconds, f"{seconds:.3g} s; {stand_in}{best.what} ({best.source}{scaled})", kind)


@dataclass
class JobRow:
    """One line of the plan: jobs of one kind, summed."""

    name: str
    jobs: int = 0
    steps: int = 0
    job_steps: set = field(default_factory=set)  # the steps of each job (one value when all agree)
    batch: str = ""  # "per worker x workers"
    images_per_step: str = ""  # global: "source + target"
    source_images: int = 0
    target_images: int = 0
    ranked: int = 0  # images ranked (ranking rows)
    evaluated: int = 0  # images evaluated (evaluation rows)
    hours: float | None = 0.0
    note: str = ""


@dataclass
class Plan:
    """What a sweep (or one run) will do, and what it costs."""

    trials: int
    trial_note: str
    rounds: list[int]
    rows: list[JobRow]
    sizes: list[str]
    device: str
    oracle_off_hours: float | None  # what the oracle reference would add (None: unknown or on already)
    oracle_steps: int
    basis: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float | None:
        values = [row.hours for row in self.rows]
        return None if any(v is None for v in values) else sum(values)


def _axis_values(spec: dict) -> tuple[str, list]:
    """(kind, values the plan prices) of one search-space axis: a grid's or choice's values, a range's ends."""
    ((kind, values),) = spec.items()
    if kind in ("grid", "choice"):
        return kind, list(values)
    low, high = values
    return kind, [low, high - 1 if kind == "randint" else high]


def trial_configs(cfg: ExperimentConfig) -> tuple[list[list[ExperimentConfig]], str]:
    """Every trial the sweep will start, each as the configs it may take (one, unless a sampled axis
    leaves its value open: then the ends of its range, or each choice), and a note on how they were counted.

    Tune crosses the grid axes (a ``cases`` grid included) and repeats the whole grid
    ``sweep.num_samples`` times; a sampled axis (choice, uniform, ...) draws once per trial.
    """
    grid, sampled = {}, {}
    for key, spec in cfg.sweep.search_space.items():
        kind, values = _axis_values(spec)
        (grid if kind == "grid" else sampled)[key] = values
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    open_values = [dict(zip(sampled, values)) for values in itertools.product(*sampled.values())]
    trials = []
    for combo in combos:
        options = [with_overrides(cfg, {**combo, **values}) for values in open_values]
        trials.extend([options] * cfg.sweep.num_samples)
    sizes = [f"{len(v)}" + (" cases" if k == CASES_AXIS else f" {k}") for k, v in grid.items()]
    note = " x ".join([*sizes, f"sweep.num_samples {cfg.sweep.num_samples}"])
    if sampled:
        note += f"; sampled axes ({', '.join(sampled)}) priced at their dearest value"
    return trials, note


def _count(options: list[ExperimentConfig], key: Callable[[ExperimentConfig], str], trial: int) -> set:
    """The cache entries a trial's possible configs use: one when they agree, else one of its own (its
    sampled value decides)."""
    keys = {key(option) for option in options}
    return keys if len(keys) == 1 else {f"trial-{trial}"}


def dataset_sizes(cfg: ExperimentConfig) -> tuple[int, int, int, list[str]]:
    """(source images, pool images, validation images, notes): counted on disk where the target root
    is readable here, else the published split sizes; capped by ``data.pool_images`` / ``data.val_images``."""
    data = cfg.data
    notes = []
    if not data.source.root:
        source = data.synthetic.source_images
    else:
        source = PUBLISHED_SOURCE.get(data.source.format, 0)
    if not data.target.root:
        pool, val = data.synthetic.target_train_images, data.synthetic.target_val_images
        where = "the generated synthetic domains"
    else:
        try:
            from trainers.data.cityscapes import list_cityscapes_pairs

            root = Path(data.target.root)
            pool = len(list_cityscapes_pairs(root, data.target.pool_split))
            val = len(list_cityscapes_pairs(root, data.target.val_split))
            where = f"counted under {root}"
        except Exception:  # not here (the plan is often made away from the cluster's data): the published sizes
            pool, val = PUBLISHED_TARGET[data.target.pool_split], PUBLISHED_TARGET[data.target.val_split]
            where = "Cityscapes' published split sizes: the target root is not readable here"
    if data.pool_images:
        pool = min(pool, data.pool_images)
    if data.val_images:
        val = min(val, data.val_images)
    source_where = "generated" if not data.source.root else f"{data.source.format}'s published size"
    notes.append(
        f"data: source {source:,} images ({source_where}); target pool {pool:,}, validation {val:,} ({where}); "
        f"training and ranking input {data.height}x{data.width}"
    )
    return source, pool, val, notes


def make_plan(cfg: ExperimentConfig, *, oracle_reference: bool | None = None, single_trial: bool = False) -> Plan:
    """The plan of ``cfg``'s sweep (``single_trial``: of ``orchestrator.run``, the config's own values,
    no oracle reference). ``oracle_reference`` overrides ``sweep.oracle_reference``."""
    if single_trial:
        trials, note = [[with_overrides(cfg, {"sweep.search_space": {}})]], "one run: the config's own values"
        oracle_reference = False
    else:
        trials, note = trial_configs(cfg)
    if oracle_reference is None:
        oracle_reference = cfg.sweep.oracle_reference
    device = "gpu" if cfg.train.use_gpu else "cpu"
    _, pool, val, sizes = dataset_sizes(cfg)
    basis: dict[str, str] = {}
    source, adapt = JobRow("source model"), JobRow("round adaptation")
    warmup, warmup_s = JobRow("warm-up G (label-free)"), JobRow("warm-up S (G's labels)")
    ranking, evaluation, oracle = JobRow("ranking"), JobRow("evaluation"), JobRow("oracle reference")

    def cost(kind: str, c: ExperimentConfig, images: int = 1, rule: str = "") -> float | None:
        found = price(kind, c.model.name, device, c.data.height, c.data.width, images, rule)
        basis.setdefault(f"{kind}:{rule}", f"{KINDS[kind]}{' (' + rule + ')' if rule else ''}: {found.basis}")
        return found.seconds

    def add(hours: float | None, seconds: float | None, times: float) -> float | None:
        return None if hours is None or seconds is None else hours + seconds * times / 3600

    def train_row(row: JobRow, c: ExperimentConfig, steps: int, batch: int, kind: str, evaluate: bool = True) -> None:
        """One training job of steps of ``kind`` (and, with ``evaluate``, the evaluation every job ends
        with) added to ``row``."""
        target = kind != "source_step"
        global_batch = batch * c.train.num_workers
        row.jobs += 1
        row.steps += steps
        row.job_steps.add(steps)
        row.batch = f"{batch} x {c.train.num_workers}"
        row.images_per_step = f"{global_batch} + {global_batch}" if target else f"{global_batch}"
        row.source_images += steps * global_batch
        row.target_images += steps * global_batch if target else 0
        row.hours = add(row.hours, cost(kind, c, batch), steps * c.train.num_workers)
        if not evaluate:
            return
        evaluation.jobs += 1
        evaluation.evaluated += val
        evaluation.hours = add(evaluation.hours, cost("eval_image", c), val)

    def warmup_rows(c: ExperimentConfig) -> None:
        """The warm-up job's two phases, at ``warmup.batch_size``: G (and its discriminator) without S,
        then S on the frozen G's pseudo labels, priced as a step that trains G and S (it errs high:
        G only predicts). The job ends with one evaluation."""
        with_s = c.warmup.selector_steps > 0
        train_row(warmup, c, c.warmup.steps, c.warmup.batch_size, "adapt_step_without_s", evaluate=not with_s)
        if with_s:
            train_row(warmup_s, c, c.warmup.selector_steps, c.warmup.batch_size, "adapt_step")

    # The driver trains the source model, the warm-up and the oracle reference once, from the sweep's
    # own config; a trial whose settings change the warm-up trains its own (cached by setting).
    train_row(source, cfg, 0 if cfg.source.checkpoint else cfg.source.steps, cfg.source.batch_size, "source_step")
    if cfg.source.checkpoint:
        source.note = "given (source.checkpoint): nothing trained"
    warmup_keys: set = set()
    if cfg.warmup.steps:
        warmup_keys.add(warmup_cache_key(cfg))
        warmup_rows(cfg)
    if oracle_reference:
        train_row(oracle, cfg, planned_adapt_steps(cfg), cfg.adapt.batch_size, "adapt_step_without_s")
    rounds = []
    for number, options in enumerate(trials):
        # The dearest of a trial's possible configs (they differ only in sampled axes).
        c = max(options, key=lambda o: (o.selection.rounds, planned_adapt_steps(o), o.warmup.steps))
        rounds.append(c.selection.rounds)
        if c.warmup.steps:
            new = _count(options, warmup_cache_key, number) - warmup_keys
            if new:
                warmup_keys |= new
                warmup_rows(c)
        for index in range(1, c.selection.rounds + 1):
            # S trains only where a later round ranks with it (orchestrator.round.loop).
            kind = "adapt_step" if selector_network_trains(c, index) else "adapt_step_without_s"
            train_row(adapt, c, round_steps(c, index), c.adapt.batch_size, kind)
            if c.selection.rule in RULES:
                ranking.jobs += 1
                ranking.ranked += pool
                ranking.hours = add(ranking.hours, cost("rank_image", c, 1, c.selection.rule), pool)
    oracle_off_hours = None
    if not oracle_reference and not single_trial:
        what_if = make_plan(cfg, oracle_reference=True)
        row = next(r for r in what_if.rows if r.name == "oracle reference")
        oracle_off_hours = add(row.hours, cost("eval_image", cfg), val)
    rows = [row for row in (source, warmup, warmup_s, adapt, ranking, evaluation, oracle) if row.jobs]
    return Plan(
        len(trials), note, rounds, rows, sizes, device, oracle_off_hours, planned_adapt_steps(cfg), list(basis.values())
    )


def _hours(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def format_plan(plan: Plan, cfg: ExperimentConfig, command: str) -> str:
    """The plan as the lines ``--dry-run`` prints."""
    unit = "GPU-h" if plan.device == "gpu" else "CPU-h"
    columns = (
        ("job", 22, "<"),
        ("jobs", 5, ">"),
        ("steps/job", 11, ">"),
        ("batch x workers", 17, ">"),
        ("images/step", 13, ">"),
        ("images seen", 19, ">"),
        ("ranked", 9, ">"),
        ("evaluated", 11, ">"),
        (unit, 9, ">"),
    )

    def line(*cells: str) -> str:
        return "".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, columns)).rstrip()

    def number(value: int) -> str:
        return f"{value:,}" if value else "-"

    rounds = sorted(set(plan.rounds))
    lines = [
        f"[activeda] {command} --dry-run: the plan of '{cfg.sweep.name}' (nothing started, nothing written)",
        f"trials: {plan.trials} ({plan.trial_note}); rounds per trial: "
        + (str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"),
        *plan.sizes,
        "",
        line(*(name for name, _, _ in columns)),
    ]
    for row in plan.rows:
        steps = sorted(row.job_steps)
        per_job = "-" if not steps or steps == [0] else f"{steps[0]:,}" + (f"-{steps[-1]:,}" if len(steps) > 1 else "")
        seen = "-"
        if row.source_images:
            seen = f"{row.source_images:,}" + (f" + {row.target_images:,}" if row.target_images else "")
        lines.append(
            line(
                row.name,
                str(row.jobs),
                per_job,
                row.batch if row.steps else "-",
                row.images_per_step if row.steps else "-",
                seen,
                number(row.ranked),
                number(row.evaluated),
                _hours(row.hours),
            )
            + (f"  ({row.note})" if row.note else "")
        )
    lines.append(line("total", *[""] * 7, _hours(plan.hours)))
    lines.append("")
    if plan.oracle_off_hours is not None:
        lines.append(
            f"oracle reference: off (sweep.oracle_reference: false); on, it adds one adaptation of "
            f"{plan.oracle_steps:,} steps with every pool pixel labeled: about {_hours(plan.oracle_off_hours)} {unit}"
        )
    lines.append("images/step: source + target images of one optimizer step, all workers; images seen: steps x that")
    if any(row.name == "warm-up S (G's labels)" for row in plan.rows):
        lines.append(
            "warm-up: G adapts first (label-free), then LabOR's selector network S trains on the frozen G's pseudo labels"
        )
    lines.append(f"estimate ({unit}: device time summed over every worker and actor, not wall-clock), from:")
    lines.extend(f"  {text}" for text in plan.basis)
    return "\n".join(lines)
