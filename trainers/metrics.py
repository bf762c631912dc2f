"""Segmentation metrics from a confusion matrix.

The confusion matrix is the one quantity to sum across batches and Train workers: summing counts
and then dividing gives the exact dataset mIoU however the data were sharded (averaging per-worker
mIoUs would not).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from .loader import evaluation_loader


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class. Pixels with ``ignore_index`` skip."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    t = target[valid].to(torch.int64)
    p = pred[valid].to(torch.int64)
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"target holds class {int(t.max())} outside 0..{num_classes - 1}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU_k = TP / (TP + FP + FN) as float64; NaN for a class absent from both truth and prediction."""
    confusion = confusion.to(torch.float64)
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over classes that occur in the truth or the prediction (NaN classes are skipped)."""
    iou = iou_per_class(confusion)
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def mean_iou_over(confusion: torch.Tensor, indices) -> float:
    """Mean IoU of the classes ``indices`` only, their IoUs taken from the whole (K, K) ``confusion``
    (a pixel of another class predicted as one of them still counts against it), NaN classes skipped.

    SYNTHIA -> Cityscapes' mIoU-13: the 16-class model's IoUs of the 13 classes other than wall,
    fence and pole, averaged (not a 13-class re-evaluation).
    """
    iou = iou_per_class(confusion)[list(indices)]
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


@torch.no_grad()
def predict_confusion(
    model: nn.Module,
    dataset: Dataset,
    indices: list[int],
    num_classes: int,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
) -> torch.Tensor:
    """Confusion matrix (K, K) of head 0 of ``model`` over ``dataset[indices]``.

    A label larger (or smaller) than the input is scored at its own size: the logits are upsampled
    bilinearly to it, then the argmax is taken (AdaptSegNet's and RIPU's evaluation; the Cityscapes
    benchmark scores 2048x1024). One image at a time, so memory holds one full-size logit map.
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loader = evaluation_loader(dataset, indices, batch_size, workers=workers, pin_memory=device.type == "cuda")
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))[0]
        for item, label in zip(logits, labels):
            label = label.to(device, non_blocking=True)
            if tuple(label.shape) != tuple(item.shape[-2:]):
                item = F.interpolate(item[None].float(), size=tuple(label.shape), mode="bilinear", align_corners=False)[
                    0
                ]
            confusion += confusion_matrix(item.argmax(dim=0), label, num_classes)
    model.train(was_training)
    return confusion
