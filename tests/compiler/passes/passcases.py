"""Shared by the golden before/after tests of the optimization passes.

Each test compiles a small spec against examples/models/tiny-gpt2 (config and tokenizer
only), runs the passes that come before the one under test (so its input is what the
pipeline really hands it), applies the pass, and compares `## before` / `## after` dumps
(compiler.dump_plan.ir_text: dump_ir plus the optimizer's Forward fields) with
tests/fixtures/passes/<name>.txt. Regenerate after an intended change with
`PATCHC_UPDATE_GOLDEN=1 pytest tests/compiler/passes` and review the diff.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.dump_plan import ir_text  # noqa: E402
from patchc.compiler.ir import IRGraph  # noqa: E402
from patchc.compiler.ir_verify import verify  # noqa: E402
from patchc.compiler.lower import lower  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.pipeline import PASSES, optimize  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "passes"
UPDATE = os.environ.get("PATCHC_UPDATE_GOLDEN") == "1"

HEAD = """model "examples/models/tiny-gpt2"
data d = [
  {"clean": "When Mark and Lucy went to the station , Lucy gave", "corrupt": "When James and Mary went to the station , David gave", "answer": " Mark", "distractor": " Lucy", "p": 2},
  {"clean": "Then , Emma and Sarah had a long day", "corrupt": "Then , Anna and Lucy had a long day", "answer": " Emma", "distractor": " Sarah", "p": 4}
]
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
"""  # noqa: E501


def lowered(body: str, compact: bool = False) -> IRGraph:
    """The spec lowered one Forward per experiment (the per-pass goldens' form), or with
    compact sweeps (compiler/lower_sweep.py; test_pass_sweeps.py)."""
    spec = parse(HEAD + body, "<spec>", str(ROOT))
    return lower(check(spec), compact=compact)


def before_after(body: str, p: Callable[[IRGraph], IRGraph], compact: bool = False
                 ) -> tuple[IRGraph, IRGraph]:
    """The pass's input (the spec lowered, then the passes before `p`) and its output."""
    ir = lowered(body, compact)
    before = optimize(ir, PASSES[:PASSES.index(p)])
    text = ir_text(before)
    after = p(before)
    assert ir_text(before) == text, "the pass mutated its input"
    verify(after)
    return before, after


def golden(name: str, before: IRGraph, after: IRGraph) -> None:
    actual = f"## before\n{ir_text(before)}\n## after\n{ir_text(after)}"
    path = FIXTURES / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, "utf-8")
    assert actual == path.read_text("utf-8"), f"{path} differs; PATCHC_UPDATE_GOLDEN=1 to accept"
