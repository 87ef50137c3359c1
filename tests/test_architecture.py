"""The layout rules of docs/architecture.md, checked on the AST of every module.

Imports inside functions and under ``TYPE_CHECKING`` count: a cycle hidden behind a lazy import
is still a cycle. A package's ``__init__`` that a submodule import runs implicitly is not an edge;
an explicit ``from cascade.engine import Cascade`` is an edge to ``cascade.engine``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cascade", "evaluators")
CORE = {"types", "errors", "logs", "tokens", "telemetry", "testing", "formatting"}
MAX_TOP_LEVEL = 10
MAX_LINES = 500

# Which groups each group may import, besides itself and core. Arrows point down.
BELOW: dict[str, set[str]] = {
    "core": set(),
    "config": set(),
    "models": {"config"},
    "providers": {"config"},
    "ledger": {"config"},
    "report": {"config", "ledger"},  # the ledger's read side: reports, the dashboard page
    "evaluation": {"config", "models"},
    "engine": {"config", "models", "providers", "evaluation", "ledger"},
    "replay": {"config", "models", "providers", "evaluation", "ledger", "engine", "report"},
    "calibration": {"config", "models", "providers", "evaluation", "ledger", "engine", "replay",
                    "report"},
    "gateway": {"config", "models", "providers", "evaluation", "ledger", "engine", "report"},
    "facade": {"engine", "ledger"},  # cascade/__init__.py: re-exports only
    "demo": set(),  # package data for ``cascade demo``
    "cli": {"*"},
}
# The issue's "never" list, stated on its own so that loosening BELOW cannot quietly allow them.
NEVER: set[tuple[str, str]] = {
    *((g, "cli") for g in BELOW if g != "cli"),
    *((g, "gateway") for g in BELOW if g not in ("cli", "gateway")),
    *((g, "facade") for g in BELOW if g not in ("cli", "facade")),
    ("engine", "calibration"), ("engine", "replay"),
    ("providers", "engine"), ("providers", "ledger"),
    ("evaluation", "engine"), ("evaluation", "ledger"),
    ("ledger", "engine"),
}


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (the longest prefix that is one of ours)
    name: str | None  # the name taken from it, for ``from X import name``
    line: int


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "evaluators":
        return "evaluation"
    if module == "cascade":
        return "facade"
    if len(parts) == 2 and parts[1] in CORE:
        return "core"
    return parts[1]


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _ours(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(module: str, path: Path) -> Iterator[Import]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _ours(alias.name)
                if target:
                    yield Import(module, target, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # ``from pkg import submodule``
                    yield Import(module, f"{source}.{alias.name}", None, node.lineno)
                    continue
                target = _ours(source)
                if target:
                    yield Import(module, target, alias.name, node.lineno)


def all_imports() -> list[Import]:
    return [i for m, p in MODULES.items() for i in imports_of(m, p) if i.target != i.module]


IMPORTS = all_imports()


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _graph(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in imports:
        edges[i.module].add(i.target)
    return edges


def test_the_walk_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The check is only as good as its walk: imports in functions and TYPE_CHECKING count."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from cascade.engine import Cascade\n"
        "def f():\n    from cascade.ledger.money import Accounts\n    import cascade.errors\n"
        "from . import limits\n",
        encoding="utf-8",
    )
    found = {(i.target, i.name) for i in imports_of("cascade.engine.shadow", probe)}
    assert found == {
        ("cascade.engine", "Cascade"),
        ("cascade.ledger.money", "Accounts"),
        ("cascade.errors", None),
        ("cascade.engine.limits", None),
    }


def test_cycle_finder_finds_a_cycle_hidden_among_many_modules() -> None:
    """A three-module cycle is reported, a diamond is not."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"},
             "d": {"e", "f"}, "e": {"g"}, "f": {"g"}, "g": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    """No two modules reach each other through imports, however lazy."""
    assert cycles(_graph(IMPORTS)) == []


def test_no_private_names_imported_from_another_module() -> None:
    """What two modules share is a public name; ``from x import _y`` across modules is refused."""
    private = [
        f"{i.module}:{i.line} imports {i.name} from {i.target}"
        for i in IMPORTS
        if i.name and i.name.startswith("_") and not i.name.startswith("__")
    ]
    private += [
        f"{i.module}:{i.line} imports the private module {i.target}"
        for i in IMPORTS
        if any(part.startswith("_") and not part.startswith("__") for part in i.target.split("."))
    ]
    assert private == []


def violations(imports: list[Import]) -> list[str]:
    """Imports that point up, sideways into another group, or onto the never list."""
    bad = []
    for i in imports:
        source, target = group(i.module), group(i.target)
        if (source, target) in NEVER:
            bad.append(f"{i.module}:{i.line} -> {i.target} ({source} never imports {target})")
        elif source == target or (target == "core" and source != "core"):
            continue
        elif "*" not in BELOW[source] and target not in BELOW[source]:
            bad.append(f"{i.module}:{i.line} -> {i.target} ({source} may not import {target})")
    return bad


def test_every_import_points_down() -> None:
    """Each import goes to its own group, core, or a group below (docs/architecture.md)."""
    assert violations(IMPORTS) == []


def test_every_module_belongs_to_a_known_group() -> None:
    """A new top-level package must be placed on the map before it is used."""
    assert sorted({group(m) for m in MODULES} - set(BELOW)) == []


def test_at_most_ten_modules_directly_in_cascade() -> None:
    """Everything but the core lives in a subpackage."""
    top = sorted(p.name for p in (ROOT / "cascade").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_module_reaches_500_lines() -> None:
    """Modules are split by responsibility before they reach 500 lines."""
    long = {
        m: n for m, p in MODULES.items()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_LINES
    }
    assert long == {}


def test_tests_mirror_the_packages() -> None:
    """Each package with tests has its own folder under tests/."""
    for package in ("engine", "gateway", "ledger", "calibration", "replay", "config", "cli",
                    "models", "providers", "evaluators"):
        folder = ROOT / "tests" / package
        assert (folder / "__init__.py").exists(), folder
        assert list(folder.glob("test_*.py")), folder


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("cascade.engine.ladder", "cascade.gateway.app"),  # the engine never imports the gateway
        ("cascade.engine.ladder", "cascade.calibration.policy"),  # nor offline code
        ("cascade.providers.openai", "cascade.ledger.money"),  # providers never touch the ledger
        ("evaluators.length", "cascade.engine.caller"),  # evaluators never import the engine
        ("cascade.ledger.money", "cascade.engine.limits"),  # the ledger never imports the engine
        ("cascade.errors", "cascade.config.schema"),  # core imports nothing above it
        ("cascade.replay.bench", "cascade.cli.entry"),  # nothing imports the CLI
        ("cascade.engine.facade", "cascade"),  # only the CLI imports the package facade
    ],
)
def test_rules_catch_a_forbidden_import(module: str, target: str) -> None:
    """Mutation check: each forbidden kind of import is reported."""
    assert violations([Import(module, target, None, 1)]) != []


def test_rules_catch_a_cycle_added_to_the_real_graph() -> None:
    """Mutation check: one import back up from the ladder to the facade makes a cycle."""
    back = Import("cascade.engine.ladder", "cascade.engine.facade", "Cascade", 1)
    assert cycles(_graph([*IMPORTS, back])) != []
