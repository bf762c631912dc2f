"""Known-answer tests for every loss of both papers; the arithmetic is worked out in the comments."""

import math

import pytest
import torch

from trainers.discriminators import DomainClassifier, OutputSpaceDiscriminator
from trainers.losses import (
    IGNORE_INDEX,
    SoftLabels,
    adversarial_loss,
    class_balanced_pseudo_labels,
    classifier_discrepancy,
    discriminator_loss,
    domain_classifier_loss,
    domain_confusion_loss,
    pseudo_label_loss,
    soft_label_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(value: torch.Tensor, expected: float, tol: float = 1e-5) -> bool:
    return abs(float(value.detach() if isinstance(value, torch.Tensor) else value) - expected) < tol


def pixels(*prob_vectors) -> torch.Tensor:
    """Logits (1, K, 1, W) whose softmax at T=1 is exactly the given probability vectors."""
    return torch.tensor(prob_vectors, dtype=torch.float32).log().T.reshape(1, len(prob_vectors[0]), 1, -1)


# ----------------------------------------------------------------------------- discriminators


def test_output_space_discriminator_shapes():
    dis = OutputSpaceDiscriminator(num_classes=5, width=4)
    # 32x64 -> 16x32 -> 8x16 -> 4x8 -> 2x4 -> 1x2 (five halvings, like AdaptSeg's padding=1 on even sides).
    assert dis(torch.rand(2, 5, 32, 64)).shape == (2, 1, 1, 2)
    # Odd and tiny sides round up: 5 -> 3 -> 2 -> 1 -> 1 -> 1 and 7 -> 4 -> 2 -> 1 -> 1 -> 1.
    assert dis(torch.rand(1, 5, 5, 7)).shape == (1, 1, 1, 1)
    assert dis(torch.rand(1, 5, 1, 1)).shape == (1, 1, 1, 1)
    # 64x128 -> 2x4: the output stays a patch map.
    assert dis(torch.rand(1, 5, 64, 128)).shape == (1, 1, 2, 4)
    convs = [m for m in dis.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)


def test_domain_classifier_is_per_pixel_and_feeds_both_losses():
    clf = DomainClassifier(in_channels=6, width=8, num_domains=2)
    features = torch.rand(2, 6, 32, 64, requires_grad=True)
    logits = clf(features)
    assert logits.shape == (2, 2, 32, 64)
    # 1x1 convs only: changing one position's feature changes only that position's logits.
    other = features.detach().clone()
    other[:, :, 3, 5] += 1.0
    changed = (clf(other) - logits.detach()).abs().sum(dim=(0, 1)) > 0
    assert changed[3, 5] and int(changed.sum()) == 1
    for loss in (domain_classifier_loss(logits, 0), domain_classifier_loss(logits, 1), domain_confusion_loss(logits)):
        assert loss.dim() == 0 and torch.isfinite(loss)
    domain_confusion_loss(logits).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- AdaptSeg adversarial


def test_discriminator_loss_known_values():
    # sigma(0) = 1/2: -log(1/2) - log(1 - 1/2) = 2 log 2, whatever the number of patches.
    assert close(discriminator_loss(torch.zeros(2, 1, 1, 2), torch.zeros(3, 1, 2, 2)), 2 * LN2)
    # Logit ln 3 -> sigma = 3/4. Source: -log(3/4) = log(4/3). Target: -log(1 - 3/4) = log 4.
    # Sum: log(16/3) = 1.673976.
    a = torch.full((1, 1, 1, 1), LN3)
    assert close(discriminator_loss(a, a), math.log(16 / 3))
    # Each term is a mean over its own patches: source logits {ln 3, 0} -> (log(4/3) + log 2)/2;
    # target logit 0 -> log 2.
    src = torch.tensor([LN3, 0.0]).reshape(1, 1, 1, 2)
    assert close(discriminator_loss(src, torch.zeros(1, 1, 1, 1)), (math.log(4 / 3) + LN2) / 2 + LN2)


def test_discriminator_loss_signs():
    src = torch.zeros(1, 1, 1, 1, requires_grad=True)
    tgt = torch.zeros(1, 1, 1, 1, requires_grad=True)
    discriminator_loss(src, tgt).backward()
    # d/da [-log sigma(a)] = sigma(a) - 1 = -1/2 (Dis pushes source logits up);
    # d/da [-log(1 - sigma(a))] = sigma(a) = +1/2 (and target logits down).
    assert close(src.grad.reshape(()), -0.5) and close(tgt.grad.reshape(()), 0.5)


def test_adversarial_loss_labels_target_as_source():
    # -log sigma(0) = log 2; -log sigma(ln 3) = log(4/3); -log sigma(-ln 3) = -log(1/4) = log 4.
    assert close(adversarial_loss(torch.zeros(2, 1, 1, 2)), LN2)
    assert close(adversarial_loss(torch.full((1, 1, 1, 1), LN3)), math.log(4 / 3))
    logits = torch.tensor([LN3, -LN3]).reshape(1, 1, 1, 2).requires_grad_()
    loss = adversarial_loss(logits)
    assert close(loss, (math.log(4 / 3) + math.log(4)) / 2)
    loss.backward()
    # Gradient (sigma(a) - 1) / 2 per patch: (3/4 - 1)/2 = -1/8 and (1/4 - 1)/2 = -3/8 -> G raises "source".
    assert torch.allclose(logits.grad.reshape(-1), torch.tensor([-0.125, -0.375]))


def test_adversarial_gradient_reaches_segmenter_through_discriminator():
    dis = OutputSpaceDiscriminator(num_classes=3, width=2)
    seg_logits = torch.randn(1, 3, 32, 32, requires_grad=True)
    adversarial_loss(dis(torch.softmax(seg_logits, dim=1))).backward()
    assert seg_logits.grad is not None and seg_logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Tzeng domain losses


def test_domain_classifier_loss_known_values():
    # Sample 1: q = (0.8, 0.2); sample 2: logits 0 -> q = (1/2, 1/2).
    logits = torch.tensor([[math.log(0.8), math.log(0.2)], [0.0, 0.0]])
    # Label 0: (-log 0.8 + log 2)/2 = (0.223144 + 0.693147)/2 = 0.458145.
    assert close(domain_classifier_loss(logits, 0), (-math.log(0.8) + LN2) / 2)
    # Label 1: (-log 0.2 + log 2)/2 = (1.609438 + 0.693147)/2 = 1.151293.
    assert close(domain_classifier_loss(logits, 1), (-math.log(0.2) + LN2) / 2)
    # Same numbers per pixel: (1, D=2, 1, 2) with the two samples as two pixels.
    per_pixel = logits.T.reshape(1, 2, 1, 2)
    assert close(domain_classifier_loss(per_pixel, 0), (-math.log(0.8) + LN2) / 2)
    with pytest.raises(ValueError, match="domain_label"):
        domain_classifier_loss(logits, 2)


def test_domain_confusion_loss_known_values():
    # Uniform q: -(1/2)(log 1/2 + log 1/2) = log 2, the minimum for D = 2.
    assert close(domain_confusion_loss(torch.zeros(4, 2)), LN2)
    assert close(domain_confusion_loss(torch.full((1, 3, 2, 2), 7.0)), LN3)  # D = 3 -> log 3
    # q = (0.8, 0.2): -(log 0.8 + log 0.2)/2 = (0.223144 + 1.609438)/2 = 0.916291 > log 2.
    q = torch.tensor([[math.log(0.8), math.log(0.2)]])
    assert close(domain_confusion_loss(q), -(math.log(0.8) + math.log(0.2)) / 2)
    assert float(domain_confusion_loss(q)) > LN2
    # Mean over pixels: one uniform pixel and one (0.8, 0.2) pixel.
    mixed = torch.tensor([[0.0, math.log(0.8)], [0.0, math.log(0.2)]]).reshape(1, 2, 1, 2)
    assert close(domain_confusion_loss(mixed), (LN2 + 0.916291) / 2)


def test_domain_confusion_has_zero_gradient_at_uniform_only():
    at_min = torch.zeros(1, 2, requires_grad=True)
    domain_confusion_loss(at_min).backward()
    assert at_min.grad.abs().max() < 1e-7
    # At q = (0.8, 0.2): d/dz_d = q_d - 1/D = (0.3, -0.3) pushes q back toward uniform.
    off = torch.tensor([[math.log(0.8), math.log(0.2)]], requires_grad=True)
    domain_confusion_loss(off).backward()
    assert torch.allclose(off.grad, torch.tensor([[0.3, -0.3]]), atol=1e-6)


# ----------------------------------------------------------------------------- Tzeng soft labels


def test_soft_labels_first_observation_then_ema():
    soft = SoftLabels(num_classes=2)
    assert not soft.seen.any()
    # Batch 1: class 0 pixels with p = (0.8, 0.2) and (0.6, 0.4) -> mean (0.7, 0.3);
    # class 1 pixel with p = (0.1, 0.9); one ignored pixel (must not count).
    logits = pixels((0.8, 0.2), (0.6, 0.4), (0.1, 0.9), (0.5, 0.5)).requires_grad_()
    labels = torch.tensor([[[0, 0, 1, IGNORE_INDEX]]])
    soft.update(logits, labels, temperature=1.0, momentum=0.9)
    assert torch.allclose(soft.soft_labels, torch.tensor([[0.7, 0.3], [0.1, 0.9]]), atol=1e-6)
    assert soft.seen.tolist() == [True, True]
    assert not soft.soft_labels.requires_grad and logits.grad is None
    # Batch 2 has only class 0, p = (0.5, 0.5); momentum 0.9:
    # row 0 = 0.9 * (0.7, 0.3) + 0.1 * (0.5, 0.5) = (0.63 + 0.05, 0.27 + 0.05) = (0.68, 0.32);
    # row 1 (absent) stays (0.1, 0.9).
    soft.update(pixels((0.5, 0.5)), torch.tensor([[[0]]]), temperature=1.0, momentum=0.9)
    assert torch.allclose(soft.soft_labels, torch.tensor([[0.68, 0.32], [0.1, 0.9]]), atol=1e-6)


def test_soft_labels_use_temperature_and_skip_absent_classes():
    soft = SoftLabels(num_classes=3)
    # Logits (ln 4, 0, 0) at T = 2: softmax(ln 2, 0, 0) = (2, 1, 1)/4 = (0.5, 0.25, 0.25).
    logits = torch.tensor([math.log(4.0), 0.0, 0.0]).reshape(1, 3, 1, 1)
    soft.update(logits, torch.tensor([[[2]]]), temperature=2.0)
    assert soft.seen.tolist() == [False, False, True]
    assert torch.allclose(soft.soft_labels[2], torch.tensor([0.5, 0.25, 0.25]), atol=1e-6)
    assert torch.equal(soft.soft_labels[:2], torch.zeros(2, 3))
    # An all-ignored batch changes nothing.
    before = soft.soft_labels.clone()
    soft.update(logits, torch.full((1, 1, 1), IGNORE_INDEX), temperature=2.0)
    assert torch.equal(soft.soft_labels, before) and soft.seen.tolist() == [False, False, True]


def test_soft_labels_all_reduce_combines_workers():
    # This worker: one class-0 pixel, p = (0.8, 0.2). The "other worker" adds one class-0 pixel with
    # p = (0.4, 0.6) and one class-1 pixel with p = (0.3, 0.7), as sums | counts rows.
    other = torch.tensor([[0.4, 0.6, 1.0], [0.3, 0.7, 1.0]])
    calls = []

    def returning(stats):
        calls.append(stats.shape)
        return stats + other

    def in_place(stats):  # like torch.distributed.all_reduce: sums in place, returns None
        stats.add_(other)

    for reduce in (returning, in_place):
        soft = SoftLabels(num_classes=2)
        soft.update(pixels((0.8, 0.2)), torch.tensor([[[0]]]), temperature=1.0, all_reduce=reduce)
        # Class 0: ((0.8, 0.2) + (0.4, 0.6)) / 2 = (0.6, 0.4); class 1 seen only on the other worker.
        assert torch.allclose(soft.soft_labels, torch.tensor([[0.6, 0.4], [0.3, 0.7]]), atol=1e-6)
        assert soft.seen.tolist() == [True, True]
    assert calls == [(2, 3)]  # one collective with [sums | counts]


def test_soft_labels_state_dict_round_trip():
    soft = SoftLabels(num_classes=3)
    soft.update(pixels((0.2, 0.3, 0.5), (0.6, 0.3, 0.1)), torch.tensor([[[1, 0]]]), temperature=1.0)
    state = soft.state_dict()
    assert set(state) == {"soft_labels", "seen"}
    assert state["soft_labels"].shape == (3, 3) and state["seen"].dtype == torch.bool
    restored = SoftLabels(num_classes=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.soft_labels, soft.soft_labels)
    assert restored.seen.tolist() == [True, True, False]
    assert torch.allclose(restored.soft_labels[1], torch.tensor([0.2, 0.3, 0.5]), atol=1e-6)


def test_soft_label_loss_one_pixel():
    soft_labels = torch.tensor([[0.7, 0.3], [0.0, 0.0]])
    seen = torch.tensor([True, False])
    # Pixel 0: class 0, logits (ln 4, 0) at T = 2 -> p = softmax(ln 2, 0) = (2/3, 1/3);
    # L = -(0.7 log(2/3) + 0.3 log(1/3)) = 0.7 * 0.405465 + 0.3 * 1.098612 = 0.283826 + 0.329584 = 0.613410.
    # Pixel 1: class 1, no soft label yet -> skipped. Pixel 2: ignored.
    logits = torch.tensor([[math.log(4.0), 5.0, -3.0], [0.0, 0.0, 1.0]]).reshape(1, 2, 1, 3).requires_grad_()
    labels = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    loss = soft_label_loss(logits, labels, soft_labels, seen, temperature=2.0)
    assert close(loss, 0.7 * math.log(1.5) + 0.3 * LN3)
    loss.backward()
    # Only pixel 0 gets a gradient: dL/dz = (p - l)/T = ((2/3 - 0.7)/2, (1/3 - 0.3)/2) = (-1/60, 1/60).
    grad = logits.grad.reshape(2, 3)
    assert torch.allclose(grad[:, 0], torch.tensor([-1 / 60, 1 / 60]), atol=1e-6)
    assert torch.equal(grad[:, 1:], torch.zeros(2, 2))


def test_soft_label_loss_no_t_squared_and_matches_ce_for_one_hot():
    # A one-hot soft label reduces L_soft to plain CE at temperature T (no T^2 factor):
    # logits (ln 3, 0) at T = 1 -> p = (3/4, 1/4), L = -log(3/4).
    logits = torch.tensor([LN3, 0.0]).reshape(1, 2, 1, 1)
    one_hot = torch.eye(2)
    seen = torch.ones(2, dtype=torch.bool)
    assert close(soft_label_loss(logits, torch.tensor([[[0]]]), one_hot, seen, 1.0), math.log(4 / 3))
    # At T = 2: p = softmax(ln 3 / 2, 0) = (sqrt 3, 1)/(sqrt 3 + 1), L = log((sqrt 3 + 1)/sqrt 3) = 0.459193.
    s3 = math.sqrt(3.0)
    assert close(soft_label_loss(logits, torch.tensor([[[0]]]), one_hot, seen, 2.0), math.log((s3 + 1) / s3))


def test_soft_label_loss_empty_selection_is_zero_with_gradient():
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    seen = torch.tensor([True, False])
    for labels in (torch.full((1, 2, 2), IGNORE_INDEX), torch.tensor([[[1, 1], [IGNORE_INDEX, 1]]])):
        loss = soft_label_loss(logits, labels, torch.rand(2, 2), seen, 2.0)
        assert float(loss.detach()) == 0.0 and not torch.isnan(loss)
        loss.backward()
        assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_soft_labels_feed_soft_label_loss():
    soft = SoftLabels(num_classes=2)
    soft.update(pixels((0.7, 0.3)), torch.tensor([[[0]]]), temperature=1.0)
    # The same one-pixel example as above, via the module's buffers: 0.613410.
    logits = torch.tensor([math.log(4.0), 0.0]).reshape(1, 2, 1, 1)
    loss = soft_label_loss(logits, torch.tensor([[[0]]]), soft.soft_labels, soft.seen, temperature=2.0)
    assert close(loss, 0.7 * math.log(1.5) + 0.3 * LN3)


# ----------------------------------------------------------------------------- LabOR pseudo labels + MCD


def test_class_balanced_pseudo_labels_known_thresholds():
    probs = torch.tensor(
        [
            [0.95, 0.05],  # class 0, c = 0.95
            [0.80, 0.20],  # class 0, c = 0.80
            [0.70, 0.30],  # class 0, c = 0.70
            [0.60, 0.40],  # class 0, c = 0.60
            [0.35, 0.65],  # class 1, c = 0.65
            [0.45, 0.55],  # class 1, c = 0.55
        ]
    ).T.reshape(1, 2, 1, 6)
    # Class 0: n = 4, m = ceil(0.5 * 4) = 2, 2nd largest = 0.80, threshold = min(0.9, 0.80) = 0.80 -> keep 0.95, 0.80.
    # Class 1: n = 2, m = 1, largest = 0.65, threshold = 0.65 -> keep 0.65 only.
    labels = class_balanced_pseudo_labels(probs, portion=0.5, max_threshold=0.9)
    assert labels.dtype == torch.int64 and labels.shape == (1, 1, 6)
    assert labels.tolist() == [[[0, 0, IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]]]
    # portion = 1 keeps every pixel: threshold_k = the smallest confidence of class k.
    assert (class_balanced_pseudo_labels(probs, portion=1.0) != IGNORE_INDEX).all()
    # portion = 0.25: class 0 m = 1 -> threshold min(0.9, 0.95) = 0.9 -> keep 0.95; class 1 m = 1 -> 0.65.
    assert class_balanced_pseudo_labels(probs, portion=0.25).tolist() == [
        [[0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]]
    ]


def test_class_balanced_pseudo_labels_cap_at_max_threshold():
    probs = torch.tensor([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.50, 0.50]]).T.reshape(1, 2, 2, 2)
    # Class 0 (ties at 0.5 go to argmax 0): n = 4, m = 2, 2nd largest = 0.98 > 0.9 -> threshold 0.9,
    # so 0.97 is kept although it is below the portion quantile; 0.50 is not.
    labels = class_balanced_pseudo_labels(probs, portion=0.5, max_threshold=0.9)
    assert labels.tolist() == [[[0, 0], [0, IGNORE_INDEX]]]
    with pytest.raises(ValueError, match="portion"):
        class_balanced_pseudo_labels(probs, portion=0.0)


def test_class_balanced_pseudo_labels_no_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = class_balanced_pseudo_labels(torch.softmax(logits, dim=1))
    assert not labels.requires_grad and labels.shape == (2, 4, 4)
    assert set(labels.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}


def test_pseudo_label_loss_mean_over_heads():
    # One pseudo-labeled pixel (class 0) and one ignored pixel.
    # Head 1 logits (0, 0) -> CE = log 2. Head 2 logits (ln 3, 0) -> CE = -log(3/4) = log(4/3).
    # Mean over heads: (0.693147 + 0.287682)/2 = 0.490415. The ignored pixel's logits must not matter.
    head1 = torch.tensor([[0.0, 9.0], [0.0, -9.0]]).reshape(1, 2, 1, 2)
    head2 = torch.tensor([[LN3, 9.0], [0.0, -9.0]]).reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, IGNORE_INDEX]]])
    assert close(pseudo_label_loss([head1, head2], labels), (LN2 + math.log(4 / 3)) / 2)
    assert close(pseudo_label_loss((head2,), labels), math.log(4 / 3))


def test_pseudo_label_loss_empty_is_zero_with_gradient_into_every_head():
    heads = [torch.randn(1, 2, 2, 2, requires_grad=True) for _ in range(2)]
    loss = pseudo_label_loss(heads, torch.full((1, 2, 2), IGNORE_INDEX))
    assert float(loss.detach()) == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert all(h.grad is not None and torch.equal(h.grad, torch.zeros_like(h)) for h in heads)
    with pytest.raises(ValueError):
        pseudo_label_loss([], torch.zeros(1, 2, 2, dtype=torch.int64))


def test_classifier_discrepancy_known_values():
    p1 = torch.tensor([[0.8, 0.5], [0.2, 0.5]]).reshape(1, 2, 1, 2)
    p2 = torch.tensor([[0.6, 0.5], [0.4, 0.5]]).reshape(1, 2, 1, 2)
    # |p1 - p2| = 0.2, 0.2 (pixel 0) and 0, 0 (pixel 1): mean over 2 classes x 2 pixels = 0.4/4 = 0.1.
    assert close(classifier_discrepancy(p1, p2), 0.1)
    assert close(classifier_discrepancy(p2, p1), 0.1)  # symmetric
    assert close(classifier_discrepancy(p1, p1), 0.0)
    # Mask pixel 0 only: 0.4 / (1 pixel x 2 classes) = 0.2; pixel 1 only: 0.
    assert close(classifier_discrepancy(p1, p2, mask=torch.tensor([[[True, False]]])), 0.2)
    assert close(classifier_discrepancy(p1, p2, mask=torch.tensor([[[False, True]]])), 0.0)


def test_classifier_discrepancy_gradient_and_empty_mask():
    p1 = torch.tensor([[0.8], [0.2]]).reshape(1, 2, 1, 1).requires_grad_()
    p2 = torch.tensor([[0.6], [0.4]]).reshape(1, 2, 1, 1).requires_grad_()
    classifier_discrepancy(p1, p2).backward()
    # d/dp1 of mean |p1 - p2| over 2 entries: sign(p1 - p2)/2 = (+1/2, -1/2); p2 gets the opposite.
    assert torch.allclose(p1.grad.reshape(-1), torch.tensor([0.5, -0.5]))
    assert torch.allclose(p2.grad.reshape(-1), torch.tensor([-0.5, 0.5]))
    a = torch.rand(1, 2, 2, 2, requires_grad=True)
    b = torch.rand(1, 2, 2, 2, requires_grad=True)
    loss = classifier_discrepancy(a, b, mask=torch.zeros(1, 2, 2, dtype=torch.bool))
    assert float(loss.detach()) == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert a.grad is not None and b.grad is not None
