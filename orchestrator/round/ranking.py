"""Ranking the target pool on Ray actors.

Each actor loads the round's checkpoint once and regenerates (or reads) the target images itself
from their ids, and reads the already-labeled pixels of its own images from the label store
(``LabelReader``): the driver ships only image ids and a reference to the store, and gets back
compact queries (coordinates and scores), never probability maps. An actor with a GPU selects on
the GPU: the probabilities never leave it, only the queries do.

The pool is cut into fixed shards of consecutive ids (``ranking.images_per_shard``) whatever the
actor count, each shard is forwarded as one batch, and a rule is a pure function of one image's
outputs: so one actor or eight return identical queries.

This module imports Ray only where it starts actors: ``Ranker`` and ``rank_images`` are plain
PyTorch (the GPU check runs them on a machine without Ray). ``rank_pool`` runs a pass over the pool
with an ``ActorPool`` (start, replace a dead actor, kill), a ``ShardQueue`` (the shards left, one of
lookahead per actor) and a ``RankingClock`` (where the time went: ``RankingStats``).
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

from experiment_config.schema import ExperimentConfig
from orchestrator.cluster.storage import local_checkpoint
from pixel_selectors.apply import select_image
from pixel_selectors.base import PointQuery, RegionQuery, labeled_mask
from pixel_selectors.cost import counted
from pixel_selectors.rules import RULES, SELECTOR_NETWORK
from trainers.data import build_domains
from trainers.engine import load_models
from trainers.labels import TargetLabels, labeled_coordinates
from trainers.loader import load_images

log = logging.getLogger(__name__)


@torch.no_grad()
def rank_images(
    network: torch.nn.Module,
    images: torch.Tensor,
    image_ids: list[int],
    labeled: Mapping[int, tuple[np.ndarray, np.ndarray]],
    rule: str,
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
            rule,
            probs,
            num_points=num_points,
            budget_pixels=budget_pixels,
            labeled=mask,
            seed=seeds[n],
            params=params,
            region_spread=region_spread,
            max_share=max_share,
        )
        if isinstance(query, RegionQuery) and not budget_pixels:
            query = counted(query)  # no budget (SPL's whole mask): every region is bought whole, counted here
        out.append((image_id, query))
    return out


class Ranker:
    """Scores target images with a selection rule on the network it reads (S or G) of one checkpoint (plain PyTorch)."""

    def __init__(self, checkpoint_dir: str, cfg: ExperimentConfig, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.cfg = cfg
        domains = build_domains(cfg.data)
        self.pool = domains.target_pool
        self.device = torch.device("cuda" if cfg.ranking.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        with local_checkpoint(checkpoint_dir, cfg) as directory:  # a checkpoint on S3 is fetched to this node
            models, _ = load_models(directory, cfg, len(domains.classes))
        rule = RULES[cfg.selection.rule]
        self.rule_name = rule.name
        network = models.selector if rule.reads == SELECTOR_NETWORK else models.segmenter
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        self.params = rule.params(cfg.selection, cfg.data.width)
        self.region_spread = cfg.selection.region_spread
        self.seed = cfg.seed
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
        labeled: TargetLabels,
        num_points: int,
        round_index: int = 1,
        budget_pixels: int = 0,
        max_share: float | None = None,
        prefetch_ids: list[int] | None = None,
    ) -> list[tuple[int, PointQuery | RegionQuery]]:
        """Queries of each image. Point rules give ``num_points`` points, or with a global
        ``budget_pixels`` as many as the budget could use from one image; region rules give
        their best regions covering at most the budget (what the driver's merge can use), tiling
        rules at most ``max_share`` of the image's free pixels (``select_image``).
        ``labeled``: the pixels already labeled (the label store's reader: read here, for these images only).
        ``prefetch_ids``: the shard this actor will most likely be sent next; its images are decoded
        while this shard is ranked (the queries do not depend on it)."""
        coordinates = labeled_coordinates(labeled, image_ids)
        return self.rank_excluding(
            image_ids, coordinates, num_points, round_index, budget_pixels, max_share, prefetch_ids
        )

    def rank_excluding(
        self,
        image_ids: list[int],
        coordinates: Mapping[int, tuple[np.ndarray, np.ndarray]],
        num_points: int,
        round_index: int = 1,
        budget_pixels: int = 0,
        max_share: float | None = None,
        prefetch_ids: list[int] | None = None,
    ) -> list[tuple[int, PointQuery | RegionQuery]]:
        """``rank`` with the labeled pixels already read: image id -> (ys, xs) never to return."""
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
                self.rule_name,
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
    """The seed a rule gets for one image in one round: the same image gets the same draw
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


class ShardQueue:
    """The pool's shards not handed out yet, and each working actor's next shard: one shard of
    lookahead, so an actor decodes that shard's images while it ranks the current one."""

    def __init__(self, shards: list[list[int]]):
        self.waiting = list(shards)
        self.lookahead: dict = {}  # actor -> the shard it will be sent next

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def has_work_for(self, actor) -> bool:
        return bool(self.waiting) or actor in self.lookahead

    def take(self, actor) -> tuple[list[int], list[int] | None]:
        """(the shard to send ``actor`` now, the one it will most likely get next or None)."""
        shard = self.lookahead.pop(actor) if actor in self.lookahead else self.waiting.pop(0)
        following = self.waiting.pop(0) if self.waiting else None
        if following is not None:
            self.lookahead[actor] = following
        return shard, following

    def give_back(self, actor, shard: list[int] | None) -> None:
        """A dead actor's shards go back to the front: the one it was ranking first, then its lookahead."""
        if actor in self.lookahead:
            self.waiting.insert(0, self.lookahead.pop(actor))
        if shard is not None:
            self.waiting.insert(0, shard)


@dataclass(frozen=True)
class Answer:
    """What came back first: an actor's start (``shard`` None) or the queries of the shard it ranked."""

    ref: object
    actor: object
    shard: list[int] | None

    @property
    def start(self) -> bool:
        return self.shard is None


class ActorPool:
    """One round's ranking actors (Ray), outside the trial's placement group (the trial reserves only
    its own driver's share). An actor gets work only once it has started: on a busy cluster some
    actors may not start before the others finish, and a shard waiting on such an actor would wait
    forever. A dead actor is replaced, up to ``ranking.max_actor_restarts`` times in a round."""

    def __init__(self, actor_class, checkpoint_dir: str, cfg: ExperimentConfig):
        self.actor_class, self.checkpoint_dir, self.cfg = actor_class, checkpoint_dir, cfg
        self.actors: list = []
        self.originals: set = set()
        self.started_originals: set = set()
        self.dead: set = set()
        self.replaced = 0
        self.starting: dict = {}  # ready() ref -> actor
        self.working: dict = {}  # rank() ref -> (actor, shard)

    def _new(self):
        rk = self.cfg.ranking
        actor = self.actor_class.options(
            num_cpus=rk.cpus_per_actor, num_gpus=rk.gpus_per_actor, scheduling_strategy="DEFAULT"
        ).remote(self.checkpoint_dir, self.cfg, max(1, int(rk.cpus_per_actor)))
        self.actors.append(actor)
        self.starting[actor.ready.remote()] = actor
        return actor

    def start(self, count: int) -> None:
        self.originals = {self._new() for _ in range(count)}

    def busy(self) -> bool:
        return bool(self.working)

    def next_answer(self) -> Answer:
        """The first start or ranked shard to come back (waits for it)."""
        import ray

        done, _ = ray.wait(list(self.working) + list(self.starting), num_returns=1)
        ref = done[0]
        if ref in self.starting:
            return Answer(ref, self.starting.pop(ref), None)
        return Answer(ref, *self.working.pop(ref))

    def started(self, actor) -> bool:
        """Record that ``actor`` started; True once every original actor has (a replacement's start
        does not make the pool "all started")."""
        if actor in self.originals:
            self.started_originals.add(actor)
        return len(self.started_originals) == len(self.originals)

    def replace(self, answer: Answer, err: Exception) -> None:
        """The actor process died (while starting or mid-shard): a new actor takes its place. A
        constructor that always fails (bad checkpoint, bad data) uses up the restarts and then fails
        the round with its own error."""
        self.replaced += 1
        self.dead.add(answer.actor)
        if self.replaced > self.cfg.ranking.max_actor_restarts:
            raise RuntimeError(
                f"ranking actors died {self.replaced} times (ranking.max_actor_restarts="
                f"{self.cfg.ranking.max_actor_restarts}); last: {err}"
            ) from None
        if answer.shard is not None:
            log.warning(
                "ranking actor died on images %s-%s; re-ranking them on a new actor", answer.shard[0], answer.shard[-1]
            )
        self._new()

    def send(self, actor, shard: list[int], *args) -> None:
        self.working[actor.rank.remote(shard, *args)] = (actor, shard)

    def images_in_flight(self) -> int:
        return sum(len(shard) for _, shard in self.working.values())

    def live(self) -> list:
        return [actor for actor in self.actors if actor not in self.dead]

    def kill_all(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


@dataclass
class RankingClock:
    """Where one pass's wall time goes (``RankingStats``): start-up until the first actor is ready,
    ranking after; the steady rate counts what was handed out once every original actor had started."""

    called: float
    first_ready: float | None = None
    all_ready: float | None = None
    counted_before_all_ready: int = 0

    def answered(self) -> None:
        if self.first_ready is None:
            self.first_ready = time.perf_counter()

    def all_started(self, counted_before: int) -> None:
        if self.all_ready is None:
            self.all_ready, self.counted_before_all_ready = time.perf_counter(), counted_before

    def stats(self, ranked: int, actors: int, replaced: int, peaks: list[dict]) -> RankingStats:
        finished = time.perf_counter()
        first_ready = finished if self.first_ready is None else self.first_ready
        all_ready = finished if self.all_ready is None else self.all_ready
        return RankingStats(
            images=ranked,
            actors=actors,
            startup_s=first_ready - self.called,
            ranking_s=finished - first_ready,
            actors_replaced=replaced,
            steady_images=max(0, ranked - self.counted_before_all_ready),
            steady_s=finished - all_ready,
            actor_peak_rss_bytes=max((p.get("rss_bytes", 0) for p in peaks), default=0),
            actor_peak_gpu_bytes=max((p.get("gpu_bytes", 0) for p in peaks), default=0),
        )


def rank_pool(
    checkpoint_dir: str,
    cfg: ExperimentConfig,
    pool_size: int,
    labeled: TargetLabels,
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

    ``labeled``: the pixels already labeled, sent by reference (the label store's ``LabelReader``: each
    actor reads the labeled pixels of its own shard).

    Actors live for one call: between rounds the trial's CPUs (or GPUs) go to the Ray Train
    workers, and an idle actor would hold them. Their start-up is paid once per round and reported
    apart from the ranking itself (``RankingStats``).
    """
    import ray

    shards = ShardQueue(shard_ids(list(range(pool_size)), cfg.ranking.images_per_shard))
    num_actors = min(cfg.ranking.num_actors, len(shards.waiting))
    actors = ActorPool(ranking_actor_class(ranker), checkpoint_dir, cfg)
    clock = RankingClock(called=time.perf_counter())
    ranked, peaks = 0, []
    try:
        actors.start(num_actors)
        while shards or actors.busy():
            answer = actors.next_answer()
            try:
                results = ray.get(answer.ref)
            except ray.exceptions.RayActorError as err:
                # Its shard goes back to the queue (results do not depend on which actor ranks).
                actors.replace(answer, err)
                shards.give_back(answer.actor, answer.shard)
                continue
            clock.answered()
            if answer.start:
                if actors.started(answer.actor):
                    clock.all_started(ranked + actors.images_in_flight())
            else:
                for image_id, query in results:
                    consume(image_id, query)
                    ranked += 1
                if progress is not None:
                    elapsed = time.perf_counter() - clock.first_ready
                    progress(f"ranked {ranked}/{pool_size} target images ({ranked / max(elapsed, 1e-9):.1f} images/s)")
            if shards.has_work_for(answer.actor):
                shard, following = shards.take(answer.actor)
                points = cfg.selection.points_per_image
                actors.send(answer.actor, shard, labeled, points, round_index, budget_pixels, max_share, following)
        peaks = _peak_memories(actors.live())
    finally:
        actors.kill_all()
    return clock.stats(ranked, num_actors, actors.replaced, peaks)


def _peak_memories(actors: list) -> list[dict]:
    """Each live actor's peak memory, for the round's stats; a figure that cannot be had is left out."""
    import ray

    try:
        return ray.get([actor.peak_memory.remote() for actor in actors], timeout=30)
    except Exception as err:  # a statistic must never fail a round that bought its labels
        log.warning("ranking actors' peak memory unavailable: %s", err)
        return []
