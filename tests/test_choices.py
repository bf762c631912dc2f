"""The light name lists of ``experiment_config.choices`` (what --help shows and the config accepts without
importing torch) name exactly what the registries implement. (The selection rules have no such list:
the config reads their registry, ``pixel_selectors.rules``, itself; see tests/test_rules.py.)"""

from experiment_config import choices
from pixel_selectors.budget import REGION_SPREADS
from trainers import data, losses, models
from trainers.data.cityscapes import CITYSCAPES_SPLITS


def _same(light, registry, what: str, registry_name: str) -> None:
    missing, extra = sorted(set(registry) - set(light)), sorted(set(light) - set(registry))
    assert not missing and not extra, (
        f"experiment_config/choices.py {what} disagrees with {registry_name}: add {missing}, remove {extra}"
    )


def test_light_lists_name_exactly_what_the_registries_hold():
    _same(choices.REGION_SPREADS, REGION_SPREADS, "REGION_SPREADS", "pixel_selectors.budget.REGION_SPREADS")
    _same(choices.MODELS, models.MODELS, "MODELS", "trainers.models.MODELS")
    assert choices.MIN_BATCH_SIZE == models.MIN_BATCH_SIZE, "choices.MIN_BATCH_SIZE != trainers.models.MIN_BATCH_SIZE"
    _same(choices.DEEPLABV2_STYLES, models.DEEPLABV2_STYLES, "DEEPLABV2_STYLES", "trainers.models.DEEPLABV2_STYLES")
    _same(choices.EVAL_RESOLUTIONS, data.EVAL_RESOLUTIONS, "EVAL_RESOLUTIONS", "trainers.data.EVAL_RESOLUTIONS")
    _same(choices.SOURCE_FORMATS, data.SOURCE_FORMATS, "SOURCE_FORMATS", "trainers.data.SOURCE_FORMATS")
    _same(choices.TARGET_FORMATS, data.TARGET_FORMATS, "TARGET_FORMATS", "trainers.data.TARGET_FORMATS")
    _same(choices.CLASS_SETS, data.CLASS_SETS, "CLASS_SETS", "trainers.data.CLASS_SETS")
    _same(choices.SPLITS, CITYSCAPES_SPLITS, "SPLITS", "trainers.data.cityscapes.CITYSCAPES_SPLITS")
    _same(
        choices.PSEUDO_LABEL_RULES,
        losses.PSEUDO_LABEL_RULES,
        "PSEUDO_LABEL_RULES",
        "trainers.losses.PSEUDO_LABEL_RULES",
    )
    _same(
        choices.SOFT_LABEL_ESTIMATES,
        losses.SOFT_LABEL_ESTIMATES,
        "SOFT_LABEL_ESTIMATES",
        "trainers.losses.SOFT_LABEL_ESTIMATES",
    )
