"""E470: two tables that would write the same file of a result folder are refused by `check`
(a circuit's NAME_K.png, a multi-column table's NAME_COLUMN.png, names differing in case);
the file names reserved are the ones a run really writes."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

import patchc  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

HEAD = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
swap L*.H*.z from clean into corrupt  measure ld  as heads
'''  # a case's own lines start at line 7


@pytest.fixture(scope="module")
def models() -> Models:
    return build()


def _errors(models: Models, body: str) -> list[PatchcError]:
    try:
        check(parse(HEAD + body, "case.patch", models.spec_dir()))
    except PatchcError as e:
        return list(getattr(e, "errors", [e]))
    return []


@pytest.mark.parametrize("body, line, col, fragment", [
    ("circuit c = top {2, 5} of heads\n"
     "swap L0.mlp.out from clean into corrupt  measure ld  as c_5",
     8, 57, "table `c_5` would write c_5.png, the file circuit `c` draws its circuit of 5"),
    ("circuit c = top {2, 50%} of heads\n"  # a percentage: any size may be taken
     "swap L0.mlp.out from clean into corrupt  measure ld  as c_7",
     8, 57, "circuit `c` draws its circuit of 7"),
    ("lens L*.resid_post in clean  measure ld, p = prob(ioi.answer)  as lz\n"
     "swap L0.mlp.out from clean into corrupt  measure ld  as lz_p",
     8, 57, "table `lz_p` would write lz_p.png, the file table `lz` draws its column `p` in"),
    ("swap L0.mlp.out from clean into corrupt  measure ld  as Heads",
     7, 57, "tables `heads` (line 6) and `Heads` differ only in case"),
    ("circuit HEADS_2 = top 2 of heads\ncircuit heads_2 = top 3 of heads",
     8, 9, "differ only in case"),
])
def test_colliding_names(models: Models, body, line, col, fragment):
    [e] = _errors(models, body)
    assert e.code == "E470" and fragment in e.message, e.message
    assert (e.span.line, e.span.col) == (line, col)
    assert e.hint and "rename" in e.hint


@pytest.mark.parametrize("body", [
    "swap L0.mlp.out from clean into corrupt  measure ld  as heads_last",  # README's pair
    "circuit c = top {2, 5} of heads\n"  # no size 7
    "swap L0.mlp.out from clean into corrupt  measure ld  as c_7",
    "circuit c = top 5 of heads\n"  # writes c_5_ld.png and c_5_p.png, not c_5.png
    "swap L0.mlp.out from clean into corrupt  measure ld, p = prob(ioi.answer)  as c_5",
    "lens L*.resid_post in clean  measure ld, p = prob(ioi.answer)  as lz\n"
    "swap L0.mlp.out from clean into corrupt  measure ld, p = prob(ioi.answer)  as lz_p",
    "swap L1.mlp.out from clean into corrupt  measure ld, says = text(2)  as lz\n"  # no text plot
    "swap L0.mlp.out from clean into corrupt  measure ld  as lz_says",
])
def test_distinct_files_pass(models: Models, body):
    assert _errors(models, body) == []


ROOT = Path(__file__).resolve().parents[2]
RUN = f'''model "{ROOT}/examples/models/tiny-gpt2"
run a = ["the cat sat on the mat", "the dog sat on the rug"]
run b = ["the dog sat on the mat", "the cat sat on the rug"]
metric m = logit(" the")
swap L0..1.mlp.out from a into b  measure m  as t
circuit c = top {{1}} of t
lens L0..1.resid_post in a  measure m, p = prob(" the")  as lz
'''


def test_reserved_names_are_the_files_written(tmp_path):
    """The names E470 protects are what a run writes: the circuit's c_1.png and the
    lens's lz_m.png and lz_p.png (so a table `c_1` or `lz_m` would overwrite one)."""
    out = tmp_path / "out"
    patchc.run(RUN, threads=1).save(out, plots=True)
    assert {"c_1.png", "c_1.json", "lz_m.png", "lz_p.png"} <= set(os.listdir(out))
    for clash in ("c_1", "lz_m", "LZ_P"):
        with pytest.raises(PatchcError) as info:
            patchc.compile(RUN + f"swap L0.mlp.out from a into b  measure m  as {clash}\n")
        assert [e.code for e in info.value.errors] == ["E470"]
