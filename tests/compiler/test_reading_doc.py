"""Every example of docs/reading.md checks against the bundled model: each ```patchc block
after the first is read after the page's prelude (its first block) and must check without
errors (paths resolve from the repository root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reading.md"
FENCE = re.compile(r"^```patchc?[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[int, str]]:
    """(line of the fence, text) of every patch block of the page."""
    doc = DOC.read_text("utf-8")
    return [(doc.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(doc)]


BLOCKS = blocks()
PRELUDE = BLOCKS[0][1]


def test_page_has_a_prelude_and_examples() -> None:
    assert PRELUDE.startswith("model ") and len(BLOCKS) >= 6
    # every fence on the page is a checked patch block
    assert DOC.read_text("utf-8").count("\n```") == 2 * len(BLOCKS)


def test_prelude_checks() -> None:
    check(parse(PRELUDE, "docs/reading.md", str(ROOT)))


@pytest.mark.parametrize("line,text", BLOCKS[1:], ids=[f"line{n}" for n, _ in BLOCKS[1:]])
def test_example_checks(line: int, text: str) -> None:
    spec = parse(PRELUDE + "\n" + text, f"docs/reading.md:{line}", str(ROOT))
    check(spec)
