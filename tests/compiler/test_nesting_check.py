"""The nesting check (parse._too_deep) names the deepest located tree, and nothing in a
shallow spec."""

from __future__ import annotations

from patchc.compiler.errors import Span
from patchc.compiler.limits import MAX_NESTING
from patchc.compiler.parse import _parser, _too_deep

def test_the_nesting_check_names_the_deepest_located_tree() -> None:
    deep = "model \"gpt2\"\nmetric m = " + "-(" * (MAX_NESTING + 2) + "1" + ")" * (
        MAX_NESTING + 2) + "\n"
    span = _too_deep(_parser().parse(deep))
    assert isinstance(span, Span) and span.line == 2 and span.col > 12
    assert _too_deep(_parser().parse('model "gpt2"\nmetric m = -(-1)\n')) is None
