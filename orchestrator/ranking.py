"""Ranking the target pool on Ray actors.

Each actor loads the round's checkpoint once and regenerates (or reads) the target images itself
from their ids: the driver ships only image ids and the already-labeled coordinates, and gets back
compact queries (coordinates and scores), never probability maps.

The pool is cut into fixed shards of consecutive ids (``ranking.images_per_shard``) whatever the
actor count, each shard is forwarded as one batch, and a selector is a pure function of one image's
outputs: so one actor or eight return identical queries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray
import torch

from pixel_selectors import SELECTOR_INPUTS, SELECTOR_KIND, SELECTORS, PointQuery, RegionQuery, selector_params
from pixel_selectors.budget import points_per_image, share_of_candidates
from trainers.data import build_domains
from trainers.train_loop import load_models

from .storage import local_checkpoint

log = logging.getLogger(__name__)


class Ranker:
    """Scores target images with the pixel selector S of one checkpoint (plain PyTorch)."""

    def __init__(self, checkpoint_dir: str, cfg: dict, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.cfg = cfg
        domains = build_domains(cfg["data"])
        self.pool = domains.target_pool
        self.device = torch.device("cuda" if cfg["ranking"]["gpus_per_actor"] > 0 and torch.cuda.is_available() else "cpu")
        with local_checkpoint(checkpoint_dir, cfg) as directory:  # a checkpoint on S3 is fetched to this node
            models, _ = load_models(directory, cfg, len(domains.classes))
        name = cfg["selection"]["selector"]
        self.network = getattr(models, SELECTOR_INPUTS[name]).to(self.device).eval()
        self.select = SELECTORS[name]
        self.kind = SELECTOR_KIND[name]
        self.params = selector_params(name, cfg["selection"], int(cfg["data"]["width"]))
        self.region_spread = cfg["selection"]["region_spread"]
        self.seed = int(cfg["seed"])

    @torch.no_grad()
    def rank(self, image_ids: list[int], labeled: dict[int, tuple[np.ndarray, np.ndarray]],
             num_points: int, round_index: int = 1, budget_pixels: int = 0
             ) -> list[tuple[int, PointQuery | RegionQuery]]:
        """Queries of each image. Point selectors give ``num_points`` points, or with a global
        ``budget_pixels`` as many as the budget could use from one image; region selectors give
        their best regions covering at most the budget (what the driver's merge can use), or all
        of them when ``budget_pixels`` is 0 (LabOR SPL's whole inconsistency mask)."""
        images = torch.stack([self.pool[i][0] for i in image_ids]).to(self.device)
        head_probs = [logits.softmax(dim=1).float().cpu() for logits in self.network(images)]
        height, width = images.shape[-2:]
        out = []
        for n, image_id in enumerate(image_ids):
            mask = None
            if image_id in labeled:
                ys, xs = labeled[image_id]
                mask = torch.zeros(height, width, dtype=torch.bool)
                mask[torch.as_tensor(ys, dtype=torch.int64), torch.as_tensor(xs, dtype=torch.int64)] = True
            seed = image_seed(self.seed, round_index, image_id)
            probs = [p[n] for p in head_probs]
            if self.kind == "regions":
                query = self.select(probs, labeled=mask, seed=seed, **self.params)
                if budget_pixels:  # without a budget (SPL's whole mask) every candidate region is wanted
                    if self.region_spread == "share":
                        query = share_of_candidates(query)  # needs all of the image's candidates, so before head
                    query = query.head(budget_pixels)
            else:
                wanted = points_per_image(budget_pixels, height, width) if budget_pixels else num_points
                query = self.select(probs, wanted, labeled=mask, seed=seed, **self.params)
            out.append((image_id, query))
        return out


def image_seed(seed: int, round_index: int, image_id: int) -> int:
    """The seed a selector gets for one image in one round: the same image gets the same draw
    whichever actor ranks it, and a new one each round."""
    return (seed * 1_000_003 + round_index) * 1_000_003 + image_id


@ray.remote
class RankingActor(Ranker):
    """``Ranker`` as a Ray actor; resources are set by the caller with ``.options``."""

    def ready(self) -> bool:
        return True


def shard_ids(image_ids: list[int], shard_size: int) -> list[list[int]]:
    ids = sorted(image_ids)
    return [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]


@dataclass(frozen=True)
class RankingStats:
    """How one pass over the pool went: images ranked, and where the wall time went.

    ``startup_s`` runs from the call to the first actor ready (process start, imports, loading the
    checkpoint and the pool); ``ranking_s`` from then to the last query. Start-up does not depend
    on the pool size, so ``images / ranking_s`` is the throughput a large pool sees.
    ``steady_images`` were ranked in the last ``steady_s`` seconds, once every actor had started:
    the rate of all actors working at once. Shards already handed out at that moment are not
    counted (part of their work came before), so the rate errs low; it is NaN when no shard was
    handed out after every actor had started (a pool too small to tell).
    """

    images: int
    actors: int
    startup_s: float
    ranking_s: float
    actors_replaced: int
    steady_images: int = 0
    steady_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.ranking_s, 1e-9)

    @property
    def steady_images_per_s(self) -> float:
        return self.steady_images / self.steady_s if self.steady_images and self.steady_s > 0 else float("nan")


def rank_pool(checkpoint_dir: str, cfg: dict, pool_size: int, labeled: dict[int, tuple[np.ndarray, np.ndarray]],
              consume: Callable[[int, PointQuery | RegionQuery], None], round_index: int = 1, budget_pixels: int = 0,
              progress: Callable[[str], None] | None = None) -> RankingStats:
    """Rank the ``pool_size`` target pool images with ``ranking.num_actors`` actors.

    Each image's query is handed to ``consume(image_id, query)`` as soon as its shard comes back
    (in completion order), so the driver can merge a global budget without holding the pool.

    Actors live for one call: between rounds the trial's CPUs (or GPUs) go to the Ray Train
    workers, and an idle actor would hold them. Their start-up is paid once per round and reported
    apart from the ranking itself (``RankingStats``).
    """
    rk = cfg["ranking"]
    shards = shard_ids(list(range(pool_size)), rk["images_per_shard"])
    num_actors = min(rk["num_actors"], len(shards))

    def new_actor():
        # Outside the trial's placement group: the trial reserves only its own driver's share.
        return (RankingActor.options(num_cpus=rk["cpus_per_actor"], num_gpus=rk["gpus_per_actor"],
                                     scheduling_strategy="DEFAULT")
                .remote(checkpoint_dir, cfg, max(1, int(rk["cpus_per_actor"]))))

    actors = [new_actor() for _ in range(num_actors)]
    ranked, replaced = 0, 0
    points = cfg["selection"]["points_per_image"]
    queue = list(shards)
    # An actor gets work only once it has started: on a busy cluster some actors may not start
    # before the others finish, and a shard waiting on such an actor would wait forever.
    waiting_to_start = {actor.ready.remote(): actor for actor in actors}
    working: dict = {}  # result ref -> (actor, shard)
    called = time.perf_counter()
    first_ready = all_ready = None
    originals, started_originals, counted_before_all_ready = set(actors), set(), 0
    try:
        while queue or working:
            done, _ = ray.wait(list(working) + list(waiting_to_start), num_returns=1)
            ref = done[0]
            starting = ref in waiting_to_start
            actor, shard = (waiting_to_start.pop(ref), None) if starting else working.pop(ref)
            try:
                results = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                # The actor process died (while starting or mid-shard): its shard goes back to the
                # queue and a new actor takes its place; results do not depend on which actor ranks.
                # A constructor that always fails (bad checkpoint, bad data) uses up the restarts and
                # then fails the round with its own error.
                replaced += 1
                if replaced > rk["max_actor_restarts"]:
                    raise RuntimeError(f"ranking actors died {replaced} times (ranking.max_actor_restarts="
                                       f"{rk['max_actor_restarts']}); last: {err}") from None
                if shard is not None:
                    log.warning("ranking actor died on images %s-%s; re-ranking them on a new actor",
                                shard[0], shard[-1])
                    queue.insert(0, shard)
                replacement = new_actor()
                actors.append(replacement)
                waiting_to_start[replacement.ready.remote()] = replacement
                continue
            if first_ready is None:
                first_ready = time.perf_counter()
            if starting:
                if actor in originals:  # a replacement's start does not make the pool "all started"
                    started_originals.add(actor)
                if len(started_originals) == num_actors and all_ready is None:
                    in_flight = sum(len(s) for _, s in working.values())
                    all_ready, counted_before_all_ready = time.perf_counter(), ranked + in_flight
            else:
                for image_id, query in results:
                    consume(image_id, query)
                    ranked += 1
                if progress is not None:
                    elapsed = time.perf_counter() - first_ready
                    progress(f"ranked {ranked}/{pool_size} target images ({ranked / max(elapsed, 1e-9):.1f} images/s)")
            if queue:
                shard = queue.pop(0)
                ref = actor.rank.remote(shard, _subset(labeled, shard), points, round_index, budget_pixels)
                working[ref] = (actor, shard)
    finally:
        for actor in actors:
            ray.kill(actor)
    finished = time.perf_counter()
    first_ready = finished if first_ready is None else first_ready
    all_ready = finished if all_ready is None else all_ready
    return RankingStats(images=ranked, actors=num_actors, startup_s=first_ready - called,
                        ranking_s=finished - first_ready, actors_replaced=replaced,
                        steady_images=max(0, ranked - counted_before_all_ready), steady_s=finished - all_ready)


def _subset(labeled: dict, ids: list[int]) -> dict:
    return {i: labeled[i] for i in ids if i in labeled}
