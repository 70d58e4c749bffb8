"""The package's layering: no module imports one on a higher floor, no cycles.

Every module of chordctl/ sits on a floor (FLOORS). A module may import
modules on its own floor or below, never above: the CLI calls the library,
the library never calls the CLI; core (the node) never imports the client
side; wire rules and errors import nothing of ours. Imports inside
functions count too (a lazy import is still a dependency). Among all
imports, modules must not import each other in a circle.

A new module needs a floor: the test fails naming it until FLOORS has one.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chordctl"

# A name covers that module and, for a package, every module under it; the
# longest matching name wins. "chordctl" covers only chordctl/__init__.py.
FLOORS: dict[str, int] = {
    # 0: leaves -- errors, wire rules, generated protobuf, pure helpers.
    "chordctl.errors": 0,
    "chordctl.protocol": 0,
    "chordctl.pb": 0,
    "chordctl.cpulist": 0,
    "chordctl.render": 0,
    "chordctl.grpcenv": 0,
    # 1: configuration and what is read from it (TLS credentials).
    "chordctl.config": 1,
    "chordctl.security": 1,
    # 2: the node: ring arithmetic, store, pipeline, storage.
    "chordctl.core": 2,
    # 3: the client side library, built on the client; the package's face
    # (chordctl/__init__.py: connect, Client, the errors, loaded on first use).
    "chordctl": 3,
    "chordctl.aio": 3,
    "chordctl.client": 3,
    "chordctl.scan": 3,
    "chordctl.bulk": 3,
    "chordctl.status": 3,
    "chordctl.localcluster": 3,
    "chordctl.bench": 3,
    # 4: the interactive shell.
    "chordctl.shell": 4,
    # 5: click commands: parse, call, render, map errors to exit codes.
    "chordctl.cli": 5,
    "chordctl.__main__": 5,
}

# Upward imports still in the code, each with a comment naming the work that
# removes it; the set only shrinks (test_known_violations_are_still_there).
# Empty: core.request -> core.storage.records, core.store ->
# core.storage.records and client -> core.request (the op numbers and key
# rules moving to protocol.py) run sideways or down under these floors.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# Import cycles still in the code, each with the work that removes it.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, (ast.Name, ast.Attribute)) and \
        (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def imports_of(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The chordctl modules *name* imports (at any depth, TYPE_CHECKING blocks aside)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(base: str, names: list[str]) -> None:
        for n in names:     # `from chordctl import config` imports a module
            sub = f"{base}.{n}"
            found.add(sub if sub in modules else base)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "chordctl" or alias.name.startswith("chordctl."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "chordctl" or base.startswith("chordctl."):
                resolve(base, [a.name for a in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return {m for m in found if m in modules}


def floor_of(name: str) -> int | None:
    if name == "chordctl":
        return FLOORS["chordctl"]
    probe = name
    while "." in probe:
        if probe in FLOORS:
            return FLOORS[probe]
        probe = probe.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    out = set()
    for name, deps in graph.items():
        for dep in deps:
            low, high = floor_of(name), floor_of(dep)
            if low is not None and high is not None and high > low:
                out.add((name, dep))
    return out


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[frozenset[str]] = set()
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_every_module_has_a_floor():
    missing = sorted(m for m in all_modules() if floor_of(m) is None)
    assert not missing, f"give these modules a floor in FLOORS (tests/test_layers.py): {missing}"


def test_no_module_imports_a_higher_floor():
    found = upward_imports(import_graph())
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "upward imports (module on floor A imports one on floor B > A):\n" + \
        "\n".join(f"  {a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)})"
                  for a, b in new)


def test_known_violations_are_still_there():
    """An entry of KNOWN_VIOLATIONS that is fixed must leave the list."""
    gone = sorted(KNOWN_VIOLATIONS - upward_imports(import_graph()))
    assert not gone, f"fixed; remove from KNOWN_VIOLATIONS: {gone}"


def test_no_import_cycles():
    found = cycles(import_graph())
    new = sorted(sorted(c) for c in found - KNOWN_CYCLES)
    assert not new, "modules that import each other in a circle:\n" + \
        "\n".join(f"  {' <-> '.join(c)}" for c in new)


def test_known_cycles_are_still_there():
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - cycles(import_graph()))
    assert not gone, f"fixed; remove from KNOWN_CYCLES: {gone}"


def third_party_imports(path: pathlib.Path) -> set[str]:
    """Top-level names of the non-chordctl packages *path* imports, at any depth."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out - {"chordctl"}


def test_only_the_cli_imports_click_and_only_config_reads_yaml():
    wrong = []
    for name, path in all_modules().items():
        used = third_party_imports(path)
        if "click" in used and not (name == "chordctl.cli" or name.startswith("chordctl.cli.")):
            wrong.append(f"{name} imports click (only chordctl/cli/ may)")
        if "yaml" in used and name != "chordctl.config":
            wrong.append(f"{name} imports yaml (only chordctl/config.py may)")
    assert not wrong, "\n".join(wrong)


def test_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a lazy upward import and a two-module cycle are caught."""
    pkg = tmp_path / "chordctl"
    (pkg / "core").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for p in (pkg / "__init__.py", pkg / "core" / "__init__.py", pkg / "cli" / "__init__.py"):
        p.write_text("")
    (pkg / "core" / "ring.py").write_text("def f():\n    from chordctl.cli import ring\n")
    (pkg / "cli" / "ring.py").write_text("from chordctl.core import ring\n")
    (pkg / "errors.py").write_text("from . import render\n")
    (pkg / "render.py").write_text("import chordctl.errors\n")
    names = {module_name_in(tmp_path, p): p for p in pkg.rglob("*.py")}
    graph = {n: imports_of(n, p, set(names)) for n, p in names.items()}
    assert graph["chordctl.core.ring"] == {"chordctl.cli.ring"}
    assert graph["chordctl.errors"] == {"chordctl.render"}
    assert upward_imports(graph) == {("chordctl.core.ring", "chordctl.cli.ring")}
    assert cycles(graph) == {frozenset({"chordctl.core.ring", "chordctl.cli.ring"}),
                             frozenset({"chordctl.errors", "chordctl.render"})}


def module_name_in(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
