"""Every example of docs/language.md is checked against a bundled model, and its tables are a
golden file (tests/fixtures/language_doc.txt).

A ```patchc block is read after the page's prelude block (its first), unless its fence says
otherwise:

- `standalone`: the block is a whole spec (it has its own `model` line);
- `model=NAME`: the prelude with `examples/models/NAME` (`neox-parallel`: the bundled GPT-NeoX
  model switched to parallel attention and MLP, where `resid_mid` does not exist, with the
  induction data its tokenizer knows);
- `error=E###`: checking must fail with exactly that code; `warn=W###`: it must warn exactly
  that;
- `golden=NAME`: a worked example that is also `examples/language/NAME.patch`: it is read after
  that file's `model` and `data` lines and must be the same program as the file;
- `requires=WORD`: a statement another part of the language adds; skipped while the grammar
  lacks the keyword;
- `folder=PATH`: the example reads a bundled folder (a dictionary under examples/saes/);
  skipped while it is not there.

Relative paths resolve from the repository root. Regenerate the golden file after an intended
change with `PATCHC_UPDATE_GOLDEN=1 pytest tests/compiler/test_language_doc.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler import printer  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.check_names import keywords  # noqa: E402
from patchc.compiler.errors import PatchcError, SpecErrors  # noqa: E402
from patchc.compiler.lower import lower  # noqa: E402
from patchc.compiler.parse import parse, parse_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "language.md"
GOLDEN = ROOT / "tests" / "fixtures" / "language_doc.txt"
UPDATE = os.environ.get("PATCHC_UPDATE_GOLDEN") == "1"
FENCE = re.compile(r"^( *)```patchc([^\n]*)\n(.*?)^ *```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    index: int
    line: int  # of the fence, in docs/language.md
    attrs: dict[str, str]
    text: str

    @property
    def id(self) -> str:
        return f"{self.index:02d}-line{self.line}"


def blocks() -> list[Block]:
    doc = DOC.read_text("utf-8")
    out = []
    for i, m in enumerate(FENCE.finditer(doc)):
        indent = len(m.group(1))
        text = "".join(line[indent:] if line.strip() else line
                       for line in m.group(3).splitlines(keepends=True))
        attrs = dict(a.split("=", 1) if "=" in a else (a, "") for a in m.group(2).split())
        out.append(Block(i, doc.count("\n", 0, m.start()) + 1, attrs, text))
    return out


BLOCKS = blocks()
PRELUDE = BLOCKS[0]
EXAMPLES = BLOCKS[1:]


@pytest.fixture(scope="module")
def parallel_neox(tmp_path_factory) -> Path:
    """The bundled GPT-NeoX model's config and tokenizer, with parallel attention and MLP."""
    src = ROOT / "examples" / "models" / "induction-attn2"
    dst = tmp_path_factory.mktemp("neox") / "neox-parallel"
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    config = json.loads((src / "config.json").read_text("utf-8"))
    config["use_parallel_residual"] = True
    (dst / "config.json").write_text(json.dumps(config), "utf-8")
    return dst


def source(block: Block, neox: Path) -> tuple[str, str]:
    """(spec text, the folder its paths resolve from) of an example."""
    if "standalone" in block.attrs:
        return block.text, str(ROOT)
    if "golden" in block.attrs:
        path = ROOT / "examples" / "language" / f"{block.attrs['golden']}.patch"
        declared = {_decl_key(s) for s in parse(block.text).statements}
        head = [printer.statement(s) for s in parse_file(path).statements
                if not isinstance(s, A.OPERATIONS) and _decl_key(s) not in declared]
        return "\n".join(head) + "\n" + block.text, str(path.parent)
    prelude = PRELUDE.text
    model = block.attrs.get("model")
    if model == "neox-parallel":  # its tokenizer knows the induction data's words, not IOI's
        prelude = (prelude.replace('"examples/models/ioi-gpt2"', json.dumps(str(neox)))
                   .replace("examples/data/ioi.jsonl", "examples/data/induction.jsonl"))
    elif model:
        where = ROOT / "examples" / "models" / model
        assert where.is_dir(), where
        prelude = prelude.replace('"examples/models/ioi-gpt2"', json.dumps(str(where)))
    return prelude + block.text, str(ROOT)


def _decl_key(s: A.Statement) -> tuple[str, str]:
    name = getattr(s, "name", None)
    return type(s).__name__, getattr(name, "value", "")


def summary(block: Block, neox: Path) -> str:
    """What the golden file records for an example: its tables (name, columns, rows), its
    warnings, or its error code."""
    text, base = source(block, neox)
    spec = parse(text, f"docs/language.md:{block.line}", base)
    head = f"## {block.index:02d}: {block.text.splitlines()[0].strip()}"
    try:
        checked = check(spec)
    except SpecErrors as e:
        return head + "\n" + "\n".join(f"error {err.code}: {err.message}" for err in e.errors)
    except PatchcError as e:
        return head + f"\nerror {e.code}: {e.message}"
    lines = [head]
    lines += [f"warning {w.code}: {w.message}" for w in checked.warnings]
    for t in lower(checked).tables:
        lines.append(f"{t.name} [{len(t.rows)} rows]: {', '.join(t.columns)}")
    return "\n".join(lines)


def codes(summary_text: str, kind: str) -> set[str]:
    return set(re.findall(rf"^{kind} ([EW]\d{{3}}):", summary_text, re.MULTILINE))


def available(block: Block) -> bool:
    needed = block.attrs.get("requires")
    return not needed or needed in keywords()


def skip_unless_available(block: Block) -> None:
    if not available(block):
        pytest.skip(f"`{block.attrs['requires']}` is not in the grammar yet")
    folder = block.attrs.get("folder")
    if folder and not (ROOT / folder).is_dir():
        pytest.skip(f"{folder} is not bundled yet")


def test_page_has_examples():
    assert "prelude" in PRELUDE.attrs
    assert len(EXAMPLES) >= 40
    goldens = {b.attrs["golden"] for b in EXAMPLES if "golden" in b.attrs and available(b)}
    files = {p.stem for p in (ROOT / "examples" / "language").glob("*.patch")}
    assert goldens == files  # every worked example is a bundled spec, and the reverse


def test_prelude_checks():
    checked = check(parse(PRELUDE.text, "docs/language.md", str(ROOT)))
    assert not checked.warnings and set(checked.runs) == {"clean", "corrupt"}


@pytest.mark.parametrize("block", EXAMPLES, ids=lambda b: b.id)
def test_example(block: Block, parallel_neox: Path):
    skip_unless_available(block)
    got = summary(block, parallel_neox)
    want_error = block.attrs.get("error")
    if want_error:
        assert codes(got, "error") == {want_error}, got
    else:
        assert not codes(got, "error"), got
        assert codes(got, "warning") == ({block.attrs["warn"]} if "warn" in block.attrs
                                         else set()), got
        assert "[0 rows]" not in got, got


@pytest.mark.parametrize("block", [b for b in EXAMPLES if "golden" in b.attrs],
                         ids=lambda b: b.attrs["golden"])
def test_worked_example_is_the_bundled_spec(block: Block, parallel_neox: Path):
    skip_unless_available(block)
    text, base = source(block, parallel_neox)
    path = ROOT / "examples" / "language" / f"{block.attrs['golden']}.patch"
    doc = parse(text, "docs/language.md", base)
    bundled = parse_file(path)
    # The same statements, whatever their order and lines (default table names aside).
    assert sorted(map(printer.statement, doc.statements)) == sorted(
        map(printer.statement, bundled.statements))


def test_golden_tables(parallel_neox: Path):
    """The tables of every example: a change to checking or lowering shows up here."""
    # Examples of statements added elsewhere (`requires=`) are checked by test_example only,
    # so that this file does not depend on whether they are there yet.
    parts = [summary(b, parallel_neox) for b in EXAMPLES if "requires" not in b.attrs]
    actual = "\n\n".join(parts) + "\n"
    if UPDATE:
        GOLDEN.write_text(actual, "utf-8")
        return
    assert GOLDEN.exists(), f"missing {GOLDEN}; run with PATCHC_UPDATE_GOLDEN=1"
    assert actual == GOLDEN.read_text("utf-8"), f"{GOLDEN} differs; PATCHC_UPDATE_GOLDEN=1"
