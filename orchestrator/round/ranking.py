"""Ranking the target pool on Ray actors.

Each actor loads the round's checkpoint once and regenerates (or reads) the target images itself
from their ids, and reads the already-labeled pixels of its own images from the label store
(``LabelReader``): the driver ships only image ids and a reference to the store, and gets back
compact queries (coordinates and scores), never probability maps. An actor with a GPU selects on
the GPU: the probabilities never leave it, only the queries do.

The pool is cut into fixed shards of consecutive ids (``ranking.images_per_shard``) whatever the
actor count, each shard is forwarded as one batch, and a selector is a pure function of one image's
outputs: so one actor or eight return identical queries.

This module imports Ray only where it starts actors: ``Ranker`` and ``rank_images`` are plain
PyTorch (the GPU check runs them on a machine without Ray).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.cluster.storage import local_checkpoint
from pixel_selectors import (
    PointQuery,
    RegionQuery,
    labeled_mask,
    select_image,
    selector_input,
    selector_params,
)
from trainers.data import build_domains
from trainers.engine import load_models
from trainers.loader import load_images

log = logging.getLogger(__name__)


def labeled_coordinates(labeled, image_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (ys, xs) already labeled, for the given images only. ``labeled``: a ``LabelReader``
    (the product: each actor reads its own images from the store), a dict image id -> (ys, xs)
    (tests and benchmarks), or None."""
    if labeled is None:
        return {}
    if hasattr(labeled, "coordinates"):
        return labeled.coordinates(image_ids)
    return {i: labeled[i] for i in image_ids if i in labeled}


@torch.no_grad()
def rank_images(
    network: torch.nn.Module,
    images: torch.Tensor,
    image_ids: list[int],
    labeled: Mapping[int, tuple[np.ndarray, np.ndarray]],
    selector: str,
    *,
    num_points: int,
    budget_pixels: int = 0,
    seeds: list[int],
    params: dict | None = None,
    region_spread: str = "share",
    max_share: float | None = None,
) -> list[tuple[int, PointQuery | RegionQuery]]:
    """Forward ``images`` (N, 3, H, W) through ``network`` (on its device) and select in each image
    there: (image id, query) per image. Probabilities stay on the device, one image at a time
    (softmax per image: a batch of 1024 x 2048 maps with 19 classes and two heads would hold
    N x 300 MB at once); ``labeled`` image id -> (ys, xs) become masks on the device. ``max_share``:
    see ``select_image``."""
    height, width = images.shape[-2:]
    logits = network(images)
    out = []
    for n, image_id in enumerate(image_ids):
        probs = [head[n].float().softmax(dim=0) for head in logits]
        mask = None
        if image_id in labeled:
            ys, xs = labeled[image_id]
            mask = labeled_mask(ys, xs, height, width, device=images.device)
        query = select_image(
            selector,
            probs,
            num_points=num_points,
            budget_pixels=budget_pixels,
            labeled=mask,
            seed=seeds[n],
            params=params,
            region_spread=region_spread,
            max_share=max_share,
        )
        out.append((image_id, query))
    return out


class Ranker:
    """Scores target images with the pixel selector S of one checkpoint (plain PyTorch)."""

    def __init__(self, checkpoint_dir: str, cfg: dict, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.cfg = cfg
        domains = build_domains(cfg["data"])
        self.pool = domains.target_pool
        self.device = torch.device(
            "cuda" if cfg["ranking"]["gpus_per_actor"] > 0 and torch.cuda.is_available() else "cpu"
        )
        with local_checkpoint(checkpoint_dir, cfg) as directory:  # a checkpoint on S3 is fetched to this node
            models, _ = load_models(directory, cfg, len(domains.classes))
        name = cfg["selection"]["selector"]
        self.selector = name
        self.network = getattr(models, selector_input(name, cfg["selection"])).to(self.device).eval()
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        self.params = selector_params(name, cfg["selection"], int(cfg["data"]["width"]))
        self.region_spread = cfg["selection"]["region_spread"]
        self.seed = int(cfg["seed"])
        # Decode a shard's images on all of the actor's CPUs at once (a 2048x1024 PNG: ~150 ms of one core).
        self.loading = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix="load")
        # The next shard's images are decoded while this one is forwarded and selected (``prefetch_ids``):
        # one coordinating thread, whose per-image work goes to ``loading`` (never a task of ``loading``
        # waiting on ``loading``'s own queue).
        self.prefetching = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self.prefetched: tuple[tuple[int, ...], concurrent.futures.Future] | None = None
        self.prefetch_hits = 0

    def _images(self, image_ids: list[int], prefetch_ids: list[int] | None) -> torch.Tensor:
        """The shard's images (taken from the prefetch when it was this shard), and the next shard's decode
        started in the background."""
        pin = self.device.type == "cuda"
        pending, self.prefetched = self.prefetched, None
        if pending is not None and pending[0] == tuple(image_ids):
            images = pending[1].result()  # a decoding error surfaces here, as it would without prefetch
            self.prefetch_hits += 1
        else:
            if pending is not None:  # the driver sent another shard (an actor died): drop the guess
                pending[1].cancel()
            images = load_images(self.pool, image_ids, self.loading, pin_memory=pin)
        if prefetch_ids and self.prefetching is not None:
            self.prefetched = (
                tuple(prefetch_ids),
                self.prefetching.submit(load_images, self.pool, list(prefetch_ids), self.loading, pin),
            )
        return images

    def rank(
        self,
        image_ids: list[int],
        labeled,
        num_points: int,
        round_index: int = 1,
        budget_pixels: int = 0,
        max_share: float | None = None,
        prefetch_ids: list[int] | None = None,
    ) -> list[tuple[int, PointQuery | RegionQuery]]:
        """Queries of each image. Point selectors give ``num_points`` points, or with a global
        ``budget_pixels`` as many as the budget could use from one image; region selectors give
        their best regions covering at most the budget (what the driver's merge can use), tiling
        selectors at most ``max_share`` of the image's free pixels (``select_image``).
        ``labeled``: a ``LabelReader`` (read here, for these images only) or a dict id -> (ys, xs).
        ``prefetch_ids``: the shard this actor will most likely be sent next; its images are decoded
        while this shard is ranked (the queries do not depend on it)."""
        coordinates = labeled_coordinates(labeled, image_ids)
        images = self._images(image_ids, prefetch_ids)
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            return rank_images(
                self.network,
                images,
                image_ids,
                coordinates,
                self.selector,
                num_points=num_points,
                budget_pixels=budget_pixels,
                seeds=[image_seed(self.seed, round_index, i) for i in image_ids],
                params=self.params,
                region_spread=self.region_spread,
                max_share=max_share,
            )

    def peak_memory(self) -> dict[str, int]:
        """This process's peak resident memory (bytes) and, with a GPU, its peak GPU memory."""
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux
        out = {"rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}
        if self.device.type == "cuda":
            out["gpu_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        return out


def image_seed(seed: int, round_index: int, image_id: int) -> int:
    """The seed a selector gets for one image in one round: the same image gets the same draw
    whichever actor ranks it, and a new one each round."""
    return (seed * 1_000_003 + round_index) * 1_000_003 + image_id


@functools.cache
def ranking_actor_class(base: type | None = None):
    """``Ranker`` (or a subclass: the scale benchmark's generated pool) as a Ray actor class, made on
    first use so that this module imports without Ray; resources are set by the caller with ``.options``."""
    import ray

    @ray.remote
    class RankingActor(base or Ranker):
        def ready(self) -> bool:
            return True

    return RankingActor


def shard_ids(image_ids: list[int], shard_size: int) -> list[list[int]]:
    ids = sorted(image_ids)
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


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
    actor_peak_rss_bytes: int = 0  # the largest peak resident memory of an actor that finished
    actor_peak_gpu_bytes: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.ranking_s, 1e-9)

    @property
    def steady_images_per_s(self) -> float:
        return self.steady_images / self.steady_s if self.steady_images and self.steady_s > 0 else float("nan")


def rank_pool(
    checkpoint_dir: str,
    cfg: dict,
    pool_size: int,
    labeled,
    consume: Callable[[int, PointQuery | RegionQuery], None],
    round_index: int = 1,
    budget_pixels: int = 0,
    progress: Callable[[str], None] | None = None,
    ranker: type | None = None,
    max_share: float | None = None,
) -> RankingStats:
    """Rank the ``pool_size`` target pool images with ``ranking.num_actors`` actors (``ranker``: the
    actors' class, ``Ranker`` unless a benchmark brings its own pool and network).

    Each image's query is handed to ``consume(image_id, query)`` as soon as its shard comes back
    (in completion order), so the driver can merge a global budget without holding the pool.

    ``labeled``: the label store's ``LabelReader`` (sent as it is: each actor reads the labeled
    pixels of its own shard) or a dict image id -> (ys, xs) (each shard gets its part).

    Actors live for one call: between rounds the trial's CPUs (or GPUs) go to the Ray Train
    workers, and an idle actor would hold them. Their start-up is paid once per round and reported
    apart from the ranking itself (``RankingStats``).
    """
    import ray

    ranking_actor = ranking_actor_class(ranker)
    rk = cfg["ranking"]
    shards = shard_ids(list(range(pool_size)), rk["images_per_shard"])
    num_actors = min(rk["num_actors"], len(shards))

    def new_actor():
        # Outside the trial's placement group: the trial reserves only its own driver's share.
        return ranking_actor.options(
            num_cpus=rk["cpus_per_actor"], num_gpus=rk["gpus_per_actor"], scheduling_strategy="DEFAULT"
        ).remote(checkpoint_dir, cfg, max(1, int(rk["cpus_per_actor"])))

    actors = [new_actor() for _ in range(num_actors)]
    ranked, replaced = 0, 0
    points = cfg["selection"]["points_per_image"]
    queue = list(shards)
    # Each working actor has the shard it will be sent next set by (one shard of lookahead), so it
    # decodes that shard's images while it ranks the current one; a dead actor's lookahead goes back.
    lookahead: dict = {}  # actor -> shard
    # An actor gets work only once it has started: on a busy cluster some actors may not start
    # before the others finish, and a shard waiting on such an actor would wait forever.
    waiting_to_start = {actor.ready.remote(): actor for actor in actors}
    working: dict = {}  # result ref -> (actor, shard)
    called = time.perf_counter()
    first_ready = all_ready = None
    originals, started_originals, counted_before_all_ready = set(actors), set(), 0
    dead: set = set()
    peaks: list[dict] = []
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
                dead.add(actor)
                if replaced > rk["max_actor_restarts"]:
                    raise RuntimeError(
                        f"ranking actors died {replaced} times (ranking.max_actor_restarts="
                        f"{rk['max_actor_restarts']}); last: {err}"
                    ) from None
                if actor in lookahead:
                    queue.insert(0, lookahead.pop(actor))
                if shard is not None:
                    log.warning(
                        "ranking actor died on images %s-%s; re-ranking them on a new actor", shard[0], shard[-1]
                    )
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
            if queue or actor in lookahead:
                shard = lookahead.pop(actor) if actor in lookahead else queue.pop(0)
                following = queue.pop(0) if queue else None
                if following is not None:
                    lookahead[actor] = following
                ref = actor.rank.remote(
                    shard, _for_shard(labeled, shard), points, round_index, budget_pixels, max_share, following
                )
                working[ref] = (actor, shard)
        peaks = _peak_memories([a for a in actors if a not in dead])
    finally:
        for actor in actors:
            ray.kill(actor)
    finished = time.perf_counter()
    first_ready = finished if first_ready is None else first_ready
    all_ready = finished if all_ready is None else all_ready
    return RankingStats(
        images=ranked,
        actors=num_actors,
        startup_s=first_ready - called,
        ranking_s=finished - first_ready,
        actors_replaced=replaced,
        steady_images=max(0, ranked - counted_before_all_ready),
        steady_s=finished - all_ready,
        actor_peak_rss_bytes=max((p.get("rss_bytes", 0) for p in peaks), default=0),
        actor_peak_gpu_bytes=max((p.get("gpu_bytes", 0) for p in peaks), default=0),
    )


def _for_shard(labeled, ids: list[int]):
    """What one shard's call carries: the reader itself (a reference), or the shard's part of a dict."""
    if labeled is None or hasattr(labeled, "coordinates"):
        return labeled
    return {i: labeled[i] for i in ids if i in labeled}


def _peak_memories(actors: list) -> list[dict]:
    """Each live actor's peak memory, for the round's stats; a figure that cannot be had is left out."""
    import ray

    try:
        return ray.get([actor.peak_memory.remote() for actor in actors], timeout=30)
    except Exception as err:  # a statistic must never fail a round that bought its labels
        log.warning("ranking actors' peak memory unavailable: %s", err)
        return []
