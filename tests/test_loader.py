"""The DataLoader pipeline: batches are a pure function of (seed, step, rank), whoever loads them."""

import torch
from torch.utils.data import Dataset

from trainers.loader import SOURCE_STREAM, TARGET_STREAM, batch_indices, evaluation_loader, training_loader


class RandomlyAugmented(Dataset):
    """Item i: a constant image of value i plus torch-RNG noise (the stand-in for a random crop and flip)."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        noise = torch.rand(3, 4, 4)
        return torch.full((3, 4, 4), float(index)) + noise, torch.full((4, 4), index, dtype=torch.int64)


def batches(workers, first_step=0, steps=6, stream=SOURCE_STREAM, rank=0, world=1):
    loader = training_loader(
        RandomlyAugmented(), 3, first_step, steps, seed=5, stream=stream, rank=rank, world=world, workers=workers
    )
    return [(images.clone(), labels.clone()) for images, labels in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_identical_batches_with_0_and_2_loader_workers_and_after_a_resume():
    serial = batches(workers=0)
    assert same(serial, batches(workers=2))
    assert same(serial[4:], batches(workers=2, first_step=4, steps=2))  # a job resumed at step 4
    for step, (_, labels) in enumerate(serial):  # the items are the ones batch_indices names
        assert labels[:, 0, 0].tolist() == batch_indices(10, 3, step, 5)
    # The augmentation draws differ between items, steps and streams (no draw is shared by accident).
    noise = [images - images.floor() for images, _ in serial]
    assert not torch.equal(noise[0][0], noise[0][1]) and not torch.equal(noise[0][0], noise[2][0])
    assert not same(serial, batches(workers=0, stream=TARGET_STREAM))


def test_loading_leaves_the_training_processs_rng_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    batches(workers=0, steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_ranks_get_disjoint_items_and_evaluation_keeps_order():
    ranks = [batches(workers=0, steps=1, rank=r, world=2)[0][1][:, 0, 0].tolist() for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    dataset = [(torch.zeros(3, 2, 2), torch.full((4, 4), i)) for i in range(5)]
    seen = [label[0, 0].item() for _, labels in evaluation_loader(dataset, [4, 1, 3], batch_size=2) for label in labels]
    assert seen == [4, 1, 3]
