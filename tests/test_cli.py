"""The shared command line of ``orchestrator.sweep`` and ``orchestrator.run``: fast help, YAML-style
defaults, bare KEY=VALUE overrides, repeatable --config, paths resolved where the command ran."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from experiment_config import ConfigError, ExperimentConfig, path_keys
from orchestrator import command_line as cli
from orchestrator.sweep import command as sweep
from orchestrator.sweep.command import build_parser


def _config(*argv: str, cwd: Path | None = None, monkeypatch=None) -> ExperimentConfig:
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return cli.resolve_config(cli.parse_args(build_parser(), list(argv)))


# Every command and subcommand a user can ask for help: (module run with -m, its arguments before --help).
HELP_COMMANDS = [
    ("orchestrator.sweep", []),
    ("orchestrator.run", []),
    ("orchestrator.annotate", []),
    ("orchestrator.annotate", ["export"]),
    ("orchestrator.annotate", ["import"]),
    ("orchestrator.dashboard", []),
    ("orchestrator.synth", []),
    ("orchestrator.data", []),
    ("orchestrator.data", ["check"]),
    ("orchestrator.cluster", []),
    ("orchestrator.cluster", ["validate"]),
    ("orchestrator.cluster", ["shapes"]),
    ("orchestrator.tracking", []),
    ("orchestrator.tracking", ["replay"]),
    ("orchestrator", []),
    ("orchestrator", ["sweep"]),
    ("orchestrator", ["annotate", "export"]),
]
HEAVY_MODULES = ("torch", "torchvision", "ray", "mlflow", "pandas", "pyarrow", "matplotlib", "plotly", "scipy", "PIL")


def _help(module: str, args: list[str], tmp_path: Path, columns: int = 100) -> subprocess.CompletedProcess:
    """``python -m module *args --help`` in a fresh interpreter; prints its help, then the heavy modules it loaded."""
    probe = (
        f"import sys, runpy; sys.argv = ['x', *{args!r}, '--help']\n"
        f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(("module", "args"), HELP_COMMANDS, ids=[" ".join([m, *a]) for m, a in HELP_COMMANDS])
def test_every_help_answers_without_importing_anything_heavy(module, args, tmp_path):
    result = _help(module, args, tmp_path)
    assert result.returncode == 0, result.stderr
    # torch alone takes seconds to import: without it (and Ray, MLflow, pandas) --help prints in about 0.2 s.
    assert "HEAVY []" in result.stdout, result.stdout[-300:]
    assert result.stdout.startswith("usage:"), result.stdout[:200]


@pytest.mark.parametrize(("module", "args"), HELP_COMMANDS, ids=[" ".join([m, *a]) for m, a in HELP_COMMANDS])
def test_every_help_is_wrapped_to_the_terminal(module, args, tmp_path):
    result = _help(module, args, tmp_path, columns=64)
    text = result.stdout.rsplit("HEAVY", 1)[0]
    too_long = [line for line in text.splitlines() if len(line) > 64]
    assert not too_long, too_long[:3]


def test_the_sweep_help_lists_every_config_key(tmp_path):
    text = _help("orchestrator.sweep", [], tmp_path).stdout
    assert all(f"  {key} " in text or f"  {key}\n" in text for key in ("selection.points_per_image", "sweep.name"))


def test_help_shows_defaults_as_yaml_and_the_allowed_names(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per key
    text = build_parser().format_help()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert lines["data.augment.hflip"].split()[1] == "true"
    assert lines["train.use_gpu"].split()[1] == "false"
    assert lines["data.source.root"].split()[1] == "''"
    assert lines["selection.unlabeled_classes"].split()[1] == "[]"
    assert "True" not in lines["data.augment.hflip"] and "False" not in lines["train.use_gpu"]
    assert "one of: labor_ppl, labor_spl" in lines["selection.rule"]
    assert "one of: small_segnet" in lines["model.name"]


def test_bare_key_value_overrides_work_beside_set_and_options(tmp_path, monkeypatch):
    cfg = _config(
        "adapt.steps=7", "--set", "adapt.lr=0.5", "selection.rounds=2", "--smoke", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert (cfg.adapt.steps, cfg.adapt.lr, cfg.selection.rounds) == (7, 0.5, 2)
    assert cfg.sweep.name == "smoke"  # --smoke applied, then the overrides
    later = _config("--set", "adapt.steps=3", "adapt.steps=9", cwd=tmp_path, monkeypatch=monkeypatch)
    assert later.adapt.steps == 9  # bare overrides come after --set


def test_a_bare_word_that_is_not_key_value_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="'smoke' is not an option or a KEY=VALUE override"):
        _config("smoke", cwd=tmp_path, monkeypatch=monkeypatch)
    assert sweep.main(["smoke"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: 'smoke' is not an option or a KEY=VALUE override (e.g. adapt.steps=200)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_config_files_merge_in_order_later_files_win(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text(
        "adapt:\n  steps: 5\n  lr: 0.25\nselection:\n  rule: labor_spl\n"
        "sweep:\n  search_space: {seed: {grid: [0, 1]}}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "adapt:\n  steps: 6\nselection:\n  budget_fraction: 0.01\nsweep:\n  search_space: {adapt.lr: {grid: [0.1]}}\n"
    )
    cfg = _config("--config", "a.yaml", "--config", "b.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert (cfg.adapt.steps, cfg.adapt.lr) == (6, 0.25)  # b wins key by key, a's other keys stay
    # Neither file alone is valid (labor_spl needs a pixel budget): the files are merged before validation.
    assert (cfg.selection.rule, cfg.selection.budget_fraction) == ("labor_spl", 0.01)
    assert cfg.sweep.search_space == {"adapt.lr": {"grid": [0.1]}}  # a mapping value is replaced whole
    (tmp_path / "bad.yaml").write_text("adapt:\n  stepz: 1\n")
    with pytest.raises(ConfigError, match=r"'adapt.stepz': unknown key.*\(in 'bad.yaml'\)"):
        _config("--config", "a.yaml", "--config", "bad.yaml", cwd=tmp_path, monkeypatch=monkeypatch)


def test_every_path_key_is_resolved_against_where_the_command_ran(tmp_path, monkeypatch):
    assert {"output_dir", "data.cache_dir", "data.source.root", "data.target.root", "model.pretrained"} <= set(
        path_keys()
    )
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.pth").write_bytes(b"not read here")
    cfg = _config(
        "model.pretrained=weights/backbone.pth",
        "data.source.root=gta",
        "--output-dir",
        "out",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert cfg.model.pretrained == str(tmp_path / "weights" / "backbone.pth")
    assert cfg.data.source.root == str(tmp_path / "gta")
    assert cfg.output_dir == str(tmp_path / "out")
    assert cfg.data.cache_dir == str(tmp_path / "data")
    for key in path_keys():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == "" or Path(node).is_absolute(), key


def test_the_docs_list_every_key():
    from experiment_config import markdown_reference

    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- config-keys:start -->\n", "<!-- config-keys:end -->"
    documented = text[text.index(start) + len(start) : text.index(end)]
    assert documented == markdown_reference(), (
        "docs/configuration.md's key table is out of date: replace it with `python -m orchestrator.config`"
    )
