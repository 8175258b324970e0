"""The package's boundaries: no import circles, the model-directory format and the file helpers
free of the training stack, the library free of the experiment harness, and modules small
enough to read in one sitting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "msseg"
TRAINING_STACK = ("flax", "optax", "orbax", "grain")
MAX_LINES = 400
# Modules allowed past MAX_LINES, and why.
LONG_MODULES = {
    "msseg/inference/predict.py": "the per-file pipeline: windows, fusion, outputs, volumes.csv",
    "msseg/io.py": "reading with every refusal, writing, and the four resamplers",
    "msseg/diffusion/losses.py": "the label space and every loss term of the recipe",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The msseg modules `path` imports at run time (anywhere in it, functions included; not
    under `if TYPE_CHECKING:`)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                full = f"{source}.{a.name}"
                found.add(full if full in modules else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_package_has_no_import_circles():
    graph = _graph()
    assert len(graph) > 40  # the scan sees the package
    assert "msseg.train.setup" in graph["msseg.train.loop"]  # and its imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_does_not_import_the_experiment_harness_or_the_tools():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad = [n for n in names if n.split(".")[0] in ("harness", "tools", "experiments")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _loaded_after(statement: str, watch: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {watch!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return proc.stdout.split()


@pytest.mark.parametrize(
    "module, forbidden",
    [
        # the model-directory format: jax + numpy only, readable anywhere
        ("msseg.export.format", (*TRAINING_STACK, "scipy", "nibabel")),
        # file and name helpers: the standard library only
        ("msseg.files", ("jax", "numpy", *TRAINING_STACK)),
        ("msseg.names", ("jax", "numpy", *TRAINING_STACK)),
        # the sampling route of tools/sample.py: no training stack
        ("msseg.inference.cli", TRAINING_STACK),
        ("msseg.inference.predict", TRAINING_STACK),
        ("msseg.evaluation.folders", TRAINING_STACK),
    ],
)
def test_a_module_does_not_pull_in_what_it_must_not_need(module, forbidden):
    assert _loaded_after(f"import {module}", forbidden) == []


def test_the_import_check_sees_what_a_module_pulls_in():
    assert _loaded_after("import msseg.train.setup", TRAINING_STACK) == list(TRAINING_STACK)


def test_modules_stay_short_unless_listed():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_MODULES:
            long[rel] = n
    assert long == {}, f"over {MAX_LINES} lines: split them or list them with a reason"
    for rel in LONG_MODULES:
        assert (ROOT / rel).is_file(), f"{rel} is listed as long but does not exist"
