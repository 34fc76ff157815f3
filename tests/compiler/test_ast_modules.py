"""The AST and its builder live in modules of one concept each (sites, expressions,
declarations, operations; the builder's site rules apart from its statement rules), yet
`compiler.ast` stays the one namespace every other module imports, and `build_ast` keeps
the names parse.py takes from it."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from patchc.compiler import ast as A

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["ast_sites", "ast_exprs", "ast_decls", "ast_ops"]


@pytest.mark.parametrize("part", PARTS)
def test_every_ast_node_of_a_part_is_the_same_object_in_compiler_ast(part):
    mod = importlib.import_module(f"patchc.compiler.{part}")
    nodes = [name for name, obj in vars(mod).items()
             if dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__]
    assert nodes, f"{part} defines no AST node"
    for name in nodes:
        assert getattr(A, name) is getattr(mod, name), f"ast.{name} is not {part}.{name}"


def test_the_statement_names_the_rest_of_the_compiler_uses_stay_in_compiler_ast():
    assert A.OPERATIONS[0] is A.Swap and A.ReadSites in A.OBSERVATIONS
    assert A.Spec.__module__ == "patchc.compiler.ast"
    swap = A.Swap.__dataclass_fields__  # an operation carries its clauses and span
    assert {"clauses", "span"} <= set(swap)
    from patchc.compiler.build_ast import POSITION_FORMS, AstBuilder, span_of
    from patchc.compiler.build_sites import SiteBuilder

    assert issubclass(AstBuilder, SiteBuilder) and callable(span_of)
    assert "a position is `last`" in POSITION_FORMS


@pytest.mark.parametrize("name", ["ast", *PARTS, "build_ast", "build_sites", "build_exprs"])
def test_the_ast_and_builder_modules_stay_under_400_lines(name):
    lines = (ROOT / "compiler" / f"{name}.py").read_text("utf-8").count("\n")
    assert lines <= 400, f"compiler/{name}.py has {lines} lines: split it by concept"


def test_a_spec_parses_into_nodes_of_each_part():
    from patchc.compiler.parse import parse

    spec = parse('model "m"\ndata d = "d.jsonl"\nrun a = d.x\nrun b = d.y\n'
                 "metric ld = logit(d.t) - logit(d.u)\n"
                 "swap L0.H*.z @ last from a into b\n    measure ld normalized\n    as heads\n",
                 "<t>", ".")
    model, data, run_a, _, metric, swap = spec.statements
    assert type(model).__module__ == type(run_a).__module__ == "patchc.compiler.ast_decls"
    assert type(swap).__module__ == "patchc.compiler.ast_ops"
    assert type(swap.sites[0]).__module__ == "patchc.compiler.ast_sites"
    assert type(metric.expr).__module__ == "patchc.compiler.ast_exprs"
    assert isinstance(swap.sites[0].pos, A.PosLast) and swap.clauses.name.value == "heads"
