"""The layering rules of docs/architecture.md, read from the imports of every module.

- no import circle among the project's modules (imports inside functions count;
  those under `if TYPE_CHECKING:` do not);
- `service` never imports `training` or torch at import time;
- nothing under `service/inference`, `vectors`, `offline` or `preprocess`
  imports FastAPI or Starlette;
- nothing imports `service.cli` (only the `cpc-embed` entry point runs it);
- the rooms of `service` stack up and import only downwards: the shared
  top-level modules (errors, bundle, config, ...), then `preprocess`,
  `inference`, `vectors`, `offline`, `api`, and `cli` on top.

Each rule is also shown to catch a breach, on a small tree written for the test.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training")
NO_WEB = ("service.inference", "service.vectors", "service.offline", "service.preprocess")
WEB = ("fastapi", "starlette")
ENTRY_POINT = "service.cli"
ROOMS = ("preprocess", "inference", "vectors", "offline", "api")  # bottom to top


def room_rank(module: str) -> int | None:
    """Where a service module stands: 0 for the shared top level, then ROOMS, cli last."""
    parts = module.split(".")
    if parts[0] != "service":
        return None
    if module == ENTRY_POINT:
        return len(ROOMS) + 1
    if len(parts) > 1 and parts[1] in ROOMS:
        return ROOMS.index(parts[1]) + 1
    return 0


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    at_import_time: bool  # module level (or a class body), not inside a function
    line: int


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: list[Import] = []
        self.depth = 0  # functions entered

    def _add(self, name: str, line: int) -> None:
        self.found.append(Import(self.module, name, self.depth == 0, line))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _inside_function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._inside_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._inside_function(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module if self.is_package else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node.lineno)


def read_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import statement of every module of `packages` under `root`."""
    files = [f for pkg in packages for f in sorted((root / pkg).rglob("*.py"))]
    modules = {_module_name(f, root) for f in files}
    found: list[Import] = []
    for path in files:
        collector = _Collector(_module_name(path, root), path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += collector.found
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(out)


def violations(imports: list[Import], packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """What breaks the rules, one line each; empty when the layout keeps them."""
    problems: list[str] = []
    edges: dict[str, set[str]] = {}
    for imp in imports:
        where = f"{imp.importer}:{imp.line}"
        target = imp.imported
        # a submodule importing its own package is not a circle: the package is already loading
        inside = target == imp.importer or imp.importer.startswith(target + ".")
        if _under(target, packages) and not inside:
            edges.setdefault(imp.importer, set()).add(target)
        at_start = imp.at_import_time and _under(imp.importer, ("service",))
        if at_start and _under(target, ("training", "torch")):
            problems.append(f"{where}: service imports {target} at import time")
        if _under(imp.importer, NO_WEB) and _under(target, WEB):
            problems.append(f"{where}: {target} imported below the HTTP layer")
        below, above = room_rank(imp.importer), room_rank(target)
        if below is not None and above is not None and above > below:
            problems.append(f"{where}: imports {target}, a room above it")
        if target == ENTRY_POINT and imp.importer != ENTRY_POINT:
            problems.append(f"{where}: imports {ENTRY_POINT}, which only the entry point runs")
    problems += [f"import circle: {' -> '.join(c)}" for c in _cycles(edges)]
    return list(dict.fromkeys(problems))  # `from m import a, b` is one breach, not two


def test_the_project_keeps_the_layering_rules() -> None:
    imports = read_imports(ROOT)
    assert len({i.importer for i in imports}) > 50  # the tree was read, not an empty folder
    assert violations(imports) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("service", "training", "service/inference", "service/api"):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return root


CLEAN = {
    "service/cli.py": "def main():\n    from training.cli import run\n",
    "service/inference/model.py": "from typing import TYPE_CHECKING\n"
    "if TYPE_CHECKING:\n    from service.api.app import App\n",
    "service/api/app.py": "import fastapi\nfrom service.inference import model\n",
    "training/cli.py": "from service.inference.model import x\n",
}
BREACHES = {
    "a circle": (
        {"service/inference/model.py": "def f():\n    from service.api.app import App\n"},
        "import circle: service.api.app -> service.inference.model",
    ),
    "torch at import time": (
        {"service/inference/model.py": "import torch\n"},
        "service imports torch at import time",
    ),
    "training at import time": (
        {"service/api/app.py": "from training.cli import run\n"},
        "service imports training.cli at import time",
    ),
    "the web stack below the HTTP layer": (
        {"service/inference/model.py": "from starlette.datastructures import UploadFile\n"},
        "starlette.datastructures imported below the HTTP layer",
    ),
    "a room importing one above it": (
        {"service/inference/model.py": "from service.api.app import App\n"},
        "service.inference.model:1: imports service.api.app, a room above it",
    ),
    "the entry point imported": (
        {"training/cli.py": "def f():\n    from service import cli\n"},
        "imports service.cli, which only the entry point runs",
    ),
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    assert violations(read_imports(_tree(tmp_path, CLEAN))) == []


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_each_rule_catches_its_breach(tmp_path: Path, breach: str) -> None:
    change, expected = BREACHES[breach]
    found = violations(read_imports(_tree(tmp_path, {**CLEAN, **change})))
    assert any(expected in line for line in found), found
