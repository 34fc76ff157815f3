"""`* -> * @ POS`: every edge at some positions. Its rows equal the same edges written one by
one with the position, in the optimized plan and the naive interpreter, and a `*` receiver
at `@ last` keeps what `L*.H*.q @ last` keeps."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import patchc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEAD = f'''model "{ROOT}/examples/models/ioi-gpt2"
data ioi = "{ROOT}/examples/data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''
EDGES = [("L0.H3.out", "L0.mlp.in"), ("embed", "L1.H2.k"), ("L2.mlp.out", "logits")]


@pytest.fixture(scope="module")
def every():
    spec = HEAD + ("swap * -> * @ last from corrupt into clean  measure ld  as s\n"
                   "swap * -> L*.H*.q @ last from corrupt into clean  measure ld  as q\n")
    return patchc.run(spec)


def test_rows_equal_the_edges_written_one_by_one(every):
    s = every["s"].set_index(["sender", "receiver"])["ld"]
    items = ", ".join(f"{a} -> {b} @ last" for a, b in EDGES)
    one = patchc.run(HEAD + f"swap {items} from corrupt into clean  measure ld  as x\n")["x"]
    for (a, b), got in zip(EDGES, one["ld"]):
        assert s[(a, b)] == pytest.approx(got, abs=1e-6)
    q = every["q"].set_index(["sender", "receiver"])["ld"]
    assert len(q) and (q - s.loc[q.index]).abs().max() < 1e-6


def test_naive_interpreter_agrees(every):
    naive = patchc.run(HEAD + "swap * -> * @ last from corrupt into clean  measure ld  as s\n",
                       naive=True)["s"]
    assert (naive["ld"] - every["s"]["ld"]).abs().max() < 1e-5
