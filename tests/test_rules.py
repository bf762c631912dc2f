"""The selection rules' registry (pixel_selectors/rules.py): one record per rule, and every question
about a rule (name, kind, network, tiling, window) answered by that record alone."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from experiment_config import ConfigError, load_config
from experiment_config import choices as light_lists
from experiment_config.schema import NO_SELECTION, SelectionConfig
from orchestrator.round.loop import selector_network_trains
from pixel_selectors import RegionQuery
from pixel_selectors.apply import select_image
from pixel_selectors.rules import KINDS, NETWORKS, REGIONS, RULES, SEGMENTER, SELECTOR_NETWORK, SelectionRule


def test_every_rule_has_one_record_naming_its_function_kind_network_and_window():
    for name, rule in RULES.items():
        assert rule.name == name and rule.kind in KINDS and rule.reads in NETWORKS
        module, attr = rule.function.split(":")
        assert module.startswith("pixel_selectors.") and rule.select.__name__ == attr
        assert rule.window_key is None or rule.window_key in {f.name for f in dataclasses.fields(SelectionConfig)}
        assert rule.kind == REGIONS or not rule.tiles
    assert [name for name, rule in RULES.items() if rule.tiles] == ["region_impurity_regions", "random_regions"]
    assert {name for name, rule in RULES.items() if rule.reads == SELECTOR_NETWORK} == {"labor_ppl", "labor_spl"}
    # The config offers exactly these names and keeps no list of its own.
    offered = {f.name: f for f in dataclasses.fields(SelectionConfig)}["rule"].metadata["choices"]
    assert set(offered) == {*RULES, NO_SELECTION}
    assert not any(hasattr(light_lists, old) for old in ("SELECTORS", "SELECTOR_KIND"))
    with pytest.raises(ValueError, match="only a region rule can tile"):
        SelectionRule("x", "pixel_selectors.labor:labor_ppl", "points", SEGMENTER, tiles=True)


def test_the_registry_and_the_config_import_without_torch():
    probe = (
        "import sys, experiment_config, pixel_selectors; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)}
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-500:]


def test_the_config_refuses_an_unknown_rule_naming_the_choices():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"selection.rule": "labor_pp"})
    choices = ", ".join(sorted([*RULES, NO_SELECTION]))
    assert str(err.value) == f"config key 'selection.rule': unknown rule 'labor_pp'; choose one of: {choices}"


def test_a_rules_kind_and_network_are_decided_by_its_record_alone(monkeypatch):
    """Make 'random' a region rule that reads S, in the registry only: the config, select_image and the
    round loop all follow the record."""
    changed = dataclasses.replace(
        RULES["random"],
        function=RULES["random_regions"].function,
        kind=REGIONS,
        reads=SELECTOR_NETWORK,
        window_key="region_size",
    )
    before = load_config(None, {"selection.rule": "random", "selection.rounds": 2})
    assert not selector_network_trains(before, 1)  # random reads G: S need not train
    monkeypatch.setitem(RULES, "random", changed)
    with pytest.raises(ConfigError, match="spends a pixel budget"):
        load_config(None, {"selection.rule": "random"})
    cfg = load_config(None, {"selection.rule": "random", "selection.budget_fraction": 0.1, "selection.rounds": 2})
    assert selector_network_trains(cfg, 1)
    probs = [torch.full((3, 9, 9), 1 / 3)]
    query = select_image("random", probs, budget_pixels=9, params=changed.params(cfg.selection, 9))
    assert isinstance(query, RegionQuery) and query.num_pixels == 9
    assert np.array_equal(
        query.indices, select_image("random_regions", probs, budget_pixels=9, params={"k": 3}).indices
    )


def test_a_config_that_still_names_the_rule_selector_is_refused_naming_the_new_key(tmp_path, monkeypatch):
    import yaml

    from experiment_config.loading import RENAMED_KEYS
    from orchestrator import command_line
    from orchestrator.sweep.command import build_parser

    ((old, new),) = RENAMED_KEYS.items()
    section, leaf = old.split(".")
    problem = f"renamed to '{new}' (the selection rule; 'selector' names only LabOR's selector network S)"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({section: {leaf: "labor_spl"}}))
    monkeypatch.chdir(tmp_path)
    via_set = f"config key '{old}': {problem}"
    attempts = [
        (f"{via_set} (in 'old.yaml')", lambda: load_config("old.yaml")),
        (via_set, lambda: load_config(None, {old: "random"})),
        (via_set, lambda: command_line.resolve_config(command_line.parse_args(build_parser(), [f"{old}=random"]))),
        (
            f"config key 'sweep.search_space.{old}': {problem}",
            lambda: load_config(None, {"sweep.search_space": {old: {"grid": ["random", "entropy"]}}}),
        ),
        (
            f"config key 'sweep.search_space.cases': case 1: '{old}' {problem}",
            lambda: load_config(None, {"sweep.search_space": {"cases": {"grid": [{old: "random"}]}}}),
        ),
    ]
    for message, attempt in attempts:
        with pytest.raises(ConfigError) as err:
            attempt()
        assert str(err.value) == message
    assert load_config(None, {new: "random"}).selection.rule == "random"
