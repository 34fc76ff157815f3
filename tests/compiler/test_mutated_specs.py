"""Malformed specs never crash `patchc check`: the bundled examples, each damaged a few times
at random (a line dropped or doubled, a word dropped, replaced, moved or cut short, a symbol
put in), give exit 0 or a diagnostic in the `file:line:col: error[E###]` form with exit 1,
never an internal error (exit 2). The mutations are seeded: a failure names the text that
caused it."""

from __future__ import annotations

import contextlib
import io
import random
import re
from pathlib import Path

import pytest

from patchc.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = [p for p in sorted(EXAMPLES.glob("*.patch")) + sorted(EXAMPLES.glob("language/*.patch"))
         if not p.name.startswith(".")]  # (an editor's or a tool's hidden scratch files)
SYMBOLS = ["->", "@", "*", "{", "}", "(", ")", ",", "..", "=", '"', "0", "-1", "99", "1e9",
           "0.5", "L99", "H99", "[", "]", "all(", "where", "each", "last", "\n", "#", "%",
           "from", "into", "in", "with", "measure", "as", "top", "of", "L0.H0.z", "logits",
           "L*", "resid_pre", "@ 0..3", "@ {1, 2}", "'", "\\", "\t", "é"]
DIAGNOSTIC = re.compile(r"(^|\n)\S+:\d+:\d+: error\[E\d{3}\]: ")


def mutate(text: str, words: list[str], rng: random.Random) -> str:
    """One random edit of `text`."""
    lines = text.split("\n")
    kind = rng.randrange(9)
    if kind == 0 and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
        return "\n".join(lines)
    if kind == 1:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "\n".join(lines)
    if kind == 6:
        return text[:rng.randrange(len(text))]
    parts = re.split(r"(\s+)", text)
    spots = [i for i, p in enumerate(parts) if p.strip()]
    i = rng.choice(spots)
    if kind == 2:
        parts[i] = ""
    elif kind == 3:
        parts[i] = rng.choice(words)
    elif kind == 4:
        parts[i] += " " + rng.choice(SYMBOLS)
    elif kind == 5:
        parts[i] = rng.choice(SYMBOLS)
    elif kind == 7:
        j = rng.choice(spots)
        parts[i], parts[j] = parts[j], parts[i]
    else:
        cut = rng.randrange(len(parts[i]) + 1)
        parts[i] = parts[i][:cut] + rng.choice(SYMBOLS) + parts[i][cut:]
    return "".join(parts)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A copy of examples/'s layout whose models, data and dictionaries link to the real ones
    (so relative paths resolve and nothing is written into the repository)."""
    root = tmp_path_factory.mktemp("examples")
    for name in ("models", "data", "saes"):
        (root / name).symlink_to(EXAMPLES / name)
    (root / "language").mkdir()
    return root


@pytest.mark.parametrize("seed", range(4))
def test_damaged_examples_give_diagnostics_not_crashes(folder, seed):
    rng = random.Random(seed)
    texts = {p: p.read_text() for p in SPECS}
    words = sorted({w for t in texts.values() for w in re.findall(r"[A-Za-z_][\w.]*|\S", t)})
    for n in range(100):
        spec = rng.choice(SPECS)
        text = texts[spec]
        for _ in range(rng.choice([1, 1, 2, 3])):
            text = mutate(text, words, rng)
        path = folder / spec.relative_to(EXAMPLES)
        path.write_text(text)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["check", str(path)])
        said = err.getvalue()
        assert code in (0, 1), f"mutant {n} of {spec.name} (exit {code}):\n{said}\n{text}"
        if code == 1 and "patchc: error" not in said:
            assert DIAGNOSTIC.search(said), f"mutant {n} of {spec.name}:\n{said}\n{text}"
