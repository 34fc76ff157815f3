"""Imports point one way. Every import inside the package (top-level, inside functions and
under TYPE_CHECKING alike) is an edge between two of its modules; the graph must have no
cycle, and the stages must only import downwards: patchc/ -> runtime/ -> compiler/ ->
grammar/ (the compiler never imports the runtime, the runtime never imports patchc/)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"patchc": "patchc", "runtime": "patchc.runtime", "compiler": "patchc.compiler",
          "grammar": "patchc.grammar"}
RANK = {"patchc.grammar": 0, "patchc.compiler": 1, "patchc.runtime": 2, "patchc": 3}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = STAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    files = [p for stage in STAGES for p in (ROOT / stage).rglob("*.py")]
    names = {_module(p) for p in files}
    for path in files:
        me = _module(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        g.add_node(me)
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[: len(up) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in names and t != me:
                    g.add_edge(me, t)
                    break
    return g


def _stage(module: str) -> str:
    return max((s for s in RANK if module == s or module.startswith(s + ".")), key=len)


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in cycles)


def test_stages_import_downwards():
    g = _graph()
    up = [(a, b) for a, b in g.edges if RANK[_stage(a)] < RANK[_stage(b)]]
    assert not up, "imports pointing up the pipeline:\n" + "\n".join(f"{a} -> {b}" for a, b in up)
