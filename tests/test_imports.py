"""The package's layering (DESIGN.md, "Layout"), checked on the source with ``ast``.

Three rules, over every ``import`` in ``ttdecomp/**/*.py`` that names a ttdecomp module:

- imports point down: a module imports only modules of its own level or below;
- no cycles (among modules of one level, the only place one could form);
- no ``_private`` name is imported from another module: a name a sibling needs drops the
  underscore, stays out of ``__all__``, and lives in a private ``_module.py``.

One written exception: a container method may import, inside its body, the algorithm it
delegates to (``TensorTrain.round`` -> ``rounding.round``); such an import is exempt from
the first two rules. The top package's ``__init__.py`` and ``__main__.py`` only re-export
and are exempt from the level rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ttdecomp"

# Levels from DESIGN.md. A name ending in ".*" covers the package and all its submodules.
LEVELS = {
    "ttdecomp.errors": 0,
    "ttdecomp._backend": 1,
    "ttdecomp._threads": 1,
    "ttdecomp._validation": 1,
    "ttdecomp.integers": 1,  # prime factors, smooth sizes (split out of shapes)
    "ttdecomp._cores": 2,
    "ttdecomp._kernels": 2,
    "ttdecomp.tensor_train": 2,
    "ttdecomp.tt_matrix": 2,
    "ttdecomp.shapes": 2,
    "ttdecomp.cost_model": 2,
    "ttdecomp.counts": 2,
    "ttdecomp._truncation": 3,
    "ttdecomp._executor": 3,
    "ttdecomp._torch_ops": 3,
    "ttdecomp.decompose": 4,
    "ttdecomp.rounding": 4,
    "ttdecomp.random": 4,
    "ttdecomp.contract": 4,
    "ttdecomp.interop": 4,
    "ttdecomp.planner.*": 5,
    # the top package re-exports the core (up to the planner): importing it is L5
    "ttdecomp": 5,
    # the torch floor (module kinds, quantized layers): beside the adapters, below them
    "ttdecomp.nn.*": 6,
    "ttdecomp.adapters.*": 6,
    # user-facing layer: above the adapters, below the command line
    "ttdecomp.finetune.*": 7,
    # model compression (TTLinear, compress_model): beside finetune, above the adapters
    "ttdecomp.compress.*": 7,
    "ttdecomp.search.*": 8,
    "ttdecomp.cli.*": 9,
    "ttdecomp.__main__": 9,
}
EXEMPT_FROM_LEVELS = {"ttdecomp", "ttdecomp.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def level(module: str) -> int:
    if module in LEVELS:
        return LEVELS[module]
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n]) + ".*"
        if key in LEVELS:
            return LEVELS[key]
    raise KeyError(
        f"{module} has no level: add it to LEVELS in tests/test_imports.py (and to the "
        "Layout section of DESIGN.md), at the level of the lowest layer it needs."
    )


def _has_level(module: str) -> bool:
    try:
        level(module)
    except KeyError:
        return False
    return True


class _Import:
    def __init__(self, target: str, names: list[str], line: int, method: bool) -> None:
        self.target, self.names, self.line, self.method = target, names, line, method


def _imports(module: str) -> list[_Import]:
    """Every import of a ttdecomp module in ``module``, with the names it takes."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[_Import] = []

    def visit(node: ast.AST, in_method: bool, parent: ast.AST | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_method = in_method or isinstance(parent, ast.ClassDef)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ttdecomp" or alias.name.startswith("ttdecomp."):
                    found.append(_Import(alias.name, [], node.lineno, in_method))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == "ttdecomp" or source.startswith("ttdecomp."):
                plain = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in MODULES:  # `from . import counts`: the submodule itself
                        found.append(_Import(sub, [], node.lineno, in_method))
                    else:
                        plain.append(alias.name)
                if plain:
                    found.append(_Import(source, plain, node.lineno, in_method))
        for child in ast.iter_child_nodes(node):
            visit(child, in_method, node)

    visit(tree, False, None)
    return found


IMPORTS = {m: _imports(m) for m in MODULES}


def _where(module: str, imp: _Import) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{imp.line}"


def test_every_module_has_a_level():
    missing = []
    for module in MODULES:
        try:
            level(module)
        except KeyError as err:
            missing.append(str(err.args[0]))
    assert not missing, "\n".join(missing)


def _upward() -> set[str]:
    bad = set()
    for module, imports in IMPORTS.items():
        if module in EXEMPT_FROM_LEVELS or not _has_level(module):
            continue  # a module without a level fails test_every_module_has_a_level
        for imp in imports:
            if not imp.method and _has_level(imp.target) and level(imp.target) > level(module):
                bad.add(
                    f"{module} (L{level(module)}) imports {imp.target} (L{level(imp.target)})"
                    f" at {_where(module, imp)}"
                )
    return bad


def _cycles() -> set[str]:
    graph = {m: set() for m in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if not imp.method and imp.target in graph and imp.target != module:
                graph[module].add(imp.target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = set()

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.add(" <-> ".join(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def _private_names() -> set[str]:
    bad = set()
    for module, imports in IMPORTS.items():
        for imp in imports:
            for name in imp.names:
                if name.startswith("_") and not name.startswith("__"):
                    bad.add(f"{module} imports {imp.target}.{name} at {_where(module, imp)}")
    return bad


def test_imports_point_down():
    bad = sorted(_upward())
    assert not bad, "imports pointing up a level (see DESIGN.md, Layout):\n" + "\n".join(bad)


def test_no_import_cycles():
    bad = sorted(_cycles())
    assert not bad, "import cycles:\n" + "\n".join(bad)


def test_no_private_name_from_another_module():
    bad = sorted(_private_names())
    assert not bad, (
        "private names imported from another module (drop the underscore, keep the name out "
        "of __all__, and move it to a private _module.py if it is shared):\n" + "\n".join(bad)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .tensor_train import TensorTrain", ["ttdecomp.tensor_train"]),
        ("from . import counts", ["ttdecomp.counts"]),
        ("import ttdecomp", ["ttdecomp"]),
    ],
)
def test_resolves_relative_imports(tmp_path, source, expected, monkeypatch):
    monkeypatch.setitem(MODULES, "ttdecomp.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source + "\n")
    assert [imp.target for imp in _imports("ttdecomp.probe")] == expected


def test_a_container_method_may_delegate_upwards(tmp_path, monkeypatch):
    monkeypatch.setitem(MODULES, "ttdecomp.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(
        "class A:\n    def f(self):\n        from .rounding import round\n"
        "def g():\n    from .rounding import round\n"
    )
    assert [imp.method for imp in _imports("ttdecomp.probe")] == [True, False]


def test_a_new_module_is_asked_for_its_level():
    assert level("ttdecomp.planner.anything_new") == level("ttdecomp.planner")
    with pytest.raises(KeyError, match="add it to LEVELS"):
        level("ttdecomp.brand_new")
