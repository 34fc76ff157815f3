"""Shared cases and hand-computation helpers of the test_ops_*.py files.

The example rows (clean/corrupt prompt pairs with an answer and a distractor), the spec header
that declares them, and the helpers those files recompute a table's numbers with: the logit
difference of hand-run logits, a table's per-example values and single rows, and the tolerance
check. Everything here goes through plain torch hooks (conftest.Fam.forward), never through
runtime/adapters or runtime/writes.
"""

from __future__ import annotations

import torch
from conftest import Fam, inline, logit_diff

ROWS = [
    {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
     "answer": "Mary", "distractor": "John"},
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
     "answer": "mat", "distractor": "tree"},
    {"clean": "Mary gave the red ball to", "corrupt": "John gave the blue ball to",
     "answer": "John", "distractor": "Mary"},
    {"clean": "a bird was on the tree", "corrupt": "a fish was on the mat",
     "answer": "bird", "distractor": "fish"},
]
CLEAN = [r["clean"] for r in ROWS]
CORRUPT = [r["corrupt"] for r in ROWS]
T = 6  # tokens per prompt
HEAD = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
"""
LD = "logit(d.answer) - logit(d.distractor)"  # the column name of the inline expression
ATOL = 1e-5


def ld_of(fam: Fam, logits: torch.Tensor) -> torch.Tensor:
    return logit_diff(logits, [fam.tid(r["answer"]) for r in ROWS],
                      [fam.tid(r["distractor"]) for r in ROWS])


def hand_ld(fam: Fam, texts: list[str], writes: dict | None = None) -> torch.Tensor:
    return ld_of(fam, fam.forward(fam.ids(texts), writes)[0])


def per_example(res, table: str, col: str, **key) -> torch.Tensor:
    """One row's per-example values, in example order."""
    df = res.per_example(table)
    for k, v in key.items():
        df = df[df[k] == v]
    df = df.sort_values("example")
    assert len(df) == len(ROWS), (key, len(df))
    return torch.tensor(df[col].to_numpy(), dtype=torch.float32)


def row(res, table: str, **key):
    df = res[table]
    for k, v in key.items():
        df = df[df[k] == v]
    assert len(df) == 1, (key, df)
    return df.iloc[0]


def close(a, b, atol: float = ATOL) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b, atol=atol, rtol=1e-5), (a, b, (a - b).abs().max())
