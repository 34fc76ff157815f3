"""docs/errors.md documents every code patchc can raise, and nothing it cannot.

Codes are collected from the source as the string literals they are raised with
(`"E412"`, `"W301"`) in compiler/, runtime/ and patchc/; docs/errors.md lists them in table
rows, one code (`| E412 |`) or a range (`| E430–E434 |`) per row.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("compiler", "runtime", "patchc")
CODE = re.compile(r"""["']([EW]\d{3})["']""")
ROW = re.compile(r"^\|\s*([EW])(\d{3})(?:\s*[–-]\s*[EW]?(\d{3}))?\s*\|", re.MULTILINE)


def raised() -> dict[str, list[str]]:
    """Each code in the source -> the files that mention it."""
    out: dict[str, list[str]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for code in CODE.findall(path.read_text("utf-8")):
                out.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return out


def documented() -> set[str]:
    out = set()
    for letter, lo, hi in ROW.findall((ROOT / "docs" / "errors.md").read_text("utf-8")):
        out |= {f"{letter}{n:03d}" for n in range(int(lo), int(hi or lo) + 1)}
    return out


def test_codes_are_collected():
    codes = raised()
    # A few codes of every stage, so that a broken pattern cannot pass for "all documented".
    assert {"E001", "E100", "E201", "E307", "E412", "E501", "E601", "W301"} <= set(codes)
    assert {"E001", "E430", "E432", "E434", "E603"} <= documented()


def test_every_raised_code_is_documented():
    missing = {c: files for c, files in raised().items() if c not in documented()}
    assert not missing, "codes raised but not in docs/errors.md: " + ", ".join(
        f"{c} ({', '.join(sorted(set(f)))})" for c, f in sorted(missing.items()))


def test_every_documented_code_is_raised():
    stale = sorted(documented() - set(raised()))
    assert not stale, f"docs/errors.md lists codes nothing raises: {', '.join(stale)}"
