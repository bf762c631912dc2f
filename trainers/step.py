"""One optimisation step of each kind, plain PyTorch: models and batches in, named losses out.

Models (``AdaptationModels``): the segmenter G, LabOR's selector network S (backbone F, heads C1,
C2), AdaptSeg's output-space discriminator Dis and Tzeng's domain classifier theta_D. Each
alternating update is its own function with its own optimizer:

1. ``segmenter_update``: G on source CE + sparse target CE + AdaptSeg adversarial loss (Dis fixed)
   + Tzeng domain confusion (theta_D fixed) + Tzeng soft-label loss;
2. ``discriminator_update``: Dis on G's detached softmax maps (source vs target);
3. ``domain_classifier_update``: theta_D on G's detached features (source vs target);
4. LabOR's selector network S, MCD style (Saito et al., CVPR 2018; Shin et al., ICCV 2021):
   ``selector_supervised_update`` (A) F, C1, C2 on source CE, sparse target CE and pseudo labels
   from G; ``selector_heads_update`` (B) C1, C2 maximise their discrepancy on target while staying
   correct (F fixed); ``selector_backbone_update`` (C) F minimises the discrepancy (C1, C2 fixed),
   ``num_k`` times per step as in MCD_DA. The pseudo labels follow ``pseudo_label_rule`` (IAST's
   instance-adaptive thresholds, or a class-balanced share of the batch).

A loss whose weight is 0 is not computed at all (no forward pass, no module built), so ablations
are configs. Every step returns float losses by name; ``weighted_total`` is the one place where
losses are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from .labels import TargetLabels
from .losses import (
    IGNORE_INDEX,
    IASTPseudoLabels,
    SoftLabels,
    adversarial_loss,
    class_balanced_pseudo_labels,
    classifier_discrepancy,
    discriminator_loss,
    domain_classifier_loss,
    domain_confusion_loss,
    pseudo_label_loss,
    soft_label_loss,
    source_cross_entropy,
    sparse_target_cross_entropy,
)


@dataclass(frozen=True)
class LossWeights:
    """Weights and knobs of the adaptation losses (the ``adapt`` config section)."""

    target_ce: float = 1.0
    adversarial: float = 0.0
    confusion: float = 0.0
    soft_label: float = 0.0
    soft_label_temperature: float = 2.0
    soft_label_momentum: float = 0.99
    pseudo_label: float = 0.0
    pseudo_label_portion: float = 0.5
    discrepancy: float = 0.0
    num_k: int = 1  # MCD: backbone discrepancy updates per step
    pseudo_label_rule: str = "class_balanced"  # "iast" needs AdaptationModels.pseudo_labeler
    soft_label_estimate: str = "running"  # "source_set": soft labels fixed, not updated per batch


@dataclass
class AdaptationModels:
    segmenter: nn.Module  # G: one head
    selector: nn.Module  # S: backbone F + heads C1, C2
    discriminator: nn.Module | None = None  # Dis (AdaptSeg), when adversarial > 0
    domain_classifier: nn.Module | None = None  # theta_D (Tzeng), when confusion > 0
    soft_labels: SoftLabels | None = None  # l(k) (Tzeng), when soft_label > 0
    pseudo_labeler: IASTPseudoLabels | None = None  # IAST's class thresholds, when pseudo_label_rule is "iast"


@dataclass
class Optimizers:
    segmenter: torch.optim.Optimizer
    selector_backbone: torch.optim.Optimizer
    selector_heads: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None = None
    domain_classifier: torch.optim.Optimizer | None = None

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in vars(self).items() if opt is not None}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in vars(self).items():
            if opt is not None and name in state:
                opt.load_state_dict(state[name])


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The one place where named losses are summed: sum_i w_i * L_i (missing weight = 1)."""
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _apply(total: torch.Tensor, optimizers: list[torch.optim.Optimizer], zero: list[nn.Module] = ()) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)  # consumed: nothing leaks into the next update
    for module in zero:  # gradients that reached a module this update must not move
        module.zero_grad(set_to_none=True)


def _floats(losses: dict[str, torch.Tensor], total: torch.Tensor, total_name: str) -> dict[str, float]:
    out = {name: float(value.detach()) for name, value in losses.items()}
    out[total_name] = float(total.detach())
    return out


@dataclass
class SegmenterOutputs:
    """What the adversaries and the selector need from G's pass, detached."""

    source_logits: torch.Tensor
    target_probs: torch.Tensor | None
    source_probs: torch.Tensor
    features: torch.Tensor | None


def segmenter_update(
    models: AdaptationModels,
    opt: Optimizers,
    source: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor] | None,
    w: LossWeights,
) -> tuple[dict[str, float], SegmenterOutputs]:
    """G's update. ``target`` = (images, sparse labels with 255 where unlabeled) or None (source only).

    One forward pass over the concatenated source and target batch (GroupNorm is per image, so
    concatenation changes nothing, and DDP sees a single pass per backward).
    """
    xs, ys = source
    n_source = xs.shape[0]
    need_features = w.confusion > 0 and target is not None
    batch = xs if target is None else torch.cat([xs, target[0]])
    out = models.segmenter(batch, with_features=need_features)
    logits, features = (out[0][0], out[1]) if need_features else (out[0], None)
    ls = logits[:n_source]
    losses = {"source_ce": source_cross_entropy(ls, ys)}
    weights: dict[str, float] = {}
    target_probs = None
    if target is not None:
        lt, yt = logits[n_source:], target[1]
        target_probs = F.softmax(lt.float(), dim=1)
        if w.target_ce > 0:
            losses["target_ce"], weights["target_ce"] = sparse_target_cross_entropy(lt, yt), w.target_ce
        if w.adversarial > 0:
            losses["adversarial"] = adversarial_loss(models.discriminator(target_probs))
            weights["adversarial"] = w.adversarial
        if w.confusion > 0:
            losses["confusion"] = domain_confusion_loss(models.domain_classifier(features))
            weights["confusion"] = w.confusion
        if w.soft_label > 0:
            sl = models.soft_labels
            losses["soft_label"] = soft_label_loss(lt, yt, sl.soft_labels, sl.seen, w.soft_label_temperature)
            weights["soft_label"] = w.soft_label
    total = weighted_total(losses, weights)
    adversaries = [m for m in (models.discriminator, models.domain_classifier) if m is not None]
    _apply(total, [opt.segmenter], zero=adversaries)
    outputs = SegmenterOutputs(
        source_logits=ls.detach(),
        source_probs=F.softmax(ls.detach().float(), dim=1),
        target_probs=None if target_probs is None else target_probs.detach(),
        features=None if features is None else features.detach(),
    )
    return _floats(losses, total, "segmenter_total"), outputs


def discriminator_update(models: AdaptationModels, opt: Optimizers, outputs: SegmenterOutputs) -> dict[str, float]:
    """Dis learns source (1) vs target (0) softmax maps of G; G's outputs are detached."""
    n_source = outputs.source_probs.shape[0]
    logits = models.discriminator(torch.cat([outputs.source_probs, outputs.target_probs]))
    loss = discriminator_loss(logits[:n_source], logits[n_source:])
    _apply(loss, [opt.discriminator])
    return {"discriminator": float(loss.detach())}


def domain_classifier_update(models: AdaptationModels, opt: Optimizers, outputs: SegmenterOutputs) -> dict[str, float]:
    """theta_D learns source (0) vs target (1) on G's detached representation (f frozen)."""
    n_source = outputs.source_probs.shape[0]
    logits = models.domain_classifier(outputs.features)
    loss = domain_classifier_loss(logits[:n_source], 0) + domain_classifier_loss(logits[n_source:], 1)
    _apply(loss, [opt.domain_classifier])
    return {"domain_classifier": float(loss.detach())}


def _selector_supervised(
    heads, source, target, pseudo_labels, w: LossWeights
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Mean over heads of source CE + w_t * sparse target CE + w_pl * pseudo-label CE."""
    ys = source[1]
    n_source = ys.shape[0]
    losses = {"selector_source_ce": sum(source_cross_entropy(h[:n_source], ys) for h in heads) / len(heads)}
    weights: dict[str, float] = {}
    if target is not None and w.target_ce > 0:
        losses["selector_target_ce"] = sum(sparse_target_cross_entropy(h[n_source:], target[1]) for h in heads) / len(
            heads
        )
        weights["selector_target_ce"] = w.target_ce
    if target is not None and pseudo_labels is not None and w.pseudo_label > 0:
        losses["selector_pseudo_ce"] = pseudo_label_loss([h[n_source:] for h in heads], pseudo_labels)
        weights["selector_pseudo_ce"] = w.pseudo_label
    return losses, weights


def _batch(source, target) -> torch.Tensor:
    return source[0] if target is None else torch.cat([source[0], target[0]])


def selector_supervised_update(
    models: AdaptationModels, opt: Optimizers, source, target, pseudo_labels, w: LossWeights
) -> dict[str, float]:
    """LabOR's selector network S, step A: F, C1, C2 on the supervised terms (source, labeled target, pseudo labels)."""
    losses, weights = _selector_supervised(models.selector(_batch(source, target)), source, target, pseudo_labels, w)
    total = weighted_total(losses, weights)
    _apply(total, [opt.selector_backbone, opt.selector_heads])
    return _floats(losses, total, "selector_total")


def selector_heads_update(
    models: AdaptationModels, opt: Optimizers, source, target, pseudo_labels, w: LossWeights
) -> dict[str, float]:
    """LabOR's selector network S, step B (MCD): C1, C2 maximise d(p1_t, p2_t) while staying correct; F fixed.

    Loss = supervised terms - w_d * d(p1_t, p2_t), with F's output detached so F gets no gradient.
    """
    n_source = source[0].shape[0]
    heads = models.selector(_batch(source, target), detach_features=True)
    losses, weights = _selector_supervised(heads, source, target, pseudo_labels, w)
    p1, p2 = (F.softmax(h[n_source:].float(), dim=1) for h in heads)
    losses["selector_discrepancy_heads"] = classifier_discrepancy(p1, p2)
    weights["selector_discrepancy_heads"] = -w.discrepancy
    _apply(weighted_total(losses, weights), [opt.selector_heads])
    return {"selector_discrepancy_heads": float(losses["selector_discrepancy_heads"].detach())}


def selector_backbone_update(models: AdaptationModels, opt: Optimizers, target, w: LossWeights) -> dict[str, float]:
    """LabOR's selector network S, step C (MCD): F minimises w_d * d(p1_t, p2_t); C1, C2 fixed (their gradient is dropped).

    Repeated ``w.num_k`` times on the same target batch, each a fresh forward pass and optimizer
    step, as MCD_DA's ``num_k`` (4 in its segmentation code) does; reports the mean discrepancy.
    """
    total = 0.0
    for _ in range(max(1, w.num_k)):
        heads = models.selector(target[0])
        p1, p2 = (F.softmax(h.float(), dim=1) for h in heads)
        discrepancy = classifier_discrepancy(p1, p2)
        _apply(w.discrepancy * discrepancy, [opt.selector_backbone], zero=[_unwrap(models.selector).heads])
        total += float(discrepancy.detach())
    return {"selector_discrepancy_backbone": total / max(1, w.num_k)}


def adaptation_step(
    models: AdaptationModels,
    opt: Optimizers,
    source: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor] | None,
    w: LossWeights,
    all_reduce: Callable | None = None,
    train_selector_network: bool = True,
) -> dict[str, float]:
    """One step of every update whose weight is non-zero; returns all losses by name.

    ``train_selector_network=False`` skips LabOR's selector network S updates (A, B, C): S only ranks pixels, so they
    are wasted when nothing ranks with S after this job (they are most of a step's cost).
    """
    losses, outputs = segmenter_update(models, opt, source, target, w)
    if models.soft_labels is not None and w.soft_label_estimate == "running":
        models.soft_labels.update(
            outputs.source_logits,
            source[1],
            w.soft_label_temperature,
            momentum=w.soft_label_momentum,
            all_reduce=all_reduce,
        )
    if target is not None and models.discriminator is not None:
        losses.update(discriminator_update(models, opt, outputs))
    if target is not None and models.domain_classifier is not None:
        losses.update(domain_classifier_update(models, opt, outputs))
    if not train_selector_network:
        return losses
    pseudo = None
    if outputs.target_probs is not None and w.pseudo_label > 0:
        pseudo = pseudo_labels(models, outputs.target_probs, w, all_reduce)
    losses.update(selector_supervised_update(models, opt, source, target, pseudo, w))
    if target is not None and w.discrepancy > 0:
        losses.update(selector_heads_update(models, opt, source, target, pseudo, w))
        losses.update(selector_backbone_update(models, opt, target, w))
    return losses


def pseudo_labels(
    models: AdaptationModels, target_probs: torch.Tensor, w: LossWeights, all_reduce: Callable | None = None
) -> torch.Tensor:
    """G's target pseudo labels for LabOR's selector network S by ``w.pseudo_label_rule``: (N, K, H, W) -> (N, H, W)."""
    if w.pseudo_label_rule == "iast":
        if models.pseudo_labeler is None:
            raise ValueError("pseudo_label_rule 'iast' needs AdaptationModels.pseudo_labeler (IASTPseudoLabels)")
        return models.pseudo_labeler(target_probs, all_reduce=all_reduce)
    if w.pseudo_label_rule == "class_balanced":
        return class_balanced_pseudo_labels(target_probs, portion=w.pseudo_label_portion)
    raise ValueError(f"unknown pseudo_label_rule {w.pseudo_label_rule!r}")


class SparseTargetDataset(Dataset):
    """The whole target pool as (image, sparse label map): 255 except where the oracle revealed a class.

    ``labels`` (``trainers.labels.TargetLabels``: the label store's reader, handed over by
    reference) is read image by image as the images are loaded, so a Train worker reads only the
    images it trains on. ``None`` means every pixel is revealed (the pool's own label maps: the
    oracle reference). Unlabeled images are included: the adversarial, confusion and pseudo-label
    losses use every target image. ``hflip`` flips the image and its sparse map together (the only
    augmentation that never invents labeled pixels).
    """

    def __init__(self, pool: Dataset, labels: TargetLabels | None, hflip: bool = False):
        self.pool = pool
        self.labels = labels
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int):
        image, truth = self.pool[index]
        if self.labels is None:
            sparse = truth.to(torch.int64)
        else:
            sparse = torch.full(truth.shape, IGNORE_INDEX, dtype=torch.int64)
            revealed = self.labels.read([int(index)]).get(int(index))
            if revealed is not None:
                ys, xs, classes = (np.asarray(a) for a in revealed)
                sparse[torch.from_numpy(ys.astype(np.int64)), torch.from_numpy(xs.astype(np.int64))] = torch.from_numpy(
                    classes.astype(np.int64)
                )
        if self.hflip and torch.rand(()) < 0.5:
            image, sparse = image.flip(-1), sparse.flip(-1)
        return image, sparse
