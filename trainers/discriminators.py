"""Adversaries of the segmenter: AdaptSeg's output-space discriminator and Tzeng's domain classifier.

Both are plain ``nn.Module``s that return logits; the matching losses (and their sign conventions)
live in ``trainers.losses``: ``discriminator_loss`` / ``adversarial_loss`` for the first,
``domain_classifier_loss`` / ``domain_confusion_loss`` for the second.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

# Zero padding (left, right, top, bottom) in front of every 4x4 stride-2 conv. On an even side n it is
# exactly AdaptSeg's padding=1 (the extra right/bottom column is never reached by a window, output
# n/2); on an odd side it rounds up instead of down, so every layer maps n -> ceil(n/2) >= 1 and the
# discriminator never collapses to an empty map on small crops.
_HALVING_PAD = (1, 2, 1, 2)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ZeroPad2d(_HALVING_PAD), nn.Conv2d(cin, cout, kernel_size=4, stride=2))


class OutputSpaceDiscriminator(nn.Module):
    """AdaptSeg output-space discriminator Dis (Tsai et al., CVPR 2018; used by LabOR, Shin et al. 2021).

    Fully convolutional: four 4x4 stride-2 convs of widths w, 2w, 4w, 8w, each followed by
    LeakyReLU(0.2), then a 4x4 stride-2 conv to one channel; no normalisation (as in AdaptSeg).
    Input: the segmenter's *softmax* map p = softmax(G(x), dim=1), shape (N, K, H, W) - the caller
    applies the softmax. Output: logits (N, 1, h, w), one per patch, with h = ceil(H / 32) and
    w = ceil(W / 32) (so 32x64 -> 1x2, and any input gives at least 1x1). sigmoid(logit) is
    Dis's probability that the patch comes from the *source* domain (label 1 = source, 0 = target),
    matching ``trainers.losses.discriminator_loss`` and ``adversarial_loss``.
    """

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be >= 1, got {num_classes} and {width}")
        self.num_classes, self.width = num_classes, width
        widths = [num_classes, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            layers += [_down(cin, cout), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(_down(8 * width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs)


class DomainClassifier(nn.Module):
    """Tzeng et al.'s domain classifier theta_D (ICCV 2015), applied per pixel of the representation.

    Input: the shared representation f(x), shape (N, C, h, w) (``SegmentationNet.features``).
    Output: domain logits (N, D, h, w); q = softmax(logits, dim=1) is the domain posterior of each
    feature position. Layers: 1x1 conv C->w, ReLU, 1x1 conv w->w, ReLU, 1x1 conv w->D (Tzeng's
    fully connected classifier, applied at every position).

    Why per pixel rather than on pooled features: the segmentation head reads f at every position
    through 1x1 convs, so those per-position vectors are what must look the same in both domains;
    a pooled vector can match across domains while the per-position distributions still differ
    (pooling keeps only the mean). Per pixel also gives h*w domain samples per image, a
    lower-variance estimate of L_D and L_conf for the small batches of segmentation. Each position's
    feature already has a wide receptive field in f, so 1x1 convs do not reduce it to colour statistics.
    Convention: domain index 0 = source, 1 = target (pass it as ``domain_label`` to
    ``trainers.losses.domain_classifier_loss``, which also accepts pooled (N, D) logits).
    """

    def __init__(self, in_channels: int, width: int = 64, num_domains: int = 2):
        super().__init__()
        if in_channels < 1 or width < 1 or num_domains < 2:
            raise ValueError(
                f"in_channels and width must be >= 1 and num_domains >= 2, got {in_channels}, {width}, {num_domains}"
            )
        self.in_channels, self.width, self.num_domains = in_channels, width, num_domains
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_domains, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
