"""The code's import structure, measured from the source: layers, import circles, function-local imports.

    python -m benchmarks.imports          # the counts and every function-local import, by kind

The rules it measures (``tests/test_imports.py`` holds the code to them):

- **Layers**, lowest first: ``pixel_selectors`` (its rule registry imports only the standard library),
  ``experiment_config``, ``trainers``, ``orchestrator``, ``benchmarks``; a package imports nothing from
  a layer above it. Inside ``orchestrator``: ``cluster``, ``labels``, ``tracking``, ``round``,
  ``sweep``, then the command modules at its top.
- **No circle** among the modules' top-level imports.
- **Function-local imports** only where they earn their place: of a heavy or optional module (one
  that loads torch, Ray, MLflow, pandas, the plotting or image libraries, or a database driver, itself
  or through what it imports), or in a command module, whose ``--help`` must answer before any of
  that loads. A local import of a light module is a circle hidden, or an oversight.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pixel_selectors", "experiment_config", "trainers", "orchestrator", "benchmarks")
# Third-party modules that take long to import or are optional: worth loading only when used.
HEAVY = frozenset(
    {
        "torch",
        "torchvision",
        "ray",
        "mlflow",
        "pandas",
        "pyarrow",
        "matplotlib",
        "plotly",
        "scipy",
        "PIL",
        "sqlalchemy",
        "jsonschema",
        "pycocotools",
        "psycopg",
        "pymysql",
        "moto",
        "boto3",
        "label_studio_sdk",
    }
)
# command_line (the shared argument parsing and exit codes) sits below the rooms that report an exit code.
ORCHESTRATOR_ROOMS = ("command_line", "cluster", "labels", "tracking", "round", "sweep")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def project_files() -> list[Path]:
    return sorted(f for package in PACKAGES for f in (ROOT / package).rglob("*.py"))


def resolve(module: str, node: ast.ImportFrom | None) -> list[str]:
    """The project modules an import statement in ``module`` loads (names of modules, not attributes)."""
    if node is None:
        return []
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package(module) else 0)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    out = [target]
    for alias in node.names:  # `from package import module` loads the module too
        candidate = f"{target}.{alias.name}"
        if (ROOT / Path(*candidate.split("."))).with_suffix(".py").is_file() or is_package(candidate):
            out.append(candidate)
    return out


@dataclass(frozen=True)
class Import:
    module: str  # where the statement is
    target: str  # what it loads (a dotted name; the first part tells project or third party)
    local: bool  # inside a function
    line: int


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local_lines = {
        inner.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    }
    type_checking = {
        inner.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    }
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in type_checking:
            continue
        targets = [a.name for a in node.names] if isinstance(node, ast.Import) else resolve(module, node)
        out += [Import(module, t, node.lineno in local_lines, node.lineno) for t in targets if t]
    return out


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(i for f in project_files() for i in imports_of(f))


def is_project(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def top_level_graph() -> dict[str, set[str]]:
    """module -> the project modules its top-level imports load (a package's ``__init__`` included)."""
    graph: dict[str, set[str]] = {module_name(f): set() for f in project_files()}
    for imp in all_imports():
        if imp.local or not is_project(imp.target):
            continue
        parts = imp.target.split(".")
        own = imp.module.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c ...
            name = ".".join(parts[:end])
            if parts[:end] == own[:end] and end < len(own):
                continue  # ... except the module's own packages, which were loaded before it
            if name in graph and name != imp.module:
                graph[imp.module].add(name)
    return graph


def circles() -> list[list[str]]:
    """Every strongly connected set of two or more modules in the top-level import graph."""
    graph, index, low, stack, on, out = top_level_graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> tuple[int, int]:
    """(package rank, room rank): an import may only go to an equal or lower layer."""
    parts = module.split(".")
    package = PACKAGES.index(parts[0])
    if parts[0] != "orchestrator" or len(parts) < 2:
        return package, 0
    room = parts[1]
    return package, ORCHESTRATOR_ROOMS.index(room) if room in ORCHESTRATOR_ROOMS else len(ORCHESTRATOR_ROOMS)


def upward_imports() -> list[Import]:
    """Imports (top-level or local) from a lower layer to a higher one. The rule registry
    (``pixel_selectors.rules``, standard library only) is the one module below the config."""
    out = []
    for imp in all_imports():
        if not is_project(imp.target):
            continue
        if (imp.module.startswith("pixel_selectors") and imp.target.split(".")[0] != "pixel_selectors") or (
            layer(imp.target) > layer(imp.module) and not imp.target.startswith("pixel_selectors")
        ):
            out.append(imp)
    return out


@cache
def heavy_modules() -> frozenset[str]:
    """Project modules that load a heavy third-party module at import time, themselves or through others."""
    graph = top_level_graph()
    heavy = {imp.module for imp in all_imports() if not imp.local and imp.target.split(".")[0] in HEAVY}
    changed = True
    while changed:
        changed = False
        for module, targets in graph.items():
            if module not in heavy and targets & heavy:
                heavy.add(module)
                changed = True
    return frozenset(heavy)


def is_command(module: str) -> bool:
    """A module a user runs (``python -m`` / ``activeda``): its ``--help`` must answer before heavy work."""
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return True
    return parts[0] == "orchestrator" and (
        len(parts) == 2 or parts[-1] in ("command", "__main__") or module == "orchestrator"
    )


def local_imports() -> list[tuple[Import, str]]:
    """Every function-local import and why it may be local: 'heavy', 'command', or 'light' (a defect)."""
    out = []
    heavy = heavy_modules()
    for imp in all_imports():
        if not imp.local:
            continue
        top = imp.target.split(".")[0]
        if imp.target == imp.module:
            kind = "light"  # a module importing itself: nothing to defer
        elif top in HEAVY or (is_project(imp.target) and imp.target in heavy):
            kind = "heavy"
        elif is_command(imp.module):
            kind = "command"
        else:
            kind = "light"
        out.append((imp, kind))
    return out


def main() -> int:
    graph = top_level_graph()
    rows = local_imports()
    kinds = {kind: sum(1 for _, k in rows if k == kind) for kind in ("heavy", "command", "light")}
    print(f"modules: {len(graph)}; top-level project imports: {sum(map(len, graph.values()))}")
    print(f"import circles: {len(circles())}; imports to a higher layer: {len(upward_imports())}")
    print(
        f"function-local imports: {len(rows)} ({kinds['heavy']} of heavy or optional modules, "
        f"{kinds['command']} in command modules, {kinds['light']} of light modules elsewhere)"
    )
    for imp, kind in rows:
        print(f"  {kind:<7} {imp.module}:{imp.line} -> {imp.target}")
    return 0 if not circles() and not upward_imports() and not kinds["light"] else 1


if __name__ == "__main__":
    sys.exit(main())
