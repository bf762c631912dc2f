"""Losses, one idea per function; each docstring gives the paper, the formula and the shapes.

The adaptation step (``trainers.step``) calls these and returns them by name; the weighted sum is
taken in one place there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

IGNORE_INDEX = 255

# How G's target predictions become the pseudo labels of LabOR's selector network S (``adapt.pseudo_label_rule``).
PSEUDO_LABEL_RULES = ("iast", "class_balanced")
# Where Tzeng's soft labels come from (``adapt.soft_label_estimate``).
SOFT_LABEL_ESTIMATES = ("running", "source_set")


def source_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised loss on the labeled source domain (LabOR Sec. 3; Tzeng L_C).

    L = -1/|P| sum_{p in P} log softmax(logits_p)[y_p], P = pixels whose label is not 255.
    logits: (N, K, H, W); labels: (N, H, W) int64 with 255 = ignore. Returns a scalar.
    """
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def sparse_target_cross_entropy(logits: torch.Tensor, sparse_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the few labeled target pixels only (LabOR: labeled-target CE on selected pixels).

    L = -1/|Q| sum_{p in Q} log softmax(logits_p)[y_p], Q = selected pixels (every other pixel is 255).
    logits: (N, K, H, W); sparse_labels: (N, H, W) int64. A batch without any labeled pixel gives
    0 (with a gradient path), not NaN, so the step is the same on every Train worker.
    """
    labeled = sparse_labels != IGNORE_INDEX
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, sparse_labels, ignore_index=IGNORE_INDEX)


def _empty_loss(*tensors: torch.Tensor) -> torch.Tensor:
    # 0 that still depends on every input, so backward() runs (and DDP sees every parameter) even
    # when a batch has nothing to select; never NaN.
    return sum(t.sum() for t in tensors) * 0.0


# ---------------------------------------------------------------------------------------------
# AdaptSeg output-space adversarial loss (Tsai et al., CVPR 2018; LabOR, Shin et al., ICCV 2021)
# Convention: Dis's logit is "source"; label 1 = source, 0 = target.
# ---------------------------------------------------------------------------------------------


def discriminator_loss(d_source_logits: torch.Tensor, d_target_logits: torch.Tensor) -> torch.Tensor:
    """Loss of the output-space discriminator Dis (AdaptSeg; LabOR Sec. 3). Minimised over Dis only.

    L_Dis = mean_patches[-log sigma(a_s)] + mean_patches[-log(1 - sigma(a_t))],
    with a_s = Dis(softmax(G(x_s))) and a_t = Dis(softmax(G(x_t))) the logits, source = 1, target = 0
    (binary cross-entropy with logits, each term averaged over its own positions, then summed).
    d_source_logits: (N_s, 1, h, w); d_target_logits: (N_t, 1, h', w') (shapes may differ).
    Detach G's outputs before Dis for this step. Both logits 0 give 2 log 2.
    """
    return F.binary_cross_entropy_with_logits(
        d_source_logits, torch.ones_like(d_source_logits)
    ) + F.binary_cross_entropy_with_logits(d_target_logits, torch.zeros_like(d_target_logits))


def adversarial_loss(d_target_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial loss of the segmenter G (AdaptSeg; LabOR Sec. 3). Minimised over G, Dis frozen.

    L_adv = mean_patches[-log sigma(Dis(softmax(G(x_t))))]: G's target predictions are labeled as
    source (1), so G learns target outputs that Dis takes for source ones.
    d_target_logits: (N, 1, h, w). Returns a scalar; logit 0 gives log 2.
    """
    return F.binary_cross_entropy_with_logits(d_target_logits, torch.ones_like(d_target_logits))


# ---------------------------------------------------------------------------------------------
# Tzeng et al., "Simultaneous Deep Transfer Across Domains and Tasks" (ICCV 2015)
# ---------------------------------------------------------------------------------------------


def domain_classifier_loss(domain_logits: torch.Tensor, domain_label: int) -> torch.Tensor:
    """Tzeng L_D: the domain classifier theta_D learns to tell the domains apart (f frozen).

    L_D = -1/|S| sum_{s in S} sum_d 1[y_D = d] log q_d(s), q = softmax(domain_logits, dim=1),
    where every sample/pixel s of the batch has the same domain ``domain_label`` (0 = source,
    1 = target by the convention of ``DomainClassifier``); call once per domain batch and add.
    domain_logits: (N, D) pooled or (N, D, h, w) per pixel (``DomainClassifier`` gives the latter).
    """
    num_domains = domain_logits.shape[1]
    if not 0 <= int(domain_label) < num_domains:
        raise ValueError(f"domain_label must be in [0, {num_domains - 1}], got {domain_label}")
    return -F.log_softmax(domain_logits, dim=1).select(1, int(domain_label)).mean()


def domain_confusion_loss(domain_logits: torch.Tensor) -> torch.Tensor:
    """Tzeng L_conf: the representation f makes the domain classifier maximally confused (theta_D frozen).

    L_conf = -1/|S| sum_{s in S} sum_d (1/D) log q_d(s), q = softmax(domain_logits, dim=1): the
    cross-entropy of q against the uniform distribution over D domains. Its minimum is log D,
    reached exactly when q is uniform (it is not 0, and it is not gradient reversal: a strong
    classifier still gives a well-defined target). Applied to source and target features alike.
    domain_logits: (N, D) or (N, D, h, w). Returns a scalar.
    """
    return -F.log_softmax(domain_logits, dim=1).mean(dim=1).mean()


class SoftLabels(nn.Module):
    """Tzeng soft labels l(k): per-class average source softmax at temperature T, over source PIXELS.

    l(k) = mean over source pixels p with y_p = k of softmax(z_p / T), z_p the segmenter's logits.
    Kept as buffers, so ``state_dict()`` carries them into checkpoints:
      ``soft_labels`` (K, K) float32, row k = l(k) (zeros until class k is seen);
      ``seen`` (K,) bool, whether row k holds an estimate.

    Two estimates (``adapt.soft_label_estimate``):

    - ``update`` (``running``, the default): an exponential moving average of per-batch class
      averages. The source model keeps training during adaptation, so its class relationships
      drift; a recent average follows the model the loss is applied with, at no extra forward
      pass. The first batch that contains class k sets l(k); later batches fold in as
      l(k) <- momentum * l(k) + (1 - momentum) * batch_mean_k; classes absent from a batch are untouched.
    - ``class_totals`` summed over the whole source set, then ``assign`` (``source_set``, the
      paper's: the average over the source examples of each class, with the model adaptation
      starts from, then fixed).
    """

    soft_labels: torch.Tensor
    seen: torch.Tensor

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.register_buffer("soft_labels", torch.zeros(num_classes, num_classes))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    @torch.no_grad()
    def update(
        self,
        source_logits: torch.Tensor,
        source_labels: torch.Tensor,
        temperature: float,
        momentum: float = 0.99,
        all_reduce=None,
    ) -> None:
        """Fold one source batch into the estimate. No gradient reaches the buffers.

        source_logits: (N, K, H, W); source_labels: (N, H, W) int64, 255 = ignore.
        Per class k: sums_k = sum_{p: y_p = k} softmax(z_p / T) (K-vector), counts_k = #{p: y_p = k}.
        ``all_reduce``, if given, sums across data-parallel workers so that all keep identical soft
        labels: it is called once with one float32 tensor (K, K + 1) = [sums | counts] and must
        either return the summed tensor or sum in place and return None (so
        ``torch.distributed.all_reduce`` can be passed as is). Then for each k with counts_k > 0:
        l(k) = sums_k / counts_k if not seen yet, else the EMA with ``momentum``.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        k = self.num_classes
        stats = self.class_totals(source_logits, source_labels, temperature)
        if all_reduce is not None:
            reduced = all_reduce(stats)
            if reduced is not None and isinstance(reduced, torch.Tensor):
                stats = reduced
        stats = stats.to(self.soft_labels.device)
        counts = stats[:, k]
        present = counts > 0
        batch_mean = stats[:, :k] / counts.clamp_min(1.0).unsqueeze(1)
        ema = momentum * self.soft_labels + (1.0 - momentum) * batch_mean
        new = torch.where(self.seen.unsqueeze(1), ema, batch_mean)
        self.soft_labels.copy_(torch.where(present.unsqueeze(1), new, self.soft_labels))
        self.seen.logical_or_(present)

    @torch.no_grad()
    def class_totals(
        self, source_logits: torch.Tensor, source_labels: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """(K, K + 1) float32 [sums | counts] of one source batch: row k sums softmax(z_p / T) over the
        pixels p labeled k, and counts them. Summing these over batches (and workers) and dividing
        gives the soft labels of all those pixels (``assign``)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        k = self.num_classes
        if source_logits.dim() != 4 or source_logits.shape[1] != k:
            raise ValueError(f"source_logits must be (N, {k}, H, W), got {tuple(source_logits.shape)}")
        probs = F.softmax(source_logits.detach().float() / temperature, dim=1)
        probs = probs.permute(0, 2, 3, 1).reshape(-1, k)
        labels = source_labels.reshape(-1).to(probs.device)
        valid = labels != IGNORE_INDEX
        labels, probs = labels[valid], probs[valid]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"source labels must be in [0, {k - 1}] or {IGNORE_INDEX}")
        stats = torch.zeros(k, k + 1, dtype=torch.float32, device=probs.device)
        stats[:, :k].index_add_(0, labels, probs)
        stats[:, k] = torch.bincount(labels, minlength=k).float()
        return stats

    @torch.no_grad()
    def assign(self, totals: torch.Tensor) -> None:
        """Set l(k) = sums_k / counts_k from accumulated ``class_totals`` (the paper's estimate: the
        average over the source set); classes never seen stay unset."""
        k = self.num_classes
        totals = totals.to(self.soft_labels.device)
        counts = totals[:, k]
        present = counts > 0
        mean = totals[:, :k] / counts.clamp_min(1.0).unsqueeze(1)
        self.soft_labels.copy_(torch.where(present.unsqueeze(1), mean, torch.zeros_like(mean)))
        self.seen.copy_(present)


def soft_label_loss(
    target_logits: torch.Tensor,
    sparse_labels: torch.Tensor,
    soft_labels: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Tzeng L_soft on the labeled target pixels, at temperature T.

    For each labeled target pixel p of class k = y_p with a known soft label (seen[k]):
    L_soft = -1/|Q| sum_{p in Q} sum_i l(k)_i log softmax(z_p / T)_i, Q = those pixels.
    Follows Tzeng's formula: no Hinton T^2 factor (Hinton et al. multiply by T^2 to keep gradient
    magnitudes comparable across temperatures; here the weight nu absorbs that scale, so nu and T
    are swept together). Pixels labeled 255 or of a class without a soft label are skipped; if none
    is left the loss is 0 with a gradient path, not NaN.
    target_logits: (N, K, H, W); sparse_labels: (N, H, W) int64; soft_labels: (K, K), row k = l(k)
    (treated as a constant); seen: (K,) bool. Returns a scalar.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = target_logits.shape[1]
    if soft_labels.shape != (k, k) or seen.shape != (k,):
        raise ValueError(
            f"soft_labels must be ({k}, {k}) and seen ({k},), got {tuple(soft_labels.shape)} and {tuple(seen.shape)}"
        )
    labels = sparse_labels.reshape(-1).to(target_logits.device)
    valid = labels != IGNORE_INDEX
    if bool(valid.any()) and (int(labels[valid].min()) < 0 or int(labels[valid].max()) >= k):
        raise ValueError(f"target labels must be in [0, {k - 1}] or {IGNORE_INDEX}")
    seen = seen.to(device=target_logits.device, dtype=torch.bool)
    selected = valid & seen[torch.where(valid, labels, torch.zeros_like(labels))]
    if not bool(selected.any()):
        return _empty_loss(target_logits)
    log_p = F.log_softmax(target_logits / temperature, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    targets = soft_labels.detach().to(log_p)[labels[selected]]
    return -(targets * log_p[selected]).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# LabOR's selector network S (Shin et al., ICCV 2021): pseudo labels + MCD discrepancy
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def class_balanced_pseudo_labels(probs: torch.Tensor, portion: float = 0.5, max_threshold: float = 0.9) -> torch.Tensor:
    """Class-balanced confident pseudo labels (IAST, Mei et al., ECCV 2020; used by LabOR for y_hat).

    With c_p = max_k probs_p and k_p = argmax_k probs_p, for each class k with n_k >= 1 pixels
    predicted as k (over the whole batch): sort their confidences descending c_(1) >= ... >= c_(n_k),
    take m_k = max(1, ceil(portion * n_k)) and threshold_k = min(max_threshold, c_(m_k)).
    Pixel p gets label k_p if c_p >= threshold_{k_p}, else 255. So each predicted class keeps at
    least its ceil(portion * n_k) most confident pixels (more on ties), plus every pixel with
    confidence >= max_threshold; rare classes are not drowned by one global threshold.
    probs: (N, K, H, W) probabilities (e.g. softmax of G's target logits). Returns (N, H, W) int64,
    no gradient. portion in (0, 1].
    """
    if not 0.0 < portion <= 1.0:
        raise ValueError(f"portion must be in (0, 1], got {portion}")
    if probs.dim() != 4:
        raise ValueError(f"probs must be (N, K, H, W), got {tuple(probs.shape)}")
    conf, pred = probs.detach().max(dim=1)
    thresholds = torch.full((probs.shape[1],), float("inf"), dtype=conf.dtype, device=conf.device)
    flat_conf, flat_pred = conf.reshape(-1), pred.reshape(-1)
    for k in torch.unique(flat_pred).tolist():
        c = flat_conf[flat_pred == k]
        n = c.numel()
        m = max(1, math.ceil(portion * n))
        mth_largest = torch.kthvalue(c, n - m + 1).values  # the m-th largest = (n-m+1)-th smallest
        thresholds[k] = torch.clamp(mth_largest, max=max_threshold)
    keep = conf >= thresholds[pred]
    return torch.where(keep, pred, torch.full_like(pred, IGNORE_INDEX))


def iast_threshold_update(
    thresholds: torch.Tensor,
    confidence: torch.Tensor,
    predicted: torch.Tensor,
    alpha: float = 0.2,
    gamma: float = 8.0,
    momentum: float = 0.9,
) -> torch.Tensor:
    """IAST's instance-adaptive class thresholds after one image (Mei et al., ECCV 2020, Sec. 3.2).

    For each class c, with theta_c the threshold so far and C_c the confidences (max_k p) of the
    image's pixels predicted as c, together with theta_c itself (so a class absent from the image
    keeps its threshold):
        psi_c = percentile(C_c + [theta_c], 100 * (1 - alpha * theta_c ** gamma))   (linear interpolation)
        theta_c <- momentum * theta_c + (1 - momentum) * psi_c, and 0.999 where that reaches 1.
    A class the model is sure of (theta near 1) keeps its top alpha of pixels; an unsure one
    (theta ** gamma near 0) keeps only its most confident few, so noisy classes do not flood the
    pseudo labels, and the thresholds move smoothly from image to image.
    thresholds: (K,) float; confidence: (H, W) or (P,) float in [0, 1]; predicted: same shape, int64
    in [0, K). Returns the new (K,) thresholds (float64). One sort for all classes.
    """
    num_classes = thresholds.shape[0]
    theta = thresholds.detach().to(torch.float64)
    conf = torch.cat([confidence.detach().reshape(-1).to(torch.float64).to(theta.device), theta])
    cls = torch.cat([predicted.detach().reshape(-1).to(theta.device), torch.arange(num_classes, device=theta.device)])
    # Sorting class * 2 + confidence orders by class, then confidence (confidence lies in [0, 1]).
    ordered = torch.sort(cls.to(torch.float64) * 2.0 + conf).values - torch.sort(cls).values.to(torch.float64) * 2.0
    counts = torch.bincount(cls, minlength=num_classes)
    first = torch.cumsum(counts, 0) - counts
    quantile = 1.0 - alpha * theta.pow(gamma)
    position = quantile.clamp(0.0, 1.0) * (counts - 1).to(torch.float64)
    low = position.floor()
    high = position.ceil()
    value_low = ordered[first + low.to(torch.int64)]
    value_high = ordered[first + high.to(torch.int64)]
    psi = value_low + (value_high - value_low) * (position - low)
    updated = momentum * theta + (1.0 - momentum) * psi
    return torch.where(updated >= 1.0, torch.full_like(updated, 0.999), updated)


class IASTPseudoLabels(nn.Module):
    """Pseudo labels of G for LabOR's selector network S by IAST's rule (Mei et al., ECCV 2020), which LabOR follows.

    Keeps the class thresholds theta (K,) as a buffer (in the checkpoint), starting at 0.9 as in
    IAST's code. For each image of a batch, in order: theta is updated by ``iast_threshold_update``
    on that image's prediction, then the image's pixels whose confidence reaches the threshold of
    their predicted class keep it as pseudo label; the rest are 255.

    IAST labels its whole target set in one offline pass per self-training round; here the labels
    come online from G's prediction of each training batch, with the thresholds carried from image
    to image (and from batch to batch) as IAST carries them through its pass. Under data
    parallelism each worker updates on its own images and ``all_reduce`` averages the thresholds
    after every batch, so all workers stay identical.
    """

    thresholds: torch.Tensor

    def __init__(
        self, num_classes: int, alpha: float = 0.2, gamma: float = 8.0, momentum: float = 0.9, initial: float = 0.9
    ):
        super().__init__()
        self.alpha, self.gamma, self.momentum = float(alpha), float(gamma), float(momentum)
        self.register_buffer("thresholds", torch.full((num_classes,), float(initial)))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.thresholds.shape[0]}, alpha={self.alpha}, gamma={self.gamma}, momentum={self.momentum}"
        )

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, all_reduce=None) -> torch.Tensor:
        """probs: (N, K, H, W) probabilities -> (N, H, W) int64 pseudo labels, 255 where not confident.

        ``all_reduce`` (optional) sums a tensor across workers in place or returns the sum, like
        ``torch.distributed.all_reduce``; it is called once per batch.
        """
        if probs.dim() != 4 or probs.shape[1] != self.thresholds.shape[0]:
            raise ValueError(f"probs must be (N, {self.thresholds.shape[0]}, H, W), got {tuple(probs.shape)}")
        conf, pred = probs.detach().max(dim=1)
        labels = torch.full_like(pred, IGNORE_INDEX)
        theta = self.thresholds.to(torch.float64)
        for n in range(probs.shape[0]):
            theta = iast_threshold_update(theta, conf[n], pred[n], self.alpha, self.gamma, self.momentum)
            keep = conf[n].to(torch.float64) >= theta.to(conf.device)[pred[n]]
            labels[n] = torch.where(keep, pred[n], labels[n])
        if all_reduce is not None:
            stats = torch.cat([theta.to(torch.float32), torch.ones(1, device=theta.device)])
            reduced = all_reduce(stats)
            stats = reduced if isinstance(reduced, torch.Tensor) else stats
            theta = (stats[:-1] / stats[-1]).to(torch.float64)
        self.thresholds.copy_(theta.to(self.thresholds))
        return labels


def pseudo_label_loss(head_logits: Sequence[torch.Tensor], pseudo_labels: torch.Tensor) -> torch.Tensor:
    """LabOR pseudo-label loss of the selector heads: CE(C_i(F(x_t)), y_hat), averaged over heads.

    L = 1/H sum_i [-1/|P| sum_{p in P} log softmax(C_i(F(x_t))_p)[y_hat_p]], P = pixels whose
    pseudo label is not 255 (see ``class_balanced_pseudo_labels``). head_logits: sequence of H >= 1
    tensors (N, K, H, W); pseudo_labels: (N, H, W) int64. No pseudo-labeled pixel gives 0 with a
    gradient path into every head.
    """
    heads = tuple(head_logits)
    if not heads:
        raise ValueError("head_logits must hold at least one head")
    if not bool((pseudo_labels != IGNORE_INDEX).any()):
        return _empty_loss(*heads)
    return sum(F.cross_entropy(logits, pseudo_labels, ignore_index=IGNORE_INDEX) for logits in heads) / len(heads)


def classifier_discrepancy(p1: torch.Tensor, p2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MCD classifier discrepancy (Saito et al., CVPR 2018; LabOR's selector heads C1, C2).

    d(p1, p2) = 1/(K |P|) sum_{p in P} sum_k |p1_pk - p2_pk|, P = all pixels, or those where
    ``mask`` is True. Always >= 0: the heads maximise it on target (minimise -d), the backbone F
    minimises it. p1, p2: probability maps (N, K, H, W); mask: optional (N, H, W) bool.
    An empty mask gives 0 with a gradient path.
    """
    if p1.shape != p2.shape:
        raise ValueError(f"p1 and p2 must have the same shape, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    diff = (p1 - p2).abs()
    if mask is None:
        return diff.mean()
    mask = mask.to(device=diff.device, dtype=torch.bool)
    if mask.shape != (diff.shape[0],) + diff.shape[2:]:
        raise ValueError(
            f"mask must be (N, H, W) = {(diff.shape[0],) + tuple(diff.shape[2:])}, got {tuple(mask.shape)}"
        )
    count = int(mask.sum())
    if count == 0:
        return _empty_loss(p1, p2)
    return (diff * mask.unsqueeze(1)).sum() / (count * diff.shape[1])
