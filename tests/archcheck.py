"""The package's import rules, checked by walking every import statement with `ast`.

Every import counts, at module level and inside functions (a function-local import that
dodges a cycle is still a dependency); imports under `if TYPE_CHECKING:` do not (they never
run). The rules:

- layers import only downward (`LAYERS`, lowest last; packages on one line are independent);
- no import cycles between modules;
- `onnxruntime` only in `graphprune.runtime`, `torch` only in `graphprune.torch`;
- op rules (`graphprune.ops`) import nothing but the model layer and themselves.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

# Highest first. "a | b" are independent siblings: neither imports the other.
LAYERS = [
    "graphprune.cli",
    "graphprune.torch",
    "graphprune.report",
    "graphprune.pipeline",
    "graphprune.criteria | graphprune.transforms",
    "graphprune.calibration",
    "graphprune.analysis",
    "graphprune.ops",
    "graphprune.runtime",
    "graphprune.ir",
    "graphprune.errors | graphprune.progress | graphprune.version",
]
# Packages below the pipeline that must not call ONNX Runtime themselves: it is handed to them.
NO_RUNTIME = ["graphprune.ir", "graphprune.ops", "graphprune.analysis", "graphprune.calibration",
              "graphprune.criteria", "graphprune.transforms"]
ONLY_IN = {"onnxruntime": "graphprune.runtime", "torch": "graphprune.torch"}


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file for every .py under the package folder `root`."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in a module, relative
    ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append((mod, [a.name for a in child.names], child.lineno))
            visit(child)

    visit(tree)
    return found


def _layer_of(mod: str) -> tuple[int, str] | None:
    for rank, line in enumerate(LAYERS):
        for pkg in (p.strip() for p in line.split("|")):
            if mod == pkg or mod.startswith(pkg + "."):
                return rank, pkg
    return None


def violations(root: Path) -> list[str]:
    """Every broken rule in the package at `root`, one line each (empty when all hold)."""
    mods = modules(root)
    out: list[str] = []
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for target, names, line in imports(name, path):
            where = f"{path.relative_to(root.parent)}:{line}"
            top = target.split(".")[0]
            if top in ONLY_IN and not (name == ONLY_IN[top] or name.startswith(ONLY_IN[top] + ".")):
                out.append(f"{where}: {name} imports {top} (only {ONLY_IN[top]} may)")
            if not target.startswith("graphprune"):
                continue
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            for dest in subs or [target]:
                if dest in mods and dest != name:
                    _check_edge(name, dest, where, graph, out)
    for cycle in nx.simple_cycles(graph):
        out.append("import cycle: " + " -> ".join(cycle + cycle[:1]))
    return out


def _check_edge(name: str, dest: str, where: str, graph: nx.DiGraph, out: list[str]) -> None:
    """Record one dependency and the layer rules it breaks."""
    graph.add_edge(name, dest)
    src_layer, dst_layer = _layer_of(name), _layer_of(dest)
    if src_layer is None or dst_layer is None or src_layer[1] == dst_layer[1]:
        return
    if dst_layer[0] <= src_layer[0]:
        out.append(f"{where}: {name} imports {dest}, which is not below it")
    if _inside(dest, ["graphprune.runtime"]) and _inside(name, NO_RUNTIME):
        out.append(f"{where}: {name} imports {dest} (only stages run ONNX Runtime)")


def _inside(mod: str, packages: list[str]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in packages)
