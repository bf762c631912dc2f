"""The scale benchmark's own parts: its arguments, its generated pool, the actors' reuse of a repeated
scene's query, and its goal checks. The round it measures is the product's (tested elsewhere);
``python -m benchmarks.scale --quick`` runs the whole of it. And the click-counting benchmark on a tiny pool."""

import json

import numpy as np
import pytest

from benchmarks import click_counting, scale
from benchmarks.scale_scene import GeneratedPool
from orchestrator.labels.store import LabelStore
from orchestrator.round.ranking import Ranker
from pixel_selectors import ripu_point_window
from trainers.labels import InMemoryLabels


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--fractions", "1,4"], "error: --fractions must be integers >= 1, largest first, got '1,4'"),
        (["--fractions", "a"], "error: --fractions must be integers separated by commas, got 'a'"),
        (["--actors", "0"], "error: --actors must be >= 1"),
        (["--height", "8"], "error: --height and --width must be >= 16"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(argv, line, capsys):
    assert scale.main(argv) == 2
    assert capsys.readouterr().err.strip() == line


def test_a_generated_image_is_a_pure_function_of_its_scene_and_its_earlier_labels_lie_on_boundaries(tmp_path):
    pool = GeneratedPool(40, 64, 128, distinct_scenes=32)
    image, label = pool[33]
    assert np.array_equal(image.numpy(), pool[1][0].numpy()) and np.array_equal(label, pool.label(1))
    assert not np.array_equal(label, pool.label(2))
    store = LabelStore(tmp_path / "labels")
    store.append_round(1, "generated", scale.earlier_round(pool))
    ys, xs, classes = store.sparse_labels()[33]
    assert 0.02 < len(ys) / (64 * 128) < 0.3 and np.array_equal(classes, label[ys, xs].numpy())
    assert ripu_point_window(2048) == 65 and ripu_point_window(1024) == 33 and ripu_point_window(64) == 3


def test_a_repeated_scene_gets_exactly_the_query_a_fresh_ranking_gives():
    args = scale.parse_args(["--quick", "--height", "64", "--width", "128", "--pool", "64"])
    cfg = scale.pool_config(args, 64, 500, scale.Path("/tmp/unused"))
    ranker = scale.ScaleRanker("unused", cfg)
    # Image 40 shows scene 8, with two labeled pixels.
    labeled = InMemoryLabels({40: (np.array([3, 3]), np.array([5, 6]), np.array([0, 0]))})
    queries = dict(ranker.rank([0, 8, 32, 40], labeled, 0, budget_pixels=500))
    assert queries[32] is queries[0] and queries[40] is not queries[8]  # same scene, same labels: reused
    fresh = scale.ScaleRanker("unused", cfg)
    for image_id in (32, 40):  # the query the selector computes for the image itself, without reuse
        ((_, direct),) = Ranker.rank(fresh, [image_id], labeled, 0, budget_pixels=500)
        assert np.array_equal(direct.indices, queries[image_id].indices)
        assert np.array_equal(direct.scores, queries[image_id].scores)
    assert not {3 * 128 + 5, 3 * 128 + 6} & set(queries[40].indices.tolist())


def test_the_report_judges_each_goal():
    args = scale.parse_args(["--quick"])
    args.work_dir = ""
    row = {
        "pool_images": 8,
        "store_labeled_pixels": 1000,
        "store_bytes": 2**20,
        "driver_traced_peak_bytes": 100,
        "driver_peak_rss_bytes": 1000,
        "actor_peak_rss_bytes": 10,
        "train_job_bytes": 1800,
        "labels_in_job_bytes_before": 9000,
        "ranking_startup_s": 3.0,
        "ranking_s": 40.0,
        "merge_s": 0.1,
        "reveal_s": 0.5,
        "clicks_s": 2.0,
        "write_round_s": 0.25,
        "select_round_s": 1.0,
        "worker_label_read_s": 0.001,
        "budget_pixels": 500,
    }
    met = scale.report(
        args,
        [
            row,
            {
                **row,
                "pool_images": 128,
                "driver_traced_peak_bytes": 109,
                "store_labeled_pixels": 16000,
                "train_job_bytes": 1802,
            },
        ],
        None,
    )
    assert any("1.09x (goal: within 1.10x: met)" in line for line in met)
    assert any("independent of them: met" in line for line in met)
    assert any("counting clicks at 128 images: 2.00 s, 5.0% of the ranking's 40.0 s" in line for line in met)
    assert any("at most 10%: met" in line for line in met)
    assert "| 8 | 3.0 | 40.0 | 0.1 | 2.00 | 0.5 | 0.2 | 1.0 | 5.0% |" in met  # every part side by side
    missed = scale.report(
        args, [row, {**row, "driver_traced_peak_bytes": 150, "train_job_bytes": 9000, "clicks_s": 4.4}], None
    )
    assert any("1.50x (goal: within 1.10x: MISSED)" in line for line in missed)
    assert any("independent of them: MISSED" in line for line in missed)
    assert any("11.0% of the ranking's 40.0 s (goal: at most 10%: MISSED)" in line for line in missed)


def test_the_click_counting_benchmark_counts_the_same_bought_regions_both_ways(capsys, tmp_path):
    figures = tmp_path / "clicks.json"
    argv = [
        "--quick",
        "--pool",
        "6",
        "--height",
        "48",
        "--width",
        "96",
        "--budget-pixels",
        "600",
        "--json",
        str(figures),
    ]
    assert click_counting.main(argv) == 0
    out = capsys.readouterr().out
    assert "every image's clicks the same both ways: yes" in out and "| ratio |" in out
    result = json.loads(figures.read_text())
    assert result["same_clicks"] and result["bought_pixels"] == result["budget_pixels"] == 600
    assert result["bought_images"] == 6 and result["old_wall_s"] > 0 and result["new_wall_s"] > 0


def test_the_click_counting_benchmark_refuses_bad_arguments_in_one_line(capsys):
    assert click_counting.main(["--pool", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --pool must be >= 1"
    assert click_counting.main(["--quick", "--budget-pixels", str(10**9)]) == 2
    assert capsys.readouterr().err.strip() == "error: --budget-pixels must be at most the pool's 16777216 pixels"
