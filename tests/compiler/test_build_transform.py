"""The AST builder's own tree walk (build_exprs.ExprBuilder.transform) builds what lark's
Transformer.transform built from the same tree: the same AST, spans and collected errors on
every spec in the repository and on specs with mistakes, the same VisitError around what a
method raises; and the nesting check names the same place as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Transformer
from lark.exceptions import VisitError

from patchc.compiler.build_ast import AstBuilder
from patchc.compiler.build_exprs import _methods
from patchc.compiler.errors import Source, Span
from patchc.compiler.limits import MAX_NESTING
from patchc.compiler.parse import _parser, _too_deep

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(p for p in ROOT.rglob("*.patch") if ".venv" not in p.parts)
MISTAKES = [
    'model "gpt2"\nmetric m = logit("\\ud800")\n',  # a lone surrogate in a string
    'model "gpt2"\ndata d = [{"p": 1, "p": 2}]\nrun a = d.x.y\n',  # duplicate key, column
    'model "gpt2"\nmetric m = 1e999999\n',  # a number beyond a float
]


def _both(text: str):
    tree = _parser().parse(text)
    ours, theirs = AstBuilder(Source(text)), AstBuilder(Source(text))
    out = []
    for builder, run in ((ours, AstBuilder.transform), (theirs, Transformer.transform)):
        try:
            out.append(("ok", run(builder, tree), [e.render() for e in builder.errors]))
        except VisitError as e:
            out.append(("visit", e.rule, e.obj, type(e.orig_exc), str(e.orig_exc)))
    return out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_walk_builds_what_lark_built(path: Path) -> None:
    ours, theirs = _both(path.read_text("utf-8"))
    assert ours == theirs


@pytest.mark.parametrize("text", MISTAKES)
def test_the_walk_collects_and_raises_what_lark_did(text: str) -> None:
    ours, theirs = _both(text)
    assert ours == theirs
    assert ours[0] == "visit" or ours[2]  # each case is a mistake


def test_the_nesting_check_names_the_deepest_located_tree() -> None:
    deep = "model \"gpt2\"\nmetric m = " + "-(" * (MAX_NESTING + 2) + "1" + ")" * (
        MAX_NESTING + 2) + "\n"
    span = _too_deep(_parser().parse(deep))
    assert isinstance(span, Span) and span.line == 2 and span.col > 12
    assert _too_deep(_parser().parse('model "gpt2"\nmetric m = -(-1)\n')) is None


def test_every_rule_the_specs_use_has_its_method_looked_up_once() -> None:
    rules, _ = _methods(AstBuilder)
    used = {t.data for p in SPECS for t in _parser().parse(p.read_text("utf-8")).iter_subtrees()}
    assert used and used <= set(rules)
    assert _methods(AstBuilder) is _methods(AstBuilder)  # per class, once
