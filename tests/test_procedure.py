"""The methods as their papers run them (issue 16): LabOR's warm-up before round 1, MCD's num_k, IAST's
pseudo labels, Tzeng's source-set soft labels, RIPU's windows, SPL's whole mask, equal steps per trial.

The trial path runs in-process here (Ray Train and the ranking actors replaced by the same engine and
``Ranker`` in this process), so the orchestration is tested in seconds; the Ray path is the one the
other sweep tests run.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import orchestrator.round.loop as experiment
from experiment_config import ConfigError, load_config
from experiment_config.schema import SelectionConfig
from orchestrator.labels.store import LabelStore
from orchestrator.round import selection, start_models
from orchestrator.round.ranking import Ranker, RankingStats
from pixel_selectors import RULES, inconsistency_mask, region_impurity, ripu_point_window
from pixel_selectors.cost import clicks_for_region
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.engine import NO_AUGMENTATION, round_steps, run_job
from trainers.job import TrainJob
from trainers.labels import NO_LABELS
from trainers.losses import IASTPseudoLabels, SoftLabels, iast_threshold_update
from trainers.models import SegmentationNet
from trainers.step import AdaptationModels, LossWeights, selector_backbone_update
from trainers.train_loop import TrainingResult

# --- IAST's pseudo-label rule --------------------------------------------------------------------


def test_iast_thresholds_follow_the_papers_percentile_rule():
    # Class 0: confidences .5 .6 .7 .8 plus theta .9; q = 1 - .2 * .9^8 = .91391, so the percentile
    # lies between the two largest (.8 and .9) at 0.5564 of the way: psi = .85564;
    # theta <- .9 * .9 + .1 * psi. Class 1 is absent: psi = its own theta, unchanged.
    conf = torch.tensor([0.5, 0.6, 0.7, 0.8])
    pred = torch.zeros(4, dtype=torch.int64)
    theta = iast_threshold_update(torch.tensor([0.9, 0.6]), conf, pred, alpha=0.2, gamma=8.0, momentum=0.9)
    q = 1 - 0.2 * 0.9**8
    psi = 0.8 + (0.9 - 0.8) * (q * 4 - 3)
    assert theta.tolist() == pytest.approx([0.9 * 0.9 + 0.1 * psi, 0.6])
    assert iast_threshold_update(
        torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0]), momentum=0.0
    ).item() == pytest.approx(0.999)  # a threshold reaching 1 is set to .999


def test_iast_pseudo_labels_keep_pixels_above_their_class_threshold_and_carry_it():
    labeler = IASTPseudoLabels(2, alpha=0.5, gamma=0.0, momentum=0.0, initial=0.9)
    probs = torch.tensor([[0.95, 0.9, 0.6, 0.2], [0.05, 0.1, 0.4, 0.8]]).reshape(1, 2, 1, 4)
    # gamma 0: each class keeps its top half. Class 0 (.95 .9 .6 and theta .9): median .9; class 1
    # (.8 and theta .9): median .85, so its only pixel (.8) falls below and stays unlabeled.
    assert labeler(probs).tolist() == [[[0, 0, 255, 255]]]
    assert labeler.thresholds.tolist() == pytest.approx([0.9, 0.85])
    assert "thresholds" in labeler.state_dict()  # carried in checkpoints from batch to batch


# --- MCD's num_k ------------------------------------------------------------------------------


def test_num_k_runs_that_many_backbone_updates():
    torch.manual_seed(0)
    models = AdaptationModels(segmenter=SegmentationNet(3, width=4), selector=SegmentationNet(3, width=4, num_heads=2))
    optimizer = torch.optim.SGD(models.selector.backbone_parameters(), lr=0.1)
    steps = []
    optimizer.step = lambda *args, **kw: steps.append(1)  # count the updates of F
    opts = type("Opt", (), {"selector_backbone": optimizer})()
    heads_before = [p.clone() for p in models.selector.head_parameters()]
    losses = selector_backbone_update(models, opts, (torch.randn(2, 3, 16, 16),), LossWeights(discrepancy=1.0, num_k=3))
    assert len(steps) == 3 and losses["selector_discrepancy_backbone"] > 0
    assert all(torch.equal(a, b) for a, b in zip(heads_before, models.selector.head_parameters()))


# --- RIPU's windows ---------------------------------------------------------------------------


def test_ripu_point_window_scales_with_the_image_width():
    assert [ripu_point_window(w) for w in (2048, 1024, 1280, 128, 64, 16)] == [65, 33, 41, 5, 3, 3]
    selection = SelectionConfig(region_size=3, point_window=0)
    assert RULES["region_impurity"].params(selection, 2048) == {"k": 65}
    assert RULES["region_impurity_regions"].params(selection, 2048) == {"k": 3}  # RIPU's regions: 3x3
    assert RULES["region_impurity"].params(dataclasses.replace(selection, point_window=7), 2048) == {"k": 7}
    assert RULES["labor_ppl"].params(selection, 2048) == {}


def test_ripu_points_keep_windows_of_earlier_rounds_blocked():
    probs = torch.full((2, 9, 9), 0.5)
    probs[:, 4, 4] = torch.tensor([0.1, 0.9])  # the one other prediction: impurity around (4, 4)
    first = region_impurity((probs,), 1, k=3)
    assert (first.ys[0], first.xs[0]) != (4, 4) and abs(first.ys[0] - 4) <= 1 and abs(first.xs[0] - 4) <= 1
    labeled = torch.zeros(9, 9, dtype=torch.bool)
    labeled[first.ys[0], first.xs[0]] = True
    later = region_impurity((probs,), 20, labeled=labeled, k=3)
    near = (np.abs(later.ys - first.ys[0]) <= 1) & (np.abs(later.xs - first.xs[0]) <= 1)
    # A regular pick never lies in the blocked window; only the top-up (scores < -1) may.
    assert not near[later.scores >= -1].any() and (later.scores[near] < -1).all()
    assert len(later) == 20 and later.shortfall == 0


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs, message",
    [
        ({"warmup.adversarial_weight": -1.0}, "config key 'warmup.adversarial_weight': must be >= 0"),
        ({"selection.spl_mode": "whole_mask"}, "'whole_mask' is labor_spl's mode; rule 'labor_ppl'"),
        (
            {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask", "selection.budget_fraction": 0.02},
            "config key 'selection.budget_fraction': must be 0 with selection.spl_mode=whole_mask",
        ),
        ({"selection.point_window": 4}, "config key 'selection.point_window': must be odd"),
        ({"adapt.total_steps": 2, "selection.rounds": 3}, "2 steps cannot be split over 3 rounds"),
        ({"adapt.pseudo_label_rule": "cbst"}, "unknown pseudo_label_rule 'cbst'"),
    ],
)
def test_procedure_keys_refuse_bad_values_naming_the_key(pairs, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, pairs)
    assert message in str(err.value)


def test_round_steps_split_the_total_over_the_rounds():
    cfg = load_config(None, {"adapt.total_steps": 10, "selection.rounds": 3})
    assert [round_steps(cfg, r) for r in (1, 2, 3)] == [3, 3, 4]
    cfg = load_config(None, {"adapt.steps": 7, "selection.rounds": 2})
    assert [round_steps(cfg, r) for r in (1, 2)] == [7, 7]


# --- the trial path, in-process -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config (smoke sizes, a few steps) and its source checkpoint."""
    root = tmp_path_factory.mktemp("procedure")
    cfg = load_config(
        None,
        {
            "data.cache_dir": str(root / "data"),
            "output_dir": str(root / "out"),
            "source.steps": 2,
            "adapt.steps": 1,
            "warmup.steps": 2,
            "model.width": 4,
            "data.synthetic.source_images": 8,
            "adapt.num_k": 2,
        },
        smoke=True,
    )
    result = run_job(TrainJob(mode="source", config=cfg))
    save_checkpoint(root / "source", result.state)
    return cfg, str(root / "source"), result.metrics


@pytest.fixture
def in_process(monkeypatch):
    """Ray Train and the ranking actors replaced by the same code in this process; records the jobs."""
    jobs = []

    def run_training(job, storage_path, name, filesystem=None):
        jobs.append(job)
        started = time.perf_counter()
        result = run_job(job)
        folder = Path(storage_path) / f"{name}-{len(jobs)}"
        save_checkpoint(folder, result.state)
        return TrainingResult(result.metrics, str(folder), time.perf_counter() - started)

    def rank_pool(
        checkpoint_dir,
        cfg,
        pool_size,
        labeled,
        consume,
        round_index=1,
        budget_pixels=0,
        progress=None,
        ranker=None,
        max_share=None,
    ):
        ranker = (ranker or Ranker)(checkpoint_dir, cfg)
        for image_id, query in ranker.rank(
            list(range(pool_size)),
            labeled,
            cfg.selection.points_per_image,
            round_index,
            budget_pixels,
            max_share=max_share,
        ):
            consume(image_id, query)
        return RankingStats(images=pool_size, actors=1, startup_s=0.0, ranking_s=1.0, actors_replaced=0)

    for module in (experiment, start_models):
        monkeypatch.setattr(module, "run_training", run_training)
    monkeypatch.setattr(selection, "rank_pool", rank_pool)
    return jobs


def run_trial(cfg, tiny, tmp_path, name):
    _, source, source_metrics = tiny
    reports = []
    experiment.run_experiment(
        cfg,
        Path(cfg.output_dir) / name,
        source,
        source_metrics,
        report=lambda metrics, state: reports.append((metrics, state)),
        progress=lambda m: None,
    )
    return reports


def test_warmup_trains_the_selector_on_target_pixels_buys_nothing_and_round_1_ranks_with_it(tiny, in_process, tmp_path):
    cfg, source, _ = tiny
    cfg = load_config(None, {**cfg.flat(), "output_dir": str(tmp_path / "out")})  # a warm-up of its own, not cached
    reports = run_trial(cfg, tiny, tmp_path, "trial")
    warmup, round_1 = in_process[0], in_process[1]
    assert warmup.stage == "warmup" and warmup.labels is NO_LABELS and warmup.steps == 2
    assert LabelStore(Path(cfg.output_dir) / "trial" / "labels").rounds() == [1]  # the warm-up bought no label
    warmed = reports[0][1].model_checkpoint  # round 0 reports the warmed-up model
    assert reports[0][0]["warmup/steps"] == 2 and round_1.init_checkpoint == warmed
    # S learned the target: its target losses ran, and its heads are not the source model's.
    before, after = load_checkpoint(source)["modules"]["selector"], load_checkpoint(warmed)["modules"]["selector"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert {"train/loss/selector_pseudo_ce", "train/loss/selector_discrepancy_backbone"} <= set(reports[0][0])
    # Round 1's labels are what the warmed-up S picks (a source-model ranking differs).
    bought = LabelStore(Path(cfg.output_dir) / "trial" / "labels").sparse_labels(only_round=1)
    for checkpoint, same in ((warmed, True), (source, False)):
        picks = dict(Ranker(checkpoint, cfg).rank(list(range(8)), NO_LABELS, cfg.selection.points_per_image))
        assert all(sorted(zip(q.ys, q.xs)) == sorted(zip(*bought[i][:2])) for i, q in picks.items()) is same


def test_every_trial_of_a_comparison_trains_the_same_total_steps(tiny, in_process, tmp_path):
    cfg, source, _ = tiny
    common = {"adapt.total_steps": 4}
    trials = [
        load_config(None, {**cfg.flat(), **common, "selection.rounds": rounds, "selection.rule": selector})
        for rounds, selector in ((1, "labor_ppl"), (2, "random"), (3, "region_impurity"))
    ]
    final_steps = [
        run_trial(trial, tiny, tmp_path, f"t{n}")[-1][0]["train/global_step"] for n, trial in enumerate(trials)
    ]
    oracle_start = len(in_process)
    start_models.ensure_oracle_reference(trials[0], source, progress=lambda m: None)
    oracle_job = in_process[-1]
    assert len(in_process) == oracle_start + 1 and oracle_job.full_target_labels  # the warm-up was cached
    total = cfg.source.steps + cfg.warmup.steps + 4
    assert final_steps == [total] * 3
    assert load_checkpoint(oracle_job.init_checkpoint)["global_step"] + oracle_job.steps == total


def test_spl_whole_mask_buys_every_pixel_of_every_mask_and_counts_its_clicks(tiny, in_process, tmp_path):
    cfg, _, _ = tiny
    spl = load_config(None, {**cfg.flat(), "selection.rule": "labor_spl", "selection.spl_mode": "whole_mask"})
    reports = run_trial(spl, tiny, tmp_path, "spl")
    warmed = reports[0][1].model_checkpoint
    bought = LabelStore(Path(spl.output_dir) / "spl" / "labels").sparse_labels(only_round=1)
    ranker = Ranker(warmed, spl)
    expected_clicks = 0.0
    for image_id in range(8):
        image = ranker.pool[image_id][0][None]
        p1, p2 = (h.softmax(1)[0] for h in ranker.network(image))
        mask = inconsistency_mask(p1, p2).numpy()
        got = np.zeros_like(mask)
        if image_id in bought:
            got[bought[image_id][0], bought[image_id][1]] = True
        assert np.array_equal(got, mask), image_id
        query = dict(ranker.rank([image_id], NO_LABELS, 0))[image_id]
        expected_clicks += sum(clicks_for_region(query.region(r), *mask.shape) for r in range(len(query)))
    assert reports[-1][0]["budget/clicks"] == pytest.approx(expected_clicks)
    assert reports[-1][0]["budget/labeled_pixels"] == sum(len(v[0]) for v in bought.values()) > 0


def test_source_set_soft_labels_are_the_average_over_the_source_set_and_stay_fixed(tiny):
    cfg, source, _ = tiny
    fixed = load_config(None, {**cfg.flat(), "adapt.soft_label_estimate": "source_set"})
    result = run_job(TrainJob(mode="adapt", config=fixed, init_checkpoint=source, round=1))
    from trainers.data import build_domains
    from trainers.engine import load_models

    models, _ = load_models(source, fixed, 9)
    soft = SoftLabels(9)
    plain = dataclasses.replace(fixed.data, augment=NO_AUGMENTATION)
    assert not (plain.augment.hflip or fixed.data.augment == NO_AUGMENTATION)  # the run's source set is augmented
    with torch.no_grad():
        totals = sum(
            soft.class_totals(models.segmenter.eval()(image[None])[0], label[None], fixed.adapt.soft_label_temperature)
            for image, label in build_domains(plain).source
        )
    soft.assign(totals)
    got = result.state["modules"]["soft_labels"]
    assert result.state["soft_labels_fixed"] is True
    assert torch.allclose(got["soft_labels"], soft.soft_labels, atol=1e-5) and torch.equal(got["seen"], soft.seen)


def test_a_case_that_sets_a_key_no_other_case_sets_gives_a_valid_trial_config():
    from experiment_config import ExperimentConfig, with_overrides

    cases = [
        {"selection.rule": "labor_spl", "selection.spl_mode": "whole_mask"},
        {"selection.rule": "labor_ppl", "selection.points_per_image": 40},
    ]
    sweep = with_overrides(ExperimentConfig(), {"sweep.search_space": {"cases": {"grid": cases}}})
    trial = with_overrides(sweep, {"cases": cases[0]})  # once refused: case 2 was validated on top of case 1
    assert trial.selection.spl_mode == "whole_mask" and trial.sweep.search_space == {}
