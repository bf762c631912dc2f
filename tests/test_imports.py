"""The code's import structure (``python -m benchmarks.imports`` prints it): layers, no circle, and
function-local imports only of heavy or optional modules or in command modules."""

from benchmarks import imports


def test_no_module_is_part_of_an_import_circle():
    assert imports.circles() == []


def test_no_import_goes_to_a_higher_layer():
    assert [f"{i.module}:{i.line} -> {i.target}" for i in imports.upward_imports()] == []


def test_a_function_local_import_loads_a_heavy_module_or_sits_in_a_command():
    light = [f"{i.module}:{i.line} -> {i.target}" for i, kind in imports.local_imports() if kind == "light"]
    assert light == []


def test_the_measure_sees_what_it_checks(tmp_path, monkeypatch):
    """A probe tree with a circle, an upward import and a light local import: each is found."""
    for package in imports.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "trainers" / "a.py").write_text("from trainers import b\nimport orchestrator.c\n")
    (tmp_path / "trainers" / "b.py").write_text("from trainers import a\n\n\ndef f():\n    import json\n")
    (tmp_path / "orchestrator" / "c.py").write_text("def g():\n    import torch\n")
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    for cached in (imports.all_imports, imports.heavy_modules):
        cached.cache_clear()
    try:
        assert imports.circles() == [["trainers.a", "trainers.b"]]
        assert [(i.module, i.target) for i in imports.upward_imports()] == [("trainers.a", "orchestrator.c")]
        kinds = {(i.module, i.target): kind for i, kind in imports.local_imports()}
        assert kinds == {("trainers.b", "json"): "light", ("orchestrator.c", "torch"): "heavy"}
    finally:
        for cached in (imports.all_imports, imports.heavy_modules):
            cached.cache_clear()
