"""LabOR PPL with its points where the paper puts them: one point per (predicted class, 8-connected
piece of the inconsistency mask M), the pixel nearest that piece's prototype; the whole-mask mode and
random points at its count; the class-aware pieces on both of their paths."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixel_selectors.labor as labor
from experiment_config import ConfigError, load_config
from pixel_selectors import (
    PPL_RULES,
    RULES,
    SEGMENTER,
    SELECTOR_NETWORK,
    inconsistency_mask,
    labor_ppl,
    ppl_piece_count,
    select_image,
)
from pixel_selectors.pieces import class_pieces, pieces_by_propagation, pieces_by_scipy

AGREE = ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])  # both heads say class 0: not in M


def maps_from(pixels, height, width):
    """Two (3, H, W) head maps from a {flat index: (p1, p2)} dict; other pixels agree (class 0)."""
    p1 = torch.tensor(AGREE[0]).repeat(height * width, 1)
    p2 = p1.clone()
    for index, (a, b) in pixels.items():
        p1[index], p2[index] = torch.tensor(a), torch.tensor(b)
    return p1.T.reshape(3, height, width).contiguous(), p2.T.reshape(3, height, width).contiguous()


def disagree(a):
    """Heads that disagree (class 0 against class 1) with the mean probability [a, 1 - a, 0], a in (.5, .75)."""
    return [a + 0.25, 0.75 - a, 0.0], [a - 0.25, 1.25 - a, 0.0]


def flat(query, width):
    return (query.ys.astype(int) * width + query.xs.astype(int)).tolist()


# --- the point of a piece: nearest its prototype -----------------------------------------------


def test_the_point_is_the_pixel_nearest_the_prototype_even_at_a_higher_index():
    """One piece of four pixels in a row (class 0 in the mean, M everywhere). Mean first components
    .60, .525, .55, .56: the prototype is .55875, so the nearest pixel is the last one (index 3) and
    the lowest index (0) is the farthest. A rule that ignored the distance would pick 0 first."""
    pixels = {i: disagree(a) for i, a in enumerate((0.60, 0.525, 0.55, 0.56))}
    maps = maps_from(pixels, 1, 4)
    assert inconsistency_mask(*maps).all()
    for rule in PPL_RULES:  # one class, one piece: both rules agree here, and both must use the distance
        assert flat(labor_ppl(maps, 1, rule=rule), 4) == [3], rule
        assert flat(labor_ppl(maps, 4, rule=rule), 4) == [3, 2, 1, 0], rule  # then by distance: .00875, .03375, .04125


def test_points_spread_over_the_pieces_where_nearest_k_piles_them_on_one_spot():
    """Three blobs of M predicted as class 0 in a 5 x 12 image, and a blob of class 1 touching the
    first (a separate piece: another class). The per-piece rule puts one point in each piece; the
    nearest_k rule puts all class-0 points near the one class prototype, in one blob."""
    width = 12
    blobs = {
        "a": [(1, 1), (1, 2), (2, 1), (2, 2)],  # class 0, mean first component .6 each
        "b": [(1, 6), (1, 7), (2, 6)],  # class 0, .7
        "c": [(3, 10), (4, 10)],  # class 0, .66
        "d": [(3, 1), (3, 2)],  # class 1 (touches a), mean [.275, .45, .275]
    }
    means = {"a": 0.6, "b": 0.7, "c": 0.66}
    pixels = {}
    for name, cells in blobs.items():
        for y, x in cells:
            pixels[y * width + x] = disagree(means[name]) if name in means else ([0.05, 0.6, 0.35], [0.5, 0.3, 0.2])
    maps = maps_from(pixels, 5, width)
    indices, offsets = class_pieces(inconsistency_mask(*maps), labor.predicted_class((maps[0] + maps[1]) / 2))
    assert len(offsets) - 1 == 4  # a and d touch but differ in class
    piece_of = {int(i): p for p in range(4) for i in indices[offsets[p] : offsets[p + 1]]}
    spread = labor_ppl(maps, 4)
    assert sorted(piece_of[i] for i in flat(spread, width)) == [0, 1, 2, 3]
    # nearest_k: 2 points per class; class 0's prototype (.647) is nearest blob c (.66): both land there.
    blob_of = {y * width + x: name for name, cells in blobs.items() for y, x in cells}
    assert [blob_of[i] for i in flat(labor_ppl(maps, 4, rule="nearest_k"), width)] == ["c", "c", "d", "d"]


def test_no_piece_gets_a_second_point_while_a_piece_has_none():
    # Pieces (raster order of their first pixel): sizes 1, 3, 2 in a 3 x 9 image.
    width = 9
    cells = {0: [(0, 0)], 1: [(0, 4), (0, 5), (1, 5)], 2: [(2, 8), (1, 8)]}
    pixels = {y * width + x: disagree(0.6 + 0.01 * n) for p, cs in cells.items() for n, (y, x) in enumerate(cs)}
    maps = maps_from(pixels, 3, width)
    piece_of = {y * width + x: p for p, cs in cells.items() for y, x in cs}
    sizes = np.array([1, 3, 2])
    for budget in range(1, 7):
        counts = np.bincount([piece_of[i] for i in flat(labor_ppl(maps, budget), width)], minlength=3)
        # A piece with pixels left never has two points fewer than another piece.
        assert all(counts.max() - counts[p] <= 1 for p in range(3) if counts[p] < sizes[p]), (budget, counts)
    assert [piece_of[i] for i in flat(labor_ppl(maps, 6), width)] == [1, 2, 0, 1, 2, 1]  # largest first, each round


def test_a_cap_below_the_piece_count_takes_the_largest_pieces_first():
    """Four pieces of class 0, sizes 1, 5, 3, 5 in raster order: a cap of 2 takes the two of size 5
    (the earlier in raster order first), a cap of 3 adds the size-3 piece; the single pixel comes last."""
    width = 16
    cells = {
        "one": [(0, 0)],
        "five_a": [(0, 3), (0, 4), (0, 5), (1, 3), (1, 4)],
        "three": [(0, 8), (1, 8), (2, 8)],
        "five_b": [(3, 11), (3, 12), (3, 13), (3, 14), (2, 12)],
    }
    pixels = {}
    for cs in cells.values():
        for n, (y, x) in enumerate(cs):
            pixels[y * width + x] = disagree(0.6 + 0.02 * n)
    maps = maps_from(pixels, 4, width)
    piece_of = {y * width + x: name for name, cs in cells.items() for y, x in cs}
    assert [piece_of[i] for i in flat(labor_ppl(maps, 2), width)] == ["five_a", "five_b"]
    assert [piece_of[i] for i in flat(labor_ppl(maps, 3), width)] == ["five_a", "five_b", "three"]
    assert [piece_of[i] for i in flat(labor_ppl(maps, 4), width)] == ["five_a", "five_b", "three", "one"]
    query = labor_ppl(maps, 5)
    assert [piece_of[i] for i in flat(query, width)] == ["five_a", "five_b", "three", "one", "five_a"]
    assert (np.diff(query.scores) <= 0).all() and query.scores[3] > query.scores[4]  # first points outrank seconds


def test_the_whole_mask_gives_one_point_per_piece():
    generator = torch.Generator().manual_seed(4)
    low = torch.randn(2, 5, 6, 10, generator=generator) * 3
    logits = torch.nn.functional.interpolate(low, size=(24, 40), mode="bilinear", align_corners=False)
    maps = (logits[0].softmax(0), (logits[0] + 0.8 * logits[1]).softmax(0))
    labeled = torch.zeros(24, 40, dtype=torch.bool)
    labeled[5:9, 10:30] = True
    mask = inconsistency_mask(*maps) & ~labeled
    indices, offsets = class_pieces(mask, labor.predicted_class((maps[0] + maps[1]) / 2))
    pieces = len(offsets) - 1
    assert pieces > 5
    query = labor_ppl(maps, None, labeled=labeled)
    assert len(query) == pieces == ppl_piece_count(maps, labeled) and query.shortfall == 0
    piece_of = torch.full((24 * 40,), -1, dtype=torch.int64)
    for p in range(pieces):
        piece_of[indices[offsets[p] : offsets[p + 1]]] = p
    assert sorted(piece_of[flat(query, 40)].tolist()) == list(range(pieces))  # each piece once
    # Through select_image: PPL's whole mask, and random points at the same count.
    whole = select_image("labor_ppl", maps, num_points=3, labeled=labeled, params={"ppl_whole_mask": True})
    rival = select_image("random", maps, num_points=3, labeled=labeled, seed=9, params={"ppl_whole_mask": True})
    assert len(whole) == len(rival) == pieces and flat(whole, 40) == flat(query, 40)
    assert not labeled.reshape(-1)[flat(rival, 40)].any()


def test_labeled_pixels_are_never_chosen_and_cut_pieces():
    """One 7-pixel piece whose nearest pixel (index 4, .56 against the prototype .5586) is labeled: it
    is skipped, and the label cuts the piece in two, {0..3} (prototype .5625: pixel 2) and {5, 6}
    (prototype .55: a tie, pixel 5), the larger first."""
    pixels = {i: disagree(a) for i, a in enumerate((0.60, 0.53, 0.57, 0.55, 0.56, 0.52, 0.58))}
    maps = maps_from(pixels, 1, 7)
    assert flat(labor_ppl(maps, 1), 7) == [4]
    labeled = torch.zeros(1, 7, dtype=torch.bool)
    labeled[0, 4] = True
    assert flat(labor_ppl(maps, 2, labeled=labeled), 7) == [2, 5]
    assert 4 not in flat(labor_ppl(maps, 7, labeled=labeled), 7)  # not even to spend a budget larger than M
    assert ppl_piece_count(maps, labeled) == 2 and ppl_piece_count(maps) == 1


@settings(max_examples=60, deadline=None)
@given(
    classes=st.integers(1, 5),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    points=st.integers(0, 60),
    seed=st.integers(0, 10_000),
)
def test_per_piece_points_on_any_map(classes, height, width, points, seed):
    """Exact budget, no repeats, no labeled pixel, and the round robin: while M has pixels left, the
    number of points per piece differs by at most one among the pieces not yet exhausted."""
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(classes, height, width, generator=generator).mul(2).softmax(0) for _ in range(2)]
    labeled = torch.rand(height, width, generator=generator) < 0.2
    query = labor_ppl(maps, points, labeled=labeled)
    free = int((~labeled).sum())
    assert len(query) == min(points, free) and query.shortfall == points - len(query)
    picked = flat(query, width)
    assert len(set(picked)) == len(picked) and not labeled.reshape(-1)[picked].any()
    mask = inconsistency_mask(*maps) & ~labeled
    indices, offsets = class_pieces(mask, labor.predicted_class((maps[0] + maps[1]) / 2))
    sizes = (offsets[1:] - offsets[:-1]).numpy()
    piece_of = np.full(height * width, -1)
    for p in range(len(sizes)):
        piece_of[indices[offsets[p] : offsets[p + 1]].numpy()] = p
    in_mask = [i for i in picked if piece_of[i] >= 0]
    assert in_mask == picked[: len(in_mask)]  # points of M come before any top-up
    counts = np.bincount(piece_of[in_mask], minlength=len(sizes))
    open_pieces = counts < sizes
    if open_pieces.any():
        assert counts.max() - counts[open_pieces].min() <= 1


def test_selection_is_deterministic_and_the_same_on_the_propagation_path(monkeypatch):
    """The GPU's path (label propagation) gives the same points as the CPU's (scipy), run here on the
    CPU; a repeat gives the same points."""
    generator = torch.Generator().manual_seed(11)
    low = torch.randn(2, 7, 12, 20, generator=generator) * 3
    logits = torch.nn.functional.interpolate(low, size=(48, 80), mode="bilinear", align_corners=False)
    maps = (logits[0].softmax(0), (logits[0] + 0.6 * logits[1]).softmax(0))
    labeled = torch.rand(48, 80, generator=generator) < 0.05
    expected = [labor_ppl(maps, n, labeled=labeled) for n in (7, 40, None)]
    again = [labor_ppl(maps, n, labeled=labeled) for n in (7, 40, None)]
    assert [flat(q, 80) for q in expected] == [flat(q, 80) for q in again]
    monkeypatch.setattr(labor, "class_pieces", pieces_by_propagation)
    on_propagation = [labor_ppl(maps, n, labeled=labeled) for n in (7, 40, None)]
    for a, b in zip(expected, on_propagation):
        assert flat(a, 80) == flat(b, 80) and np.array_equal(a.scores, b.scores)


# --- the class-aware pieces ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    density=st.floats(0, 1),
    classes=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_propagation_finds_the_pieces_scipy_finds(height, width, density, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(height, width, generator=generator) < density
    labels = torch.randint(0, classes, (height, width), generator=generator)
    indices, offsets = pieces_by_scipy(mask.numpy(), labels.numpy())
    got_indices, got_offsets = pieces_by_propagation(mask, labels)
    assert got_indices.tolist() == indices.tolist() and got_offsets.tolist() == offsets.tolist()


def test_pieces_follow_a_long_snake_and_split_at_a_class_change():
    mask = torch.zeros(9, 40, dtype=torch.bool)
    mask[::2] = True  # rows 0, 2, 4, 6, 8 joined at alternate ends: one piece winding through the image
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    labels = torch.zeros(9, 40, dtype=torch.int64)
    assert pieces_by_scipy(mask.numpy(), labels.numpy())[1].tolist() == [0, int(mask.sum())]
    assert pieces_by_propagation(mask, labels)[1].tolist() == [0, int(mask.sum())]
    labels[4:, :] = 1  # the snake changes class halfway: two pieces, numbered by first pixel
    a = pieces_by_scipy(mask.numpy(), labels.numpy())
    b = pieces_by_propagation(mask, labels)
    assert a[1].tolist() == b[1].tolist() and len(a[1]) == 3 and a[0].tolist() == b[0].tolist()
    assert a[0][0] == 0 and a[0][a[1][1]] == 4 * 40  # piece 0 starts at pixel 0, piece 1 at row 4


def test_pieces_of_an_empty_mask():
    for indices, offsets in (
        pieces_by_scipy(np.zeros((3, 4), bool), np.zeros((3, 4), np.int64)),
        pieces_by_propagation(torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.int64)),
    ):
        assert len(indices) == 0 and list(offsets) == [0]


# --- configuration --------------------------------------------------------------------------


def test_the_config_passes_the_ppl_rule_and_the_whole_mask_count_to_the_rules():
    cfg = load_config(None, {})
    assert (cfg.selection.ppl_rule, cfg.selection.ppl_mode) == ("per_piece", "budget")
    assert PPL_RULES == ("per_piece", "nearest_k")
    ppl, random = RULES["labor_ppl"], RULES["random"]
    selection = load_config(None, {"selection.ppl_rule": "nearest_k"}).selection
    assert ppl.params(selection, 128) == {"rule": "nearest_k"}
    assert random.params(selection, 128) == {} and random.network(selection) == SEGMENTER
    whole = load_config(None, {"selection.rule": "random", "selection.ppl_mode": "whole_mask"}).selection
    assert random.params(whole, 128) == {"ppl_whole_mask": True}
    assert random.network(whole) == SELECTOR_NETWORK  # the pieces are counted in S's mask
    assert ppl.params(whole, 128) == {"rule": "per_piece", "ppl_whole_mask": True}
    assert not RULES["entropy"].whole_mask(whole) and RULES["entropy"].network(whole) == SEGMENTER


@pytest.mark.parametrize(
    "pairs, message",
    [
        ({"selection.ppl_rule": "nearest"}, "config key 'selection.ppl_rule': unknown ppl_rule 'nearest'"),
        (
            {"selection.rule": "entropy", "selection.ppl_mode": "whole_mask"},
            "config key 'selection.ppl_mode': 'whole_mask' is LabOR PPL's count",
        ),
        (
            {"selection.ppl_mode": "whole_mask", "selection.budget_fraction": 0.01},
            "config key 'selection.budget_fraction': must be 0 with selection.ppl_mode=whole_mask",
        ),
        ({"selection.ppl_mode": "all"}, "config key 'selection.ppl_mode': unknown ppl_mode 'all'"),
    ],
)
def test_bad_ppl_settings_are_refused_with_one_line(pairs, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, pairs)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- the whole mask through the ranking and the round's selection ------------------------------


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A smoke-sized config and a source checkpoint trained for a few steps (the two heads of its selector network S
    disagree on part of every image)."""
    from trainers.checkpoint import save_checkpoint
    from trainers.engine import run_job
    from trainers.job import TrainJob

    root = tmp_path_factory.mktemp("ppl")
    cfg = load_config(
        None,
        {
            "data.cache_dir": str(root / "data"),
            "output_dir": str(root / "out"),
            "source.steps": 3,
            "model.width": 4,
            "data.synthetic.source_images": 8,
        },
        smoke=True,
    )
    save_checkpoint(root / "source", run_job(TrainJob(mode="source", config=cfg)).state)
    return cfg, str(root / "source")


def test_random_points_buy_ppls_whole_mask_count_in_every_image(tiny_source, monkeypatch, tmp_path):
    """Same checkpoint, same images: random points at PPL's whole-mask count get exactly as many points
    per image as LabOR PPL gives (one per piece of S's mask), and the round's selection buys them all."""
    from experiment_config import with_overrides
    from orchestrator.labels.oracle import Oracle
    from orchestrator.labels.store import LabelStore
    from orchestrator.round import selection
    from orchestrator.round.ranking import Ranker, RankingStats
    from trainers.labels import NO_LABELS

    cfg, checkpoint = tiny_source
    ppl = with_overrides(cfg, {"selection.ppl_mode": "whole_mask"})
    rival = with_overrides(cfg, {"selection.rule": "random", "selection.ppl_mode": "whole_mask"})
    ids = list(range(cfg.data.synthetic.target_train_images))
    ppl_ranker = Ranker(checkpoint, ppl)
    ppl_queries = dict(ppl_ranker.rank(ids, NO_LABELS, cfg.selection.points_per_image))
    rival_queries = dict(Ranker(checkpoint, rival).rank(ids, NO_LABELS, cfg.selection.points_per_image))
    counts = {}
    with torch.no_grad():
        for i in ids:
            heads = [h[0].softmax(0) for h in ppl_ranker.network(ppl_ranker.pool[i][0][None])]
            counts[i] = ppl_piece_count(heads)
    assert {i: len(q) for i, q in ppl_queries.items()} == counts == {i: len(q) for i, q in rival_queries.items()}
    assert len(set(counts.values())) > 1  # the count is each image's own, not the configured points_per_image
    assert any(flat(ppl_queries[i], 64) != flat(rival_queries[i], 64) for i in ids)

    def rank_pool(checkpoint_dir, cfg, pool_size, labeled, consume, round_index=1, budget_pixels=0, **_):
        for image_id, query in Ranker(checkpoint_dir, cfg).rank(list(range(pool_size)), labeled, 0, round_index):
            consume(image_id, query)
        return RankingStats(images=pool_size, actors=1, startup_s=0.0, ranking_s=1.0, actors_replaced=0)

    monkeypatch.setattr(selection, "rank_pool", rank_pool)
    for name, trial in (("ppl", ppl), ("random", rival)):
        store = LabelStore(tmp_path / name)
        labels, shortfall = selection.select_round(
            checkpoint, trial, len(ids), store, Oracle(ppl_ranker.pool), 1, 0, progress=lambda line: None
        )
        assert shortfall == 0 and {item.image_id: len(item.ys) for item in labels if len(item.ys)} == {
            i: n for i, n in counts.items() if n
        }, name
