"""Ranking on Ray actors: identical queries whatever the actor count, never a labeled pixel twice."""

import numpy as np
import pytest
import torch

from experiment_config import load_config, with_overrides
from orchestrator.round.ranking import Ranker, rank_pool, shard_ids
from trainers.checkpoint import save_checkpoint
from trainers.data.labelmaps import CLASS_SETS
from trainers.engine import build_adaptation_models, model_identity
from trainers.labels import NO_LABELS, InMemoryLabels


@pytest.fixture
def setup(tmp_path, data_cache):
    def cfg(**overrides):
        base = {
            "data.synthetic.target_train_images": 10,
            "data.cache_dir": str(data_cache),
            "ranking.images_per_shard": 3,
            "selection.points_per_image": 6,
        }
        return load_config(None, {**base, **overrides}, smoke=True)

    torch.manual_seed(0)
    config = cfg()
    num_classes = len(CLASS_SETS[config.data.class_set])  # the bundled domains' version decides it
    models = build_adaptation_models(config, num_classes)
    save_checkpoint(
        tmp_path / "ckpt",
        {
            "model": model_identity(config, num_classes),
            "modules": {"segmenter": models.segmenter.state_dict(), "selector": models.selector.state_dict()},
        },
    )
    return str(tmp_path / "ckpt"), cfg


def test_shards_do_not_depend_on_actor_count():
    assert shard_ids([4, 0, 3, 1, 2], 2) == [[0, 1], [2, 3], [4]]


@pytest.mark.ray
def test_one_and_two_actors_agree(setup, ray_local):
    ckpt, cfg = setup
    one, two = {}, {}
    stats_one = rank_pool(ckpt, cfg(**{"ranking.num_actors": 1}), 10, NO_LABELS, one.__setitem__)
    stats_two = rank_pool(ckpt, cfg(**{"ranking.num_actors": 2}), 10, NO_LABELS, two.__setitem__)
    for stats, actors in ((stats_one, 1), (stats_two, 2)):
        assert (stats.images, stats.actors, stats.actors_replaced) == (10, actors, 0)
        assert stats.startup_s > 0 and stats.ranking_s > 0 and 0 <= stats.steady_images <= 10
        assert stats.actor_peak_rss_bytes > 50 * 2**20 and stats.actor_peak_gpu_bytes == 0  # torch alone is more
    # With one actor, "every actor started" is the first actor ready: every image is ranked after it.
    assert stats_one.steady_images == 10 and stats_one.steady_images_per_s > 0
    one, two = sorted(one.items()), sorted(two.items())
    assert [i for i, _ in one] == list(range(10))
    for (i, a), (j, b) in zip(one, two):
        assert i == j and np.array_equal(a.ys, b.ys) and np.array_equal(a.xs, b.xs)
        assert len(a) == 6


def test_labeled_pixels_are_excluded(setup):
    ckpt, cfg = setup
    ranker = Ranker(ckpt, cfg())
    first = dict(ranker.rank([0, 1], NO_LABELS, 6))
    labeled = InMemoryLabels({0: (first[0].ys, first[0].xs, np.zeros(len(first[0].ys)))})
    second = dict(ranker.rank([0, 1], labeled, 6))
    taken = set(zip(first[0].ys.tolist(), first[0].xs.tolist()))
    assert not taken & set(zip(second[0].ys.tolist(), second[0].xs.tolist()))
    assert np.array_equal(first[1].ys, second[1].ys)  # other images are unaffected


def test_an_actor_reads_the_labeled_pixels_of_its_own_images_from_the_store(setup, tmp_path):
    from orchestrator.labels.oracle import Oracle
    from orchestrator.labels.store import LabelStore

    ckpt, cfg = setup
    ranker = Ranker(ckpt, cfg())
    first = dict(ranker.rank([0, 1, 2], NO_LABELS, 6))
    store = LabelStore(tmp_path / "labels")
    oracle = Oracle(ranker.pool)
    revealed = [oracle.reveal(i, first[i].ys, first[i].xs) for i in (0, 2)]
    store.append_round(1, "labor_ppl", revealed)
    from_store = dict(ranker.rank([0, 1, 2], store.reader(), 6, round_index=2))
    in_memory = InMemoryLabels({p.image_id: (p.ys, p.xs, p.labels) for p in revealed})
    from_memory = dict(ranker.rank([0, 1, 2], in_memory, 6, round_index=2))
    for i in (0, 1, 2):
        assert np.array_equal(from_store[i].ys, from_memory[i].ys)
        assert np.array_equal(from_store[i].xs, from_memory[i].xs)
    assert not set(zip(first[0].ys.tolist(), first[0].xs.tolist())) & set(
        zip(from_store[0].ys.tolist(), from_store[0].xs.tolist())
    )


@pytest.mark.ray
def test_a_killed_actor_is_replaced_and_its_shard_reranked(setup, ray_local):
    """Every live ranking actor is killed once the first shard is back: new actors take their place,
    the shards they held are ranked again, and every image reaches ``consume`` exactly once (a
    re-ranked shard delivered twice would buy its pixels twice), with the queries of a run without
    kills."""
    import os
    from collections import Counter

    import psutil

    ckpt, cfg = setup
    reference = {}
    rank_pool(ckpt, cfg(**{"ranking.num_actors": 1}), 10, NO_LABELS, reference.__setitem__)

    killed = {}
    delivered = Counter()  # consume() calls per image id: a dict of queries would hide a second one

    def consume_and_kill_once(image_id, query):
        delivered[image_id] += 1
        faulty.setdefault(image_id, query)
        if not killed:
            # Kill every live ranking actor process: the shards they hold must be ranked again.
            me = os.getpid()  # only actors of the Ray this test started (its raylet is our child)
            for process in psutil.process_iter(["cmdline"]):
                if "RankingActor" in " ".join(process.info["cmdline"] or []) and me in [
                    parent.pid for parent in process.parents()
                ]:
                    process.kill()
                    killed[process.pid] = True

    faulty = {}
    config = cfg(**{"ranking.num_actors": 2, "ranking.images_per_shard": 2})
    stats = rank_pool(ckpt, config, 10, NO_LABELS, consume_and_kill_once)
    assert killed
    # Every killed actor was noticed and replaced (each had a shard or its next shard waiting).
    assert stats.actors_replaced == len(killed) >= 1, (stats.actors_replaced, killed)
    assert delivered == Counter(range(10)), f"images delivered more than once: {delivered}"
    assert stats.images == 10
    assert sorted(faulty) == sorted(reference) == list(range(10))
    for image_id, query in reference.items():
        assert np.array_equal(query.ys, faulty[image_id].ys) and np.array_equal(query.xs, faulty[image_id].xs)


def test_share_spread_scores_squares_by_their_share_of_the_images_free_pixels(setup):
    from orchestrator.round.ranking import image_seed
    from pixel_selectors import random_regions
    from pixel_selectors.budget import share_of_candidates, share_scores

    ckpt, cfg = setup
    config = cfg(
        **{
            "selection.rule": "random_regions",
            "selection.budget_fraction": 0.01,
            "selection.region_spread": "score",
        }
    )
    height, width = config.data.height, config.data.width
    by_score = dict(Ranker(ckpt, config).rank([0, 1, 2], NO_LABELS, 0, budget_pixels=40))
    shared = Ranker(ckpt, with_overrides(config, {"selection.region_spread": "share"}))
    by_share = dict(shared.rank([0, 1, 2], NO_LABELS, 0, budget_pixels=40))
    for image_id in (0, 1, 2):
        # Squares tile the image: the share is of its free pixels (here all of them), which is known
        # before the greedy pass ends, not of all the squares the pass would take.
        probs = [torch.zeros(9, height, width)]
        squares = random_regions(probs, seed=image_seed(config.seed, 1, image_id), k=config.selection.region_size)
        head = squares.head(40)
        assert squares.num_pixels > head.num_pixels  # the actor's pass stopped at what the budget can use
        assert np.array_equal(by_share[image_id].indices, head.indices)
        assert np.array_equal(by_share[image_id].scores, share_scores(head.sizes.astype(float), height * width))
        assert not np.array_equal(by_share[image_id].scores, share_of_candidates(squares).head(40).scores)
        assert np.array_equal(by_score[image_id].indices, head.indices)  # the same squares first
        assert by_share[image_id].scores.max() < 0 <= by_score[image_id].scores.min()  # shares, not draws


def test_the_next_shard_is_decoded_while_this_one_is_ranked(setup):
    ckpt, cfg = setup
    plain = Ranker(ckpt, cfg())
    reference = {
        **dict(plain.rank([0, 1], NO_LABELS, 6)),
        **dict(plain.rank([2, 3], NO_LABELS, 6)),
        **dict(plain.rank([3], NO_LABELS, 6)),
    }

    class CountingPool:
        def __init__(self, inner):
            self.inner, self.read = inner, []

        def __getitem__(self, i):
            self.read.append(i)
            return self.inner[i]

    ranker = Ranker(ckpt, cfg())
    ranker.pool = CountingPool(ranker.pool)
    got = dict(ranker.rank([0, 1], NO_LABELS, 6, prefetch_ids=[2, 3]))
    ranker.prefetched[1].result()  # the next shard is decoded in the background
    assert sorted(ranker.pool.read) == [0, 1, 2, 3]
    got.update(ranker.rank([2, 3], NO_LABELS, 6, prefetch_ids=[1]))
    ranker.prefetched[1].result()
    assert sorted(ranker.pool.read) == [0, 1, 1, 2, 3]
    assert ranker.prefetch_hits == 1  # 2 and 3 came from the prefetch, not decoded again
    # A wrong guess (the driver sent another shard: an actor died) is dropped, and the shard decoded.
    wrong = dict(ranker.rank([3], NO_LABELS, 6))
    assert ranker.prefetch_hits == 1 and ranker.prefetched is None
    for image_id, query in [*got.items(), *wrong.items()]:
        assert np.array_equal(query.ys, reference[image_id].ys) and np.array_equal(query.xs, reference[image_id].xs)
