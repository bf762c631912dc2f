"""Each alternating update moves exactly the parameters it should, and a zero weight costs nothing."""

import functools
import operator

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
