"""How many trials fit at once, and whether a config can ever be scheduled.

A trial runs its phases one after another: ranking (actors) and training (Train workers) never
overlap within a trial. Each trial's own process reserves no CPU (a unit of the custom
``activeda_trial`` resource; 0.01 CPU on clusters without it); its phases ask for their resources
when they start and give them back when they end. So trials never deadlock as long as one phase of
one trial fits beside what the waiting trials hold, and concurrency is the cluster's CPUs (or GPUs)
divided by the larger phase.

Anything that can never fit (GPUs that do not exist, a worker bigger than every node) is refused
before anything starts, with a message naming the config key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiment_config import ConfigError, ExperimentConfig
from orchestrator.cluster.ray_connection import TRIAL_RESOURCE

TRIAL_CPU = 0.01  # what a trial's own process reserves where the cluster has no trial resource
EPS = 1e-9


@dataclass(frozen=True)
class ResourcePlan:
    max_concurrent: int
    trial_cpu: float
    trial_resources: dict
    phase_cpus: float
    phase_gpus: float
    note: str


def plan_resources(cfg: ExperimentConfig, total: dict[str, float], nodes: list[dict[str, float]]) -> ResourcePlan:
    """Check feasibility and derive trial concurrency from the cluster's resources.

    ``total`` is ``ray.cluster_resources()``; ``nodes`` the per-node resources of alive nodes.
    """
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    trial_cpu = 0.0 if total.get(TRIAL_RESOURCE, 0) >= 1 else TRIAL_CPU
    summary = f"the Ray cluster has CPU={cpus:g}, GPU={gpus:g}"
    train, rank = cfg.train, cfg.ranking

    if train.use_gpu and gpus < 1:
        raise ConfigError("train.use_gpu", f"is true but {summary}; set train.use_gpu=false or add GPU nodes")
    if rank.gpus_per_actor > 0 and gpus < rank.gpus_per_actor - EPS:
        raise ConfigError("ranking.gpus_per_actor", f"asks for {rank.gpus_per_actor:g} GPU but {summary}")
    worker_gpu = 1.0 if train.use_gpu else 0.0
    if not any(_fits(node, train.cpus_per_worker + trial_cpu, worker_gpu) for node in nodes):
        raise ConfigError(
            "train.cpus_per_worker",
            f"a Train worker needs CPU={train.cpus_per_worker:g}, GPU={worker_gpu:g}, "
            f"which no node has ({_describe(nodes)})",
        )
    if not any(_fits(node, rank.cpus_per_actor + trial_cpu, rank.gpus_per_actor) for node in nodes):
        raise ConfigError(
            "ranking.cpus_per_actor",
            f"a ranking actor needs CPU={rank.cpus_per_actor:g}, GPU={rank.gpus_per_actor:g}, "
            f"which no node has ({_describe(nodes)})",
        )
    train_cpus = train.num_workers * train.cpus_per_worker
    if train_cpus + trial_cpu > cpus + EPS:
        raise ConfigError(
            "train.num_workers",
            f"{train.num_workers} workers x {train.cpus_per_worker:g} CPU need CPU={train_cpus:g}, but {summary}",
        )
    if train.use_gpu and train.num_workers > gpus + EPS:
        raise ConfigError(
            "train.num_workers", f"{train.num_workers} GPU workers need GPU={train.num_workers}, but {summary}"
        )

    # The larger of the two phases sets the pace; ranking uses as many actors as can start.
    phase_cpus = max(train_cpus, rank.cpus_per_actor)
    phase_gpus = max(train.num_workers * worker_gpu, rank.gpus_per_actor)
    fit = math.floor((cpus + EPS) / phase_cpus)
    if phase_gpus > 0:
        fit = min(fit, math.floor((gpus + EPS) / phase_gpus))
    fit = max(1, fit)
    while fit > 1 and phase_cpus + fit * trial_cpu > cpus + EPS:
        fit -= 1
    note = f"{fit} trial(s) at once ({summary}; a trial's largest phase needs CPU={phase_cpus:g}"
    note += f", GPU={phase_gpus:g})" if phase_gpus else ")"
    if cfg.sweep.max_concurrent:
        fit = cfg.sweep.max_concurrent
        note = f"{fit} trial(s) at once (sweep.max_concurrent; {summary})"
    trial_resources = {TRIAL_RESOURCE: 1} if trial_cpu == 0 else {"cpu": trial_cpu}
    return ResourcePlan(
        max_concurrent=fit,
        trial_cpu=trial_cpu,
        trial_resources=trial_resources,
        phase_cpus=phase_cpus,
        phase_gpus=phase_gpus,
        note=note,
    )


def with_node_types(
    total: dict[str, float], nodes: list[dict[str, float]], shapes: list[dict]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Live resources plus what an autoscaling cluster can still add (``orchestrator.cluster.cluster_file.node_shapes``).

    A worker type counts with its ``max_workers`` nodes; types whose CPU/GPU only Ray can know at run
    time (``None``) are left out, so the check stays on the safe side of what is certain.
    """
    total = dict(total)
    nodes = list(nodes)
    for shape in shapes:
        resources = shape["resources"]
        if shape["head"] or resources.get("CPU") is None or resources.get("GPU") is None:
            continue
        nodes.append({k: float(v) for k, v in resources.items()})
        for key, value in resources.items():
            total[key] = total.get(key, 0.0) + float(value) * shape["max_workers"]
    return total, nodes


def _fits(node: dict[str, float], cpu: float, gpu: float) -> bool:
    return node.get("CPU", 0) + EPS >= cpu and node.get("GPU", 0) + EPS >= gpu


def _describe(nodes: list[dict[str, float]]) -> str:
    if not nodes:
        return "no nodes are alive"
    shapes = sorted({f"CPU={n.get('CPU', 0):g}, GPU={n.get('GPU', 0):g}" for n in nodes})
    return "nodes: " + "; ".join(shapes)
