"""The calibration of the bundled domains: its gates, and its refusal of the evaluation seeds."""

import pytest

from benchmarks.calibrate_domains import EVALUATION_SEEDS, SeedFigures, gates, main


def figures(seed, source=0.25, warmup=0.28, oracle=0.5, random=0.375, worst_class=0.35, mask=500.0):
    classes = {"road": 0.9, "pole": worst_class}
    return SeedFigures(seed, source, warmup, oracle, random, classes, classes, mask, 30.0)


def test_gates_pass_in_the_papers_regime_and_each_fails_on_its_own_figure():
    passing = [figures(100), figures(101)]
    assert [g.passed for g in gates(passing, 10)] == [True] * 5
    broken = {
        0: dict(source=0.4, warmup=0.43, random=0.45),  # source-only / oracle 0.8: nearly solved unadapted
        1: dict(worst_class=0.1),  # a class the oracle cannot learn
        2: dict(warmup=0.24),  # the warm-up hurts
        3: dict(random=0.49),  # random closes 0.96 of the gap: no room for a rule to win
        4: dict(mask=150.0),  # 15 pixels per point
    }
    for index, change in broken.items():
        result = gates([figures(100, **change), figures(101, **change)], 10)
        assert [g.passed for g in result] == [i != index for i in range(5)], change
        assert result[index].line().startswith("FAIL")
    assert "pole" in gates(passing, 10)[1].name  # the gate names the class that decides it


@pytest.mark.parametrize("seeds", [["0"], ["100", "7"]])
def test_the_evaluation_seeds_are_refused_before_anything_trains(seeds, capsys):
    assert set(EVALUATION_SEEDS) == set(range(8))
    assert main(["--seeds", *seeds]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluation seeds" in err[0]
