"""The names the config accepts, in a module that imports nothing heavy.

``--help`` lists them and ``experiment_config`` validates against them without importing torch,
torchvision or Ray (which takes seconds). The registries that implement them import torch
(``trainers.models.MODELS``, ``trainers.data``'s formats and class sets); ``tests/test_choices.py``
checks that every list here names exactly what its registry holds, so a name added to a registry and
not here (or the reverse) fails a test that says which.

The selection rules need no list here: their registry, ``pixel_selectors.rules.RULES``, imports
no torch, and the config reads their names and kinds from it.
"""

from __future__ import annotations

# pixel_selectors.budget.REGION_SPREADS
REGION_SPREADS: tuple[str, ...] = ("score", "share")
# trainers.models.MODELS
MODELS: tuple[str, ...] = ("small_segnet", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv2_resnet101")
# trainers.models.MIN_BATCH_SIZE: models that cannot train on fewer images per step (default 1)
MIN_BATCH_SIZE: dict[str, int] = {"deeplabv3_resnet101": 2, "deeplabv3_mobilenet_v3_large": 2}
# trainers.models.IMAGENET_WEIGHTS: models whose backbone has torchvision ImageNet weights (model.pretrained: imagenet)
IMAGENET_MODELS: tuple[str, ...] = ("deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv2_resnet101")
# trainers.models.DEEPLABV2_STYLES
DEEPLABV2_STYLES: tuple[str, ...] = ("ripu", "adaptsegnet")
# trainers.data.EVAL_RESOLUTIONS
EVAL_RESOLUTIONS: tuple[str, ...] = ("native", "input")
# trainers.data.SOURCE_FORMATS / TARGET_FORMATS ('folder': images, label PNGs and a dataset.yaml)
SOURCE_FORMATS: tuple[str, ...] = ("gta5", "synthia", "cityscapes", "folder")
TARGET_FORMATS: tuple[str, ...] = ("cityscapes", "folder")
# trainers.data.CLASS_SETS (names only: the class lists stay in trainers/data/labelmaps.py)
CLASS_SETS: tuple[str, ...] = ("cityscapes19", "synthia16", "synthia13", "synthetic", "synthetic_v2")
# trainers.data.synthetic: the class set each generator version of the bundled domains is labeled in
SYNTHETIC_CLASS_SET_OF_VERSION: dict[int, str] = {
    1: "synthetic",
    2: "synthetic_v2",
    3: "synthetic_v2",
    4: "synthetic_v2",
}
# trainers.data.CLASS_SET_FROM_DATASET: data.class_set that takes the target dataset YAML's classes
CLASS_SET_FROM_DATASET = "dataset"
# trainers.data.cityscapes.CITYSCAPES_SPLITS
SPLITS: tuple[str, ...] = ("train", "val", "test")
# trainers.losses.PSEUDO_LABEL_RULES / SOFT_LABEL_ESTIMATES
PSEUDO_LABEL_RULES: tuple[str, ...] = ("iast", "class_balanced")
SOFT_LABEL_ESTIMATES: tuple[str, ...] = ("running", "source_set")
