"""architecture: the package's import graph is layered — no cycle, no upward import, and
no import deferred inside a function to dodge a circle.

Every module of ``persona_refusal`` (the ``persona_refusal/`` folder with its
subpackages, and the top-level ``analysis/`` folder, installed as
``persona_refusal.analysis``) is parsed with :mod:`ast`; every import of a
``persona_refusal`` module is collected, at module level and inside functions alike,
except under ``if TYPE_CHECKING:`` (never run). The rank table below is the intended
order, bottom to top: a module may import only modules of its own rank or lower.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "persona_refusal"

RANKS: dict[str, int] = {
    # data and plumbing with no model: leaves
    "errors": 0,
    "storage": 1,
    "checks": 1,  # argument checks of the public API against the annotations (errors only)
    "ops": 1,
    "formatting": 2,
    "prompts": 3,
    "assets": 3,
    # direction data types, then the hook machinery, then the edits built on both
    "directions": 4,
    "control_vectors": 5,  # directions as llama.cpp control vectors (GGUF files): directions, storage, gguf
    "hooks": 5,
    "interventions": 6,
    # models (the tiny model and the weight layout below the loader)
    "layout": 7,
    "decoding": 7,  # fast decoding steps on a HookedTransformer (below the loader, which records the mode)
    "architectures": 8,  # the TransformerLens configuration of a local model, matched from its config (errors only)
    "tiny": 8,
    "models": 9,
    # running models
    "activations": 10,
    "export": 10,  # the orthogonalised model as a Hugging Face folder (reads models, writes files)
    "evaluation": 11,
    # the methods
    "extraction": 12,
    "selection": 12,
    "persona": 12,
    # results, the study and its entry points
    "results": 13,
    "study": 14,
    "experiments": 15,
    "agreement": 15,  # judges compared on a run folder's stored replies (reads the study's files; the report shows it)
    "demo": 15,
    "analysis": 16,
    "gating_sweep": 17,  # the gating experiment as one function; its result draws with the analysis layer
    "cli": 17,
    "console": 17,  # the console script: catches Ctrl-C, then imports the command line
    "": 18,  # persona_refusal/__init__.py: re-exports the public API, the top
}
"""Rank of each module, by its name below ``persona_refusal`` (first component for
subpackages: every ``persona_refusal.study.*`` module has the study rank, every
``persona_refusal.analysis.*`` module the analysis rank)."""

DEFERRED_OK: dict[str, str] = {
    "cli": "the command line defers heavy imports (torch, the model stack) so that --help and "
           "argument errors answer at once",
    "": "the package's top imports each public name when first used (PEP 562), with its argument "
        "checks, so that `import persona_refusal` and the console script's first instruction cost nothing",
    "console": "the console script imports the command line inside its try block, so that a Ctrl-C "
               "during those imports is caught",
}
"""Modules allowed to import ``persona_refusal`` modules inside functions, and why."""


def _modules() -> dict[str, Path]:
    """Module name → file, for the package folder and the analysis folder."""
    out: dict[str, Path] = {}
    for base, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "analysis", f"{PACKAGE}.analysis")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _rank(module: str) -> int:
    parts = module.split(".")[1:]
    key = parts[0] if parts else ""
    if key not in RANKS:
        pytest.fail(f"{module} has no rank: add it to RANKS in tests/test_architecture.py")
    return RANKS[key]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _target(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The ``persona_refusal`` modules an import statement loads (submodules resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + ".")]
    if node.level:  # relative import
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source != PACKAGE and not source.startswith(PACKAGE + "."):
        return []
    # ``from persona_refusal import ops`` imports the module persona_refusal.ops.
    subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [source, *subs]


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every runtime import of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend((t, node.lineno, in_function) for t in _target(module, is_package, node))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return [(t, line, f) for t, line, f in found if t != module]


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {m: _imports(m, p) for m, p in MODULES.items()}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as ``[a, b, …, a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _edges(graph) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports if t in MODULES} for m, imports in graph.items()}


# ----------------------------------------------------------------------------- the checks
def test_every_module_is_found_and_ranked():
    for name in ("persona_refusal", "persona_refusal.models", "persona_refusal.interventions",
                 "persona_refusal.hooks", "persona_refusal.layout", "persona_refusal.analysis"):
        assert name in MODULES
    for module in MODULES:
        _rank(module)


def test_import_graph_has_no_cycle():
    cycle = _find_cycle(_edges(_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_upward():
    upward = [
        f"{_where(m, line)}: {m} (rank {_rank(m)}) imports {t} (rank {_rank(t)})"
        for m, imports in _graph().items() for t, line, _ in imports
        if t in MODULES and _rank(t) > _rank(m)
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_of_the_package_deferred_inside_a_function():
    """A deferred import is how a circle is dodged; move the shared piece down instead."""
    deferred = [
        f"{_where(m, line)}: {m} imports {t} inside a function"
        for m, imports in _graph().items() for t, line, in_function in imports
        if in_function and (m.split(".") + [""])[1] not in DEFERRED_OK
    ]
    assert not deferred, "deferred imports:\n" + "\n".join(deferred)


# ----------------------------------------------------------------------------- the checker itself
def test_the_checker_sees_cycles_deferred_and_type_checking_imports(tmp_path):
    """The parser finds function-level and relative imports, skips TYPE_CHECKING blocks,
    and the cycle finder reports a loop."""
    src = tmp_path / "mod.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from persona_refusal import ops, errors\n"
        "if TYPE_CHECKING:\n"
        "    from persona_refusal.models import ChatModel\n"
        "else:\n"
        "    import persona_refusal.storage\n"
        "def f():\n"
        "    from persona_refusal.interventions import apply\n"
        "    from . import directions\n"
        "class C:\n"
        "    def g(self):\n"
        "        import persona_refusal.tiny as t\n"
    )
    found = _imports("persona_refusal.fake", src)
    assert [(t, f) for t, _, f in found] == [
        ("persona_refusal.ops", False), ("persona_refusal.errors", False), ("persona_refusal.storage", False),
        ("persona_refusal.interventions", True), ("persona_refusal.directions", True),
        ("persona_refusal.tiny", True),
    ]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
