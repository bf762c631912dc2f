from pathlib import Path

import pytest

from experiment_config import (
    SMOKE_OVERRIDES,
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_set_args,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == ExperimentConfig()


def test_set_overrides_are_typed():
    cfg = load_config(None, ["adapt.lr=0.01", "selection.points_per_image=7", "train.use_gpu=false"])
    assert cfg.adapt.lr == 0.01 and isinstance(cfg.adapt.lr, float)
    assert cfg.selection.points_per_image == 7
    assert cfg.train.use_gpu is False


def test_int_is_accepted_for_float_but_not_float_for_int():
    assert load_config(None, ["adapt.lr=1"]).adapt.lr == 1.0
    with pytest.raises(ConfigError, match=r"'selection.points_per_image': must be an integer, got 2.5"):
        load_config(None, ["selection.points_per_image=2.5"])


def test_partial_yaml_keeps_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adapt:\n  steps: 5\n")
    cfg = load_config(path)
    assert cfg.adapt.steps == 5 and cfg.adapt.lr == ExperimentConfig().adapt.lr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adapt.lrr=0.1"], "config key 'adapt.lrr': unknown key; 'adapt' has: steps, batch_size, lr"),
        (["adpt.lr=0.1"], "config key 'adpt.lr': unknown section 'adpt'"),
        (
            ["selection.rule=labor_pp"],
            "config key 'selection.rule': unknown rule 'labor_pp'; choose one of: entropy, labor_ppl",
        ),
        (["selection.unlabeled_classes=pole"], "config key 'selection.unlabeled_classes': must be a list of strings"),
        (
            ["selection.unlabeled_classes=[pole]", "selection.oracle=human"],
            "config key 'selection.unlabeled_classes': withholds classes from the simulated oracle only",
        ),
        (["model.name=resnet"], "config key 'model.name': unknown model 'resnet'"),
        (
            ["selection.region_spread=even"],
            "config key 'selection.region_spread': unknown region_spread 'even'; choose one of: score, share",
        ),
        (["selection.points_per_image=0"], "config key 'selection.points_per_image': must be >= 1, got 0"),
        (["selection.points_per_image=-3"], "must be >= 1, got -3"),
        (["adapt.lr=0"], "config key 'adapt.lr': must be > 0, got 0.0"),
        (["train.use_gpu=yes please"], "config key 'train.use_gpu': must be true or false"),
        (["adapt.steps=many"], "config key 'adapt.steps': must be an integer, got 'many'"),
        (["adapt.lr=.nan"], "config key 'adapt.lr': must be a finite number"),
        (["selection.points_per_image=100000"], "exceed the 8192 pixels of a 64x128 image"),
        (["selection.budget_fraction=-0.1"], "config key 'selection.budget_fraction': must be >= 0, got -0.1"),
        (["adapt.soft_label_temperature=0"], "config key 'adapt.soft_label_temperature': must be > 0, got 0.0"),
        (["data.class_set=cityscapes20"], "config key 'data.class_set': unknown class set 'cityscapes20'"),
        (["sweep.name=../escape"], "config key 'sweep.name': must be a plain folder name"),
        # Paths from the config stay under their roots: sweep.name is one folder under output_dir, and the
        # target splits are folders the dataset layout names, never a path of their own.
        (["sweep.name=.."], "config key 'sweep.name': must be a plain folder name"),
        (["sweep.name=/tmp/elsewhere"], "config key 'sweep.name': must be a plain folder name"),
        (["sweep.name=runs\\..\\x"], "config key 'sweep.name': must be a plain folder name"),
        (['sweep.name="a\tb"'], "config key 'sweep.name': must be a plain folder name (printable"),
        (
            ["data.target.pool_split=../../etc"],
            "config key 'data.target.pool_split': unknown split '../../etc'; choose one of: test, train, val",
        ),
        (["data.target.val_split=/etc"], "config key 'data.target.val_split': unknown split '/etc'"),
        (["noequals"], "--set expects key=value, got 'noequals'"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adapt:\n  stpes: 5\n")
    with pytest.raises(ConfigError, match=r"config key 'adapt.stpes': unknown key"):
        load_config(path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adapt:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/cfg.yaml")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfeadapt: {}\n", r"is not UTF-8 text \(byte 0xff at offset 0\)"),
        (b"adapt:\n  steps: 3\n  steps: 4\n", r"is not valid YAML at line 3, column 3: key 'steps' is given twice"),
        (b"- adapt\n- sweep\n", "must hold a mapping of sections, not list"),
        (b"just text\n", "must hold a mapping of sections, not str"),
        (b"adaptt: {steps: 3}\n", r"config key 'adaptt': unknown key; .* \(in '.*c.yaml'\)$"),
        (b"adapt: {steps: 0}\n", r"config key 'adapt.steps': must be >= 1, got 0 \(in '.*c.yaml'\)$"),
        (
            b"adapt: !!python/object:os.system {}\n",
            "is not valid YAML at line 1, column 8: could not determine a constructor",
        ),
    ],
)
def test_a_config_file_that_is_not_a_utf8_yaml_mapping_of_known_sections_is_named(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(tmp_path)


def test_yaml_merge_keys_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adapt: {<<: {steps: 3, lr: 0.5}, steps: 4}\n")
    cfg = load_config(path)
    assert (cfg.adapt.steps, cfg.adapt.lr) == (4, 0.5)


def test_section_must_be_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adapt: 3\n")
    with pytest.raises(ConfigError, match="config key 'adapt': must be a mapping"):
        load_config(path)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"adapt.lrr": {"grid": [1]}}, "sweep.search_space.adapt.lrr': not a tunable config key"),
        ({"adapt.lr": {"grid": []}}, "'grid' needs a non-empty list"),
        ({"adapt.lr": {"choice": []}}, "'choice' needs a non-empty list"),
        ({"adapt.lr": {"normal": [0, 1]}}, "unknown search kind 'normal'"),
        ({"adapt.lr": {"uniform": [1, 0.1]}}, "'uniform' needs low < high"),
        ({"adapt.lr": {"loguniform": [0, 0.1]}}, "'loguniform' needs low > 0"),
        ({"selection.points_per_image": {"grid": [5, 0]}}, "value 0 is invalid: must be >= 1, got 0"),
        ({"selection.rule": {"choice": ["labor_ppl", "nope"]}}, "value 'nope' is invalid: unknown rule 'nope'"),
        ({"adapt.lr": {"grid": [1], "choice": [2]}}, "must be one of"),
    ],
)
def test_search_space_errors(space, message):
    with pytest.raises(ConfigError) as err:
        with_overrides(ExperimentConfig(), {"sweep.search_space": space})
    assert message in str(err.value)


def test_parse_set_args_parses_yaml_values():
    assert parse_set_args(["a.b=[1, 2]", "c.d=true", "e.f=x"]) == {"a.b": [1, 2], "c.d": True, "e.f": "x"}


def test_smoke_overrides_are_valid_and_small():
    cfg = load_config(None, smoke=True)
    assert cfg.sweep.name == "smoke"
    assert cfg.data.height * cfg.data.width < ExperimentConfig().data.height * ExperimentConfig().data.width
    assert set(SMOKE_OVERRIDES) <= set(cfg.flat()) | {"sweep.search_space"}


def test_flat_and_hash():
    cfg = ExperimentConfig()
    flat = cfg.flat()
    assert flat["adapt.lr"] == cfg.adapt.lr and "sweep.search_space" not in flat
    changed = with_overrides(cfg, {"adapt.lr": 0.5})
    assert cfg.hash("data", "source") == changed.hash("data", "source")
    assert cfg.hash() != changed.hash()


@pytest.mark.parametrize("name", ["gta5_to_cityscapes.yaml", "synthia_to_cityscapes.yaml"])
def test_real_dataset_configs_load_and_take_root_overrides(name, tmp_path):
    cfg = load_config(ROOT / "configs" / name, [f"data.source.root={tmp_path}/src", f"data.target.root={tmp_path}/tgt"])
    assert cfg.data.source.root == f"{tmp_path}/src" and cfg.data.target.format == "cityscapes"
    assert cfg.train.use_gpu and cfg.model.name == "deeplabv2_resnet101"  # the papers' protocol (issue 17)
    # RIPU's global batch of 2 (configs' comments cite it; tests/test_paper_configs.py checks the rest)
    assert cfg.adapt.batch_size * cfg.train.num_workers == 2 and cfg.adapt.optimizer == "sgd"
    assert cfg.data.eval_resolution == "native" and cfg.model.pretrained == "imagenet"


def test_a_config_error_survives_pickling():
    import pickle

    # Ray and Tune pickle a trial's exception to the driver; unpicklable, it arrived as a TypeError.
    err = pickle.loads(pickle.dumps(ConfigError("adapt.lr", "must be > 0, got 0")))
    assert (err.key, err.problem, str(err)) == (
        "adapt.lr",
        "must be > 0, got 0",
        "config key 'adapt.lr': must be > 0, got 0",
    )


def test_a_pbt_trial_with_a_case_keeps_the_axes_pbt_mutates():
    # A trial's config is the base with its sampled case applied: the cases axis is done with, but a
    # PBT trial is only valid with the axes PBT mutates (without them every PBT trial failed).
    space = {
        "cases": {
            "grid": [
                {"adapt.lr": 0.001, "selection.points_per_image": 5},
                {"adapt.lr": 1.0, "selection.points_per_image": 3},
            ]
        },
        "adapt.confusion_weight": {"uniform": [0.0, 1.0]},
    }
    base = with_overrides(load_config(None), {"sweep.scheduler": "pbt", "sweep.search_space": space})
    trial = with_overrides(base, {"cases": space["cases"]["grid"][1], "adapt.confusion_weight": 0.3})
    assert trial.sweep.search_space == {"adapt.confusion_weight": {"uniform": [0.0, 1.0]}}
    assert (trial.adapt.lr, trial.selection.points_per_image, trial.adapt.confusion_weight) == (1.0, 3, 0.3)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_a_config_file_that_holds_no_mapping_is_refused_in_one_line(tmp_path, text):
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "empty.yaml")
    assert (
        str(err.value)
        == f"config file '{tmp_path / 'empty.yaml'}' holds no mapping of sections (it is empty); give at least one section"
    )
