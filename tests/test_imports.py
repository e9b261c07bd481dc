"""The package's layering (DESIGN.md, "Layout"), checked on the source with ``ast``.

The rules, over every ``import`` in ``ttdecomp/**/*.py`` and ``benchmarks/*.py`` that names a
ttdecomp module:

- imports point down: a module imports only modules of its own level or below;
- inside a package with an order (:data:`ORDER`: ``nn``, ``adapters``, ``compress``, ``cli``),
  a module imports only modules of its own step or an earlier one (adapters: config before
  layers before targets ...);
- no cycles (among modules of one level or step, the only place one could form);
- the whole graph, method-body imports included, has exactly one circle: the written
  exception below;
- no ``_private`` name is imported from another module: a name a sibling needs drops the
  underscore, stays out of ``__all__``, and lives in a private ``_module.py``;
- nothing outside ``ttdecomp/cli/`` (benchmarks included) imports ``ttdecomp.cli``: a command
  is a parser plus one call into the library, so the library holds the work.

One written exception: a container method may import, inside its body, the algorithm it
delegates to (``TensorTrain.round`` -> ``rounding.round``); such an import is exempt from
the level, order and cycle rules. The top package's ``__init__.py`` and ``__main__.py`` only
re-export and are exempt from the level rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ttdecomp"
BENCHMARKS = ROOT / "benchmarks"

# Levels from DESIGN.md. A name ending in ".*" covers the package and all its submodules.
LEVELS = {
    "ttdecomp.errors": 0,
    "ttdecomp._backend": 1,
    "ttdecomp._threads": 1,
    "ttdecomp._validation": 1,
    "ttdecomp.integers": 1,  # prime factors, smooth sizes (split out of shapes)
    # atomic writes, JSON records, versioned (record + safetensors) pairs: every save uses it
    "ttdecomp._files": 1,
    "ttdecomp._cores": 2,
    "ttdecomp._kernels": 2,
    "ttdecomp.tensor_train": 2,
    "ttdecomp.tt_matrix": 2,
    "ttdecomp.shapes": 2,
    "ttdecomp.cost_model": 2,
    "ttdecomp.counts": 2,
    # packaged models and data, the one model loader (transformers only inside functions)
    "ttdecomp.assets.*": 2,
    "ttdecomp._truncation": 3,
    "ttdecomp._executor": 3,
    "ttdecomp._torch_ops": 3,
    "ttdecomp.decompose": 4,
    "ttdecomp.rounding": 4,
    "ttdecomp.random": 4,
    "ttdecomp.contract": 4,
    "ttdecomp.interop": 4,
    "ttdecomp.planner.*": 8,
    # the top package re-exports the core (up to the planner): importing it is L8
    "ttdecomp": 8,
    # the torch floor under adapters and compress: module kinds, select_modules, core holders,
    # the cached fast path, TTLinear
    "ttdecomp.nn.*": 9,
    "ttdecomp.adapters.*": 10,
    # the output folder and the one process pool of finetune and search
    "ttdecomp.runs.*": 10,
    # user-facing jobs: above the adapters, below the command line
    "ttdecomp.finetune.*": 11,
    "ttdecomp.finetune.methods.*": 11,  # the Method registry, one file per family
    "ttdecomp.finetune.tasks.*": 11,  # the Task registry and the Job protocol
    "ttdecomp.compress.*": 11,
    "ttdecomp.search.*": 12,
    "ttdecomp.cli.*": 13,
    "ttdecomp.__main__": 13,
    # scripts that measure the library: above everything, but never through the command line
    "benchmarks.*": 14,
}

# The order inside a package: steps, earliest first; a module imports only modules of its own
# step or an earlier one. A package listed here names every module it holds ("__init__" is the
# package itself, which re-exports and comes last).
ORDER = {
    "ttdecomp.nn": [
        ["kinds", "quantized"],  # is_linear, is_conv1d, dense_weight, in/out features, head
        ["selection"],  # select_modules: names, suffixes, bounded regexes, "all-linear"
        ["cores", "fast", "whitened"],  # the core holder, the cached fast path, whitening
        ["linear"],  # TTLinear
        ["__init__"],
    ],
    "ttdecomp.adapters": [
        # a missing package named first; the config, its value checks and its JSON file
        ["_requires", "config_checks", "config_file", "config"],
        ["routing", "status", "saved_modules", "packed"],  # what the layers hold
        ["layers", "quantized"],  # adapter layers, and their wrappers of quantized bases
        ["targets"],
        ["inject"],
        ["serialization", "weighted", "serving"],
        ["model"],
        ["export", "trainer", "hub", "testing"],
        ["__init__"],
    ],
    "ttdecomp.compress": [
        ["calibration", "inputs", "measure"],  # the Grams; the job's models, texts, measures
        ["model", "layerwise"],
        ["heal", "serialization"],
        ["job"],  # what `ttdecomp compress` does, as a config and a function
        ["__init__"],
    ],
    "ttdecomp.cli": [
        ["_common", "_options"],  # options declared once, from the configs' fields
        ["compress", "finetune", "plan", "search"],  # one small module per command
        ["__init__"],
    ],
}

# The one circle the graph may hold (method-body imports included): the core's containers
# delegate to their algorithms (TensorTrain.round -> rounding.round, ...).
WRITTEN_EXCEPTION = {
    "ttdecomp.contract <-> ttdecomp.rounding <-> ttdecomp.tensor_train <-> ttdecomp.tt_matrix"
}
EXEMPT_FROM_LEVELS = {"ttdecomp", "ttdecomp.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(p): p for p in [*sorted(PACKAGE.rglob("*.py")), *sorted(BENCHMARKS.glob("*.py"))]
}


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


def step(module: str) -> tuple[str, int] | None:
    """``(package, step)`` of a module of an ordered package, ``None`` elsewhere."""
    package, _, name = module.rpartition(".")
    if module in ORDER:
        package, name = module, "__init__"
    if package not in ORDER:
        return None
    for k, names in enumerate(ORDER[package]):
        if name in names:
            return package, k
    raise KeyError(
        f"{module} has no step in its package's order: add it to ORDER[{package!r}] in "
        "tests/test_imports.py, at the step of the latest sibling it needs."
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
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
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
    return f"{MODULES[module].relative_to(ROOT)}:{imp.line}"


def test_every_module_has_a_level():
    missing = []
    for module in MODULES:
        try:
            level(module)
            step(module)
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


def _out_of_order() -> set[str]:
    bad = set()
    for module, imports in IMPORTS.items():
        here = step(module) if _has_step(module) else None
        if here is None:
            continue
        for imp in imports:
            there = step(imp.target) if _has_step(imp.target) else None
            if imp.method or there is None or there[0] != here[0] or there[1] <= here[1]:
                continue
            bad.add(
                f"{module} (step {here[1]} of {here[0]}) imports {imp.target} (step {there[1]})"
                f" at {_where(module, imp)}"
            )
    return bad


def _has_step(module: str) -> bool:
    try:
        step(module)
    except KeyError:
        return False
    return True


def _cycles(with_methods: bool = False) -> set[str]:
    graph = {m: set() for m in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if (with_methods or not imp.method) and imp.target in graph and imp.target != module:
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


def test_imports_follow_the_package_order():
    bad = sorted(_out_of_order())
    assert not bad, "imports pointing up a package's order (see ORDER, DESIGN.md Layout):\n" + (
        "\n".join(bad)
    )


def test_no_import_cycles():
    bad = sorted(_cycles())
    assert not bad, "import cycles:\n" + "\n".join(bad)


def test_one_circle_the_written_exception():
    """Method-body imports included, the only circle is the core's containers and algorithms."""
    bad = sorted(_cycles(with_methods=True) - WRITTEN_EXCEPTION)
    assert not bad, "import circles besides the written exception:\n" + "\n".join(bad)


def _cli_imports() -> set[str]:
    bad = set()
    for module, imports in IMPORTS.items():
        if module == "ttdecomp.__main__" or module.startswith("ttdecomp.cli"):
            continue
        for imp in imports:
            if imp.target == "ttdecomp.cli" or imp.target.startswith("ttdecomp.cli."):
                bad.add(f"{module} imports {imp.target} at {_where(module, imp)}")
    return bad


def test_nothing_outside_the_cli_imports_it():
    bad = sorted(_cli_imports())
    assert not bad, (
        "modules outside ttdecomp/cli/ importing the command line (move the work into the "
        "library, e.g. ttdecomp.compress.job, and call it from both):\n" + "\n".join(bad)
    )


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


def test_a_new_module_of_an_ordered_package_is_asked_for_its_step():
    assert step("ttdecomp.adapters.config") == ("ttdecomp.adapters", 0)
    assert step("ttdecomp.adapters")[1] == len(ORDER["ttdecomp.adapters"]) - 1
    assert step("ttdecomp.search.run") is None
    with pytest.raises(KeyError, match="add it to ORDER"):
        step("ttdecomp.adapters.brand_new")


def test_the_order_rule_sees_an_import_up_the_chain(monkeypatch):
    probe = _Import("ttdecomp.adapters.model", ["TTAdapterModel"], 1, False)
    monkeypatch.setitem(IMPORTS, "ttdecomp.adapters.config", [probe])
    assert any("ttdecomp.adapters.config (step 0" in b for b in _out_of_order())
    probe.method = True
    assert not any("ttdecomp.adapters.config (step 0" in b for b in _out_of_order())


def test_the_cli_rule_sees_a_benchmark(monkeypatch):
    probe = _Import("ttdecomp.cli.compress", ["run"], 3, False)
    monkeypatch.setitem(IMPORTS, "benchmarks.bench_probe", [probe])
    monkeypatch.setitem(MODULES, "benchmarks.bench_probe", BENCHMARKS / "bench_probe.py")
    assert any(b.startswith("benchmarks.bench_probe imports") for b in _cli_imports())
