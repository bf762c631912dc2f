import math

import pytest
import torch

from trainers.metrics import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_counts_and_ignores_255():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]


def test_iou_by_hand():
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 1/1
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_absent_class_is_skipped_not_zero():
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((3 / 6 + 4 / 7) / 2)


def test_class_only_predicted_counts_as_zero():
    cm = torch.tensor([[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert iou_per_class(cm)[2] == 0.0
    assert mean_iou(cm) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_summed_confusion_equals_whole_dataset():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (6, 5, 5))
    pred = torch.randint(0, 4, (6, 5, 5))
    whole = confusion_matrix(pred, target, 4)
    halves = confusion_matrix(pred[:2], target[:2], 4) + confusion_matrix(pred[2:], target[2:], 4)
    assert torch.equal(whole, halves)


def test_out_of_range_target_is_refused():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 3), 3)


class _HalfAndHalf(torch.nn.Module):
    """Logits at the input's 2x2: class 1 scores -1 on the left column, +1 on the right; class 0 scores 0."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 4, 2, 2)
        logits[:, 1] = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]])
        logits[:, 2:] = -5.0
        return (logits,)


def test_native_resolution_miou_by_hand():
    """Prediction at 2x2 upsampled to the 4x4 label, then scored with the Cityscapes benchmark's formula.

    Bilinear upsampling (align_corners=False) samples source columns -0.25, 0.25, 0.75, 1.25: class 1's
    logit becomes -1, -0.5, 0.5, 1, so the left half is class 0 and the right half class 1. Against
    the label below (255 ignored): class 0 TP 6, FN 1, FP 1 -> 6/8; class 1 TP 6, FN 1, FP 2 -> 6/9;
    class 2 (one pixel, never predicted) 0/1 -> 0; class 3 in neither -> not counted.
    mIoU = (6/8 + 6/9 + 0) / 3, as the benchmark's getIouScoreForLabel and nanmean compute it.
    """
    from trainers.metrics import predict_confusion

    label = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [255, 0, 1, 2]])
    dataset = [(torch.zeros(3, 2, 2), label)]
    confusion = predict_confusion(_HalfAndHalf(), dataset, [0], 4, batch_size=1, device=torch.device("cpu"))
    assert confusion.tolist() == [[6, 1, 0, 0], [1, 6, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert iou_per_class(confusion)[:3].tolist() == pytest.approx([6 / 8, 6 / 9, 0.0])
    assert mean_iou(confusion) == pytest.approx((6 / 8 + 6 / 9 + 0.0) / 3)
