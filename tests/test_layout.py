"""The layout of python/bne, read from the source (ast; nothing is imported): no import circle and
no module over 600 lines (docs/ARCHITECTURE.md: each module owns one thing, and the layers are
imported downwards only).

What counts as an arrow A -> B ("A imports B"):

* every ``import`` / ``from ... import`` in A, at any depth (inside functions and methods too: a
  lazy import still runs, later), relative or absolute (``bne.x``), resolved to a module of bne;
  ``from .pkg import name`` is an arrow to ``pkg.name`` when that is a module, else to ``pkg``;
* ``from . import name`` is an arrow to the submodule ``name`` when it is one (a .py file or an
  extension module such as ``_core``), else to the package (a name its ``__init__`` defines);
* a package's ``__init__.py`` is the module of the package's name (``bne.encoder``);
* importing ``bne.x.y`` also runs ``bne/x/__init__.py`` first, so it is an arrow to ``bne.x`` as
  well, except for the packages A itself is in: Python has started those before A, so importing
  a sibling does not run them again (otherwise every module would be in a circle with ``bne``);
* not counted: imports under ``if TYPE_CHECKING:`` (never run) and ``importlib.import_module``
  with a computed name (not readable statically; ``bne.encoder``'s lazy names are listed in its
  ``_LAZY`` table and the modules they name are counted through that table below).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "bne"
MAX_LINES = 600


def module_files(pkg: Path = PKG) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = ("bne", *path.relative_to(pkg).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _compiled(pkg: Path, package: str, name: str) -> bool:
    """``package.name`` is an extension module (``bne._core``: its stub is what the source has)."""
    folder = pkg.joinpath(*package.split(".")[1:])
    return (folder / f"{name}.pyi").is_file() or any(folder.glob(f"{name}.*.so"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _lazy_targets(name: str, tree: ast.AST) -> list[str]:
    """Modules named by a ``_LAZY = {"attr": "submodule"}`` table (a package's lazy names)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return [
                f"{name}.{v.value.lstrip('.')}"
                for v in node.value.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            ]
    return []


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    files = module_files(pkg)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [a.name for a in node.names if f"{mod}.{a.name}" in files or _compiled(pkg, mod, a.name)]
            targets += [f"{mod}.{a}" for a in subs]
            if len(subs) < len(node.names):  # a name defined in mod itself
                targets.append(mod)
        targets += _lazy_targets(name, tree)
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for t in targets:
            if not (t == "bne" or t.startswith("bne.")):
                continue
            parts = t.split(".")
            if _compiled(pkg, ".".join(parts[:-1]), parts[-1]):
                continue  # an extension module imports nothing of bne's
            # the module itself, or the deepest module of bne it is inside (``bne.x.attr``)
            while parts and ".".join(parts) not in files:
                parts.pop()
            if not parts:
                continue
            target = ".".join(parts)
            # and every package __init__ on the way that has not already started
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in files and mod != name and (mod == target or mod not in ancestors):
                    graph[name].add(mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle (A, B, ..., A) through each module that is in a circle (so each circle
    of a group of modules that import each other is shown, not only the first)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    out: list[list[str]] = []
    done: set[frozenset[str]] = set()
    for a in sorted(graph):
        if a not in reach[a]:
            continue
        prev: dict[str, str] = {}
        queue = deque([a])
        while queue:  # shortest path a -> ... -> a
            node = queue.popleft()
            if a in graph[node]:
                path = [a]
                while node != a:
                    path.append(node)
                    node = prev[node]
                circle = [a, *reversed(path[1:])]
                key = frozenset(circle)
                if key not in done:  # the same circle from another of its modules
                    done.add(key)
                    out.append([*circle, a])
                break
            for nxt in sorted(graph[node]):
                if nxt not in prev and nxt != a:
                    prev[nxt] = node
                    queue.append(nxt)
    return out


def test_the_import_reader_sees_lazy_relative_and_package_imports(tmp_path):
    """The reader itself, on a made-up package (so an empty result below means no circle, not a
    reader that finds nothing)."""
    files = {
        "__init__.py": "from .a import x\n\ndef __getattr__(name):\n    from . import lazy\n",
        "_core.pyi": "",
        "a.py": "from . import _core, b\n",
        "b.py": "import bne.sub.c\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "lazy.py": "",
        "sub/__init__.py": "_LAZY = {'f': 'c'}\n",
        "sub/c.py": "def f():\n    from ..b import y\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    g = import_graph(tmp_path)
    assert g == {
        "bne": {"bne.a", "bne.lazy"},  # an import inside a function counts
        "bne.a": {"bne.b"},  # the extension module and the package a is in do not
        "bne.b": {"bne.sub.c", "bne.sub"},  # bne.sub.c runs bne/sub/__init__ first; TYPE_CHECKING: no
        "bne.lazy": set(),
        "bne.sub": {"bne.sub.c"},  # a lazy name of _LAZY
        "bne.sub.c": {"bne.b"},
    }
    assert cycles(g) == [["bne.b", "bne.sub.c", "bne.b"], ["bne.sub", "bne.sub.c", "bne.b", "bne.sub"]]
    assert "bne.demo" not in import_graph()["bne.cli"]  # and on bne: the CLI no longer reaches back


def test_no_import_circle():
    """No module imports one that (at any depth) imports it back."""
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_module_over_600_lines():
    """Each module owns one thing; 600 lines is the yardstick (issue 19)."""
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
