"""The §1 head sweep and a `resid_pre @ each` sweep run on every family's tiny model: GPT-2,
Llama with grouped-query attention, NeoX with a parallel residual, Qwen2, Mistral and Gemma.

`naive=True` and the default (optimized) interpreter give the same tables (up to float
noise); a swap of a run into itself reproduces its unpatched metric in every row; one head's
swap and one position's swap match a hand computation.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import Fam, at, inline, logit_diff

ROWS = [
    {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
     "answer": "Mary", "distractor": "John"},
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
     "answer": "mat", "distractor": "tree"},
    {"clean": "a bird was on the tree", "corrupt": "a fish was on the mat",
     "answer": "bird", "distractor": "fish"},
]
SPEC = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)

swap L*.H*.z from clean into corrupt
    measure ld normalized
    as heads
swap L*.resid_pre @ each from clean into corrupt measure ld as resid
swap L*.H*.z from corrupt into corrupt measure ld as self_heads
swap L*.resid_pre @ each from corrupt into corrupt measure ld as self_resid
"""
FAMILIES = ["gpt2", "llama", "neox", "qwen2", "mistral", "gemma"]


def _ld(fam: Fam, texts: list[str], writes: dict | None = None) -> torch.Tensor:
    logits = fam.forward(fam.ids(texts), writes)[0]
    return logit_diff(logits, [fam.tid(r["answer"]) for r in ROWS],
                      [fam.tid(r["distractor"]) for r in ROWS])


@pytest.mark.parametrize("name", FAMILIES)
def test_family_runs_naive_and_default_alike(name: str, any_family) -> None:
    fam = any_family(name)
    res, naive = fam.run(SPEC, naive=False), fam.run(SPEC, naive=True)
    assert list(res) == ["heads", "resid", "self_heads", "self_resid"]
    assert (res.manifest["interpreter"], naive.manifest["interpreter"]) == ("optimized", "naive")
    for table in res:  # the optimized plan batches and reuses prefixes: float noise only
        pd.testing.assert_frame_equal(res[table], naive[table], check_exact=False,
                                      atol=1e-5, rtol=1e-5)
        pd.testing.assert_frame_equal(res.per_example(table), naive.per_example(table),
                                      check_exact=False, atol=1e-5, rtol=1e-5)
    assert list(res["heads"].columns) == ["layer", "head", "ld", "ld_se"]
    assert len(res["heads"]) == 12
    assert list(res["resid"].columns) == ["layer", "pos", "ld", "ld_se"]
    assert len(res["resid"]) == 18

    base = _ld(fam, [r["corrupt"] for r in ROWS])
    for table, r in [(t, r) for t in ("self_heads", "self_resid") for r in (res, naive)]:
        df = r.per_example(table)
        for _, g in df.groupby([c for c in df.columns if c not in ("example", "ld")]):
            got = torch.tensor(g.sort_values("example")["ld"].to_numpy(), dtype=torch.float32)
            tol = 1e-6 if r is naive else 1e-5
            assert torch.allclose(got, base, atol=tol, rtol=0), (name, table, got, base)

    # one head by hand: L1.H2.z of clean written into corrupt
    z = fam.read([r["clean"] for r in ROWS], "L1.H2.z")["L1.H2.z"]
    want = _ld(fam, [r["corrupt"] for r in ROWS], {"L1.H2.z": at(None, z)})
    df = res.per_example("heads")
    got = df[(df["layer"] == 1) & (df["head"] == 2)].sort_values("example")["ld"]
    assert torch.allclose(torch.tensor(got.to_numpy(), dtype=torch.float32), want, atol=1e-5)
    # position 0 of layer 0 by hand too
    emb = fam.read([r["clean"] for r in ROWS], "embed")["embed"]
    want = _ld(fam, [r["corrupt"] for r in ROWS], {"embed": at(3, emb[:, 3])})
    df = res.per_example("resid")
    got = df[(df["layer"] == 0) & (df["pos"] == 3)].sort_values("example")["ld"]
    assert torch.allclose(torch.tensor(got.to_numpy(), dtype=torch.float32), want, atol=1e-5)
