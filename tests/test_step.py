"""Each alternating update moves exactly the parameters it should, and a zero weight costs nothing."""

import dataclasses
import functools
import operator
from pathlib import Path

import pytest
import torch

from experiment_config import load_config
from trainers.discriminators import DomainClassifier, OutputSpaceDiscriminator
from trainers.engine import build_optimizers
from trainers.loader import batch_indices
from trainers.losses import SoftLabels
from trainers.models import SegmentationNet
from trainers.step import (
    AdaptationModels,
    LossWeights,
    adaptation_step,
    discriminator_update,
    domain_classifier_update,
    segmenter_update,
    selector_backbone_update,
    selector_heads_update,
    selector_supervised_update,
    warmup_segmenter_step,
    warmup_selector_step,
)

K = 4
ALL_ON = LossWeights(
    target_ce=1.0,
    adversarial=0.01,
    confusion=0.1,
    soft_label=0.1,
    soft_label_temperature=2.0,
    pseudo_label=1.0,
    discrepancy=1.0,
)
ADAM = {"lr": 1e-2, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0, "head_lr_factor": 1.0}
CFG = load_config(
    None,
    {
        **{f"{section}.{key}": value for section in ("source", "adapt") for key, value in ADAM.items()},
        "adapt.discriminator_lr": 1e-2,
        "adapt.domain_classifier_lr": 1e-2,
    },
)


def make_models(weights=ALL_ON):
    torch.manual_seed(0)
    g = SegmentationNet(K, width=4, num_heads=1)
    return AdaptationModels(
        segmenter=g,
        selector=SegmentationNet(K, width=4, num_heads=2),
        discriminator=OutputSpaceDiscriminator(K, width=4) if weights.adversarial else None,
        domain_classifier=DomainClassifier(g.feature_channels, width=4) if weights.confusion else None,
        soft_labels=SoftLabels(K) if weights.soft_label else None,
    )


def batches():
    torch.manual_seed(1)
    xs, ys = torch.randn(2, 3, 16, 32), torch.randint(0, K, (2, 16, 32))
    xt = torch.randn(2, 3, 16, 32)
    yt = torch.full((2, 16, 32), 255)
    yt[0, 3, 4], yt[1, 10, 20] = 1, 2
    return (xs, ys), (xt, yt)


def snapshot(models):
    return {
        name: {k: v.clone() for k, v in module.state_dict().items()}
        for name, module in vars(models).items()
        if module is not None
    }


def changed(before, after, name, keys=None):
    """Whether any parameter of module ``name`` (optionally only keys matching a filter) moved."""
    return any(not torch.equal(before[name][k], after[name][k]) for k in before[name] if keys is None or keys(k))


def is_head(key):
    return key.startswith("heads.")


@pytest.fixture
def setup():
    models = make_models()
    opt = build_optimizers(models, CFG, "adapt")
    models.soft_labels.update(torch.randn(2, K, 16, 32), torch.randint(0, K, (2, 16, 32)), 2.0)
    return models, opt


def test_segmenter_update_moves_only_g(setup):
    models, opt = setup
    source, target = batches()
    before = snapshot(models)
    losses, outputs = segmenter_update(models, opt, source, target, ALL_ON)
    after = snapshot(models)
    assert changed(before, after, "segmenter")
    for frozen in ("selector", "discriminator", "domain_classifier", "soft_labels"):
        assert not changed(before, after, frozen), frozen
    # Dis and theta_D received gradient through the losses but it was dropped, not kept for their step.
    assert all(p.grad is None for p in models.discriminator.parameters())
    assert all(p.grad is None for p in models.domain_classifier.parameters())
    assert set(losses) >= {"source_ce", "target_ce", "adversarial", "confusion", "soft_label", "segmenter_total"}
    assert outputs.features is not None and not outputs.features.requires_grad


def test_discriminator_and_domain_classifier_updates_move_only_themselves(setup):
    models, opt = setup
    source, target = batches()
    _, outputs = segmenter_update(models, opt, source, target, ALL_ON)
    before = snapshot(models)
    discriminator_update(models, opt, outputs)
    after = snapshot(models)
    assert changed(before, after, "discriminator")
    assert not any(changed(before, after, n) for n in ("segmenter", "selector", "domain_classifier"))
    before = after
    domain_classifier_update(models, opt, outputs)
    after = snapshot(models)
    assert changed(before, after, "domain_classifier")
    assert not any(changed(before, after, n) for n in ("segmenter", "selector", "discriminator"))


def test_mcd_steps_alternate_heads_and_backbone(setup):
    models, opt = setup
    source, target = batches()
    before = snapshot(models)
    selector_supervised_update(models, opt, source, target, None, ALL_ON)
    after = snapshot(models)
    assert changed(before, after, "selector", is_head) and changed(before, after, "selector", lambda k: not is_head(k))

    before = after
    selector_heads_update(models, opt, source, target, None, ALL_ON)
    after = snapshot(models)
    assert changed(before, after, "selector", is_head)
    assert not changed(before, after, "selector", lambda k: not is_head(k))  # F fixed
    assert all(p.grad is None for n, p in models.selector.named_parameters() if not is_head(n))

    before = after
    selector_backbone_update(models, opt, target, ALL_ON)
    after = snapshot(models)
    assert changed(before, after, "selector", lambda k: not is_head(k))
    assert not changed(before, after, "selector", is_head)  # C1, C2 fixed
    assert not changed(before, after, "segmenter")


def test_heads_step_increases_discrepancy():
    models = make_models()
    opt = build_optimizers(models, CFG, "adapt")
    source, target = batches()
    w = LossWeights(target_ce=0.0, discrepancy=50.0)
    first = selector_heads_update(models, opt, source, target, None, w)["selector_discrepancy_heads"]
    for _ in range(5):
        last = selector_heads_update(models, opt, source, target, None, w)["selector_discrepancy_heads"]
    assert last > first


def test_zero_weights_skip_their_forward_passes():
    weights = LossWeights(target_ce=1.0)  # adversarial, confusion, soft labels, pseudo labels, MCD all off
    models = make_models(weights)
    assert models.discriminator is None and models.domain_classifier is None and models.soft_labels is None
    opt = build_optimizers(models, CFG, "adapt")
    calls = {"segmenter": 0, "selector": 0}
    models.segmenter.register_forward_hook(lambda *a: calls.__setitem__("segmenter", calls["segmenter"] + 1))
    models.selector.register_forward_hook(lambda *a: calls.__setitem__("selector", calls["selector"] + 1))
    source, target = batches()
    losses = adaptation_step(models, opt, source, target, weights)
    assert calls == {"segmenter": 1, "selector": 1}
    assert not {
        "adversarial",
        "confusion",
        "soft_label",
        "selector_pseudo_ce",
        "discriminator",
        "domain_classifier",
        "selector_discrepancy_heads",
    } & set(losses)

    calls.update(segmenter=0, selector=0)
    adaptation_step(models, opt, source, target, LossWeights(target_ce=1.0, discrepancy=1.0))
    assert calls == {"segmenter": 1, "selector": 3}  # MCD on: steps A, B and C


def test_full_step_runs_and_updates_soft_labels(setup):
    models, opt = setup
    source, target = batches()
    seen_before = models.soft_labels.soft_labels.clone()
    losses = adaptation_step(models, opt, source, target, ALL_ON)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not torch.equal(seen_before, models.soft_labels.soft_labels)


def test_batch_indices_are_a_function_of_the_step():
    a = [batch_indices(10, 3, step, seed=5) for step in range(7)]
    b = [batch_indices(10, 3, step, seed=5) for step in range(7)]
    assert a == b
    epoch0 = functools.reduce(operator.iadd, a[:3], [])
    assert len(set(epoch0)) == 9  # one epoch: 3 batches of 3 distinct items
    ranks = [batch_indices(10, 2, 0, seed=5, rank=r, world=2) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="cannot be sharded"):
        batch_indices(1, 2, 0, seed=0, world=2)


def test_step_without_selector_training_leaves_the_selector_untouched(setup):
    models, opt = setup
    source, target = batches()
    before = snapshot(models)
    losses = adaptation_step(models, opt, source, target, ALL_ON, train_selector_network=False)
    after = snapshot(models)
    assert not changed(before, after, "selector")
    assert changed(before, after, "segmenter") and changed(before, after, "discriminator")
    assert not any(name.startswith("selector") for name in losses)
    assert {"target_ce", "adversarial", "confusion", "soft_label"} <= set(losses)

    adaptation_step(models, opt, source, target, ALL_ON)  # the default trains S, heads and backbone
    trained = snapshot(models)
    assert changed(after, trained, "selector", is_head) and changed(
        after, trained, "selector", lambda k: not is_head(k)
    )


# --- the label-free warm-up, in LabOR's order: G (against Dis) first, then S on the frozen G ---------


WARMUP = LossWeights(
    target_ce=1.0,
    adversarial=0.001,
    pseudo_label=1.0,
    pseudo_label_rule="class_balanced",
    discrepancy=1.0,
    selector_source_ce=False,
    selector_backbone_step=False,
)


def warmup_setup(weights=WARMUP):
    models = make_models(weights)
    return models, build_optimizers(models, CFG, "adapt")


def test_warmup_segmenter_phase_alternates_g_and_dis_and_leaves_s_alone():
    models, opt = warmup_setup()
    source, target = batches()
    seen = []
    # AdaptSegNet's order in one iteration: G's update (Dis fixed, its gradient dropped), then Dis's.
    models.discriminator.register_forward_hook(lambda module, args, out: seen.append(args[0].requires_grad))
    before = snapshot(models)
    losses = warmup_segmenter_step(models, opt, source, target, WARMUP)
    after = snapshot(models)
    assert changed(before, after, "segmenter") and changed(before, after, "discriminator")
    assert not changed(before, after, "selector")
    assert seen == [True, False]  # G's pass reaches G through Dis; Dis's own pass sees G's outputs detached
    assert set(losses) == {"source_ce", "target_ce", "adversarial", "segmenter_total", "discriminator"}


def test_warmup_selector_phase_trains_s_on_the_frozen_gs_pseudo_labels():
    models, opt = warmup_setup()
    source, target = batches()
    inputs = []
    models.selector.register_forward_hook(lambda module, args, out: inputs.append(args[0].shape[0]))
    g_mode = []
    models.segmenter.register_forward_hook(lambda module, args, out: g_mode.append(module.training))
    before = snapshot(models)
    losses = warmup_selector_step(models, opt, source, target, WARMUP)
    after = snapshot(models)
    assert not changed(before, after, "segmenter") and not changed(before, after, "discriminator")
    assert all(p.grad is None for p in models.segmenter.parameters())  # G is frozen: not even a gradient
    assert g_mode == [False] and models.segmenter.training  # G predicts in eval mode, and is left as it was
    assert changed(before, after, "selector", is_head) and changed(before, after, "selector", lambda k: not is_head(k))
    # The paper's reading: pseudo-label CE (step A) and heads maximising the discrepancy (step B); no
    # source CE (S sees only the 2 target images) and no backbone step (C).
    assert inputs == [2, 2]
    assert set(losses) >= {"selector_pseudo_ce", "selector_discrepancy_heads"}
    assert not {"selector_source_ce", "selector_discrepancy_backbone", "source_ce", "adversarial"} & set(losses)


def test_the_mcd_variants_of_s_are_named_options():
    source, target = batches()
    # Step B alone (no supervised term) moves only the heads when the backbone step is off...
    heads_only = dataclasses.replace(WARMUP, pseudo_label=0.0, target_ce=0.0)
    models, opt = warmup_setup(heads_only)
    before = snapshot(models)
    losses = warmup_selector_step(models, opt, source, target, heads_only)
    after = snapshot(models)
    assert changed(before, after, "selector", is_head) and not changed(
        before, after, "selector", lambda k: not is_head(k)
    )
    assert set(losses) == {"selector_discrepancy_heads"}
    # ... and MCD's step C moves the backbone (num_k times), with source CE in step A (source + target images).
    mcd = dataclasses.replace(WARMUP, selector_source_ce=True, selector_backbone_step=True, num_k=2)
    models, opt = warmup_setup(mcd)
    inputs = []
    models.selector.register_forward_hook(lambda module, args, out: inputs.append(args[0].shape[0]))
    losses = warmup_selector_step(models, opt, source, target, mcd)
    assert inputs == [4, 4, 2, 2]  # A and B on source + target, C twice on target
    assert {"selector_source_ce", "selector_discrepancy_backbone"} <= set(losses)


def test_the_warmup_optimizers_are_adaptsegnets_recipe():
    from trainers.engine import build_adaptation_models, loss_weights

    cfg = load_config(None)
    weights = loss_weights(cfg, "adapt", "warmup")
    models = build_adaptation_models(cfg, K, weights, stage="warmup")
    assert models.discriminator.width == 64 == cfg.warmup.discriminator_width
    assert (
        build_adaptation_models(cfg, K, loss_weights(cfg, "adapt")).discriminator.width == cfg.adapt.discriminator_width
    )
    opt = build_optimizers(models, cfg, "adapt", "warmup")
    g = opt.segmenter
    assert isinstance(g, torch.optim.SGD)
    assert [group["lr"] for group in g.param_groups] == pytest.approx([cfg.warmup.lr, 10 * cfg.warmup.lr])
    assert all(group["momentum"] == 0.9 and group["weight_decay"] == 5e-4 for group in g.param_groups)
    d = opt.discriminator
    assert isinstance(d, torch.optim.Adam) and d.param_groups[0]["betas"] == (0.9, 0.99)
    assert d.param_groups[0]["lr"] == cfg.warmup.discriminator_lr == 1e-4
    # S trains with adapt's optimizer (its recipe in the rounds too).
    assert isinstance(opt.selector_heads, type(build_optimizers(models, cfg, "adapt").selector_heads))
    assert opt.selector_heads.param_groups[0]["lr"] == cfg.adapt.lr * cfg.adapt.head_lr_factor
    # The bundled default raises the adversarial weight 10x for its 300 steps (docs/methods.md); the
    # paper configs keep AdaptSegNet's 0.001.
    assert (weights.adversarial, weights.selector_source_ce, weights.selector_backbone_step) == (0.01, False, False)
    for paper in ("gta5_to_cityscapes_labor_ppl", "synthia_to_cityscapes_labor_spl"):
        paper_cfg = load_config(Path(__file__).parents[1] / "configs" / f"{paper}.yaml")
        assert loss_weights(paper_cfg, "adapt", "warmup").adversarial == 0.001, paper
    assert loss_weights(cfg, "source").selector_source_ce  # source training teaches S the source labels


def test_the_warmup_decays_g_and_dis_over_its_g_steps_then_s_over_its_own():
    from trainers.engine import lr_power, lr_schedule_span, poly_lr_factor

    cfg = load_config(None, {"warmup.steps": 100, "warmup.selector_steps": 40, "adapt.steps": 50})
    source = cfg.source.steps
    assert lr_schedule_span(cfg, "adapt", "warmup") == (source, 100) and lr_power(cfg, "adapt", "warmup") == 0.9
    assert lr_schedule_span(cfg, "adapt", "warmup", "selector") == (source + 100, 40)
    assert lr_power(cfg, "adapt", "warmup", "selector") == cfg.adapt.lr_power
    # The rounds continue one run with G's warm-up steps (RIPU's schedule): S's 40 steps are not counted.
    assert lr_schedule_span(cfg, "adapt") == (source + 40, 150)
    assert poly_lr_factor(source + 140, source + 40, 150, 0.9) == pytest.approx((1 - 100 / 150) ** 0.9)
    longer = load_config(None, {"warmup.steps": 100, "warmup.lr_decay_steps": 250})
    assert lr_schedule_span(longer, "adapt", "warmup") == (source, 250)
