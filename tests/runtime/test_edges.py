"""Path patching and edge ablation equal a hand implementation with plain torch hooks
(edge_hand.py) on tiny GPT-2, Llama (grouped-query) and NeoX (parallel residual) models, with
both interpreters, for q, k, v, mlp.in and logits receivers and joint `all(...)` patches;
single edges also on Qwen2 (q/k/v biases), Mistral and Gemma (one kv head, RMSNorm 1 + w)."""

from __future__ import annotations

import pytest
import torch

from conftest import inline
from edge_hand import Hand

ROWS = [
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the mat", "a": "mat",
     "b": "tree"},
    {"clean": "Mary gave the ball to John", "corrupt": "John gave the ball to Mary",
     "a": "John", "b": "Mary"},
]
PRELUDE = f"""data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.a) - logit(d.b)
"""
EDGES = [("L0.H1.out", "L1.H2.q"), ("embed", "L2.H3.k"), ("L1.mlp.out", "L2.H0.v"),
         ("L0.attn.out", "L1.mlp.in"), ("L1.H3.out", "logits"), ("L0.mlp.out", "L2.mlp.in")]
# L1.H0.out and L1.H2.out come after the L1.H2.q/k receivers: their values are read in the
# patched forward itself, L1.H0.out's once for its three receivers.
JOINT = [("L0.H1.out", "L1.H2.q"), ("L1.H0.out", "L2.mlp.in"), ("L0.mlp.out", "L1.H2.k"),
         ("L1.H2.out", "logits"), ("embed", "L1.H2.q"), ("L1.H0.out", "logits"),
         ("L1.H0.out", "L2.H1.k")]


def _ld(fam, logits: torch.Tensor) -> torch.Tensor:
    n = torch.arange(len(ROWS))
    a = torch.tensor([fam.tid(r["a"]) for r in ROWS])
    b = torch.tensor([fam.tid(r["b"]) for r in ROWS])
    return logits[n, -1, a] - logits[n, -1, b]


def _hand(fam, edges, how: str = "swap", pos: int | None = None) -> float:
    hand = Hand(fam)
    clean, corrupt = fam.ids([r["clean"] for r in ROWS]), fam.ids([r["corrupt"] for r in ROWS])
    senders = [s for s, _ in edges]
    new = hand.senders(clean, senders)
    if how == "mean":
        new = {s: v.mean(0, keepdim=True).expand_as(v) for s, v in new.items()}
    elif how == "zero":
        new = {s: torch.zeros_like(v) for s, v in new.items()}
    return float(_ld(fam, hand.patched(corrupt, edges, new, pos)).mean())


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox", "qwen2", "mistral", "gemma"])
def test_single_edges_equal_hand_path_patching(get_family, name: str) -> None:
    fam = get_family(name)
    items = ", ".join(f"{s} -> {r}" for s, r in EDGES)
    table = fam.run(PRELUDE + f"swap {items} from clean into corrupt measure ld as e")["e"]
    assert list(table["sender"]) == [s for s, _ in EDGES]
    for (s, r), got in zip(EDGES, table["ld"]):
        want = _hand(fam, [(s, r)])
        assert abs(got - want) <= 1e-5, (s, r, got, want)


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_joint_edges_and_ablations_equal_hand(get_family, name: str) -> None:
    fam = get_family(name)
    joint = ", ".join(f"{s} -> {r}" for s, r in JOINT)
    res = fam.run(PRELUDE + f"""swap all({joint}) from clean into corrupt measure ld as j
ablate L0.H1.out -> L1.H2.q, L0.mlp.out -> logits in corrupt with zero measure ld as z
ablate all({joint}) in corrupt with mean(clean) measure ld as m
swap L0.H1.out -> L2.H0.q @ last from clean into corrupt measure ld as p
""")
    assert abs(res["j"]["ld"].iloc[0] - _hand(fam, JOINT)) <= 1e-5
    zeros = [_hand(fam, [e], "zero") for e in [("L0.H1.out", "L1.H2.q"), ("L0.mlp.out", "logits")]]
    assert res["z"]["ld"].tolist() == pytest.approx(zeros, abs=1e-5)
    assert abs(res["m"]["ld"].iloc[0] - _hand(fam, JOINT, "mean")) <= 1e-5
    got = res["p"]["ld"].iloc[0]
    assert abs(got - _hand(fam, [("L0.H1.out", "L2.H0.q")], pos=-1)) <= 1e-5


def test_patterns_expand_to_existing_edges(get_family) -> None:
    fam = get_family("neox")  # parallel: a layer's attention does not feed its MLP
    table = fam.run(PRELUDE + "swap L$i.H0.out -> L$j.mlp.in from clean into corrupt "
                    "measure ld as e")["e"]
    assert [(r.i, r.j) for r in table.itertuples()] == [(0, 1), (0, 2), (1, 2)]
    llama = get_family("llama")  # 4 query heads, 2 kv heads: k receivers by kv head
    table = llama.run(PRELUDE + "swap L0.H0.out -> L1.H*.k from clean into corrupt "
                      "measure ld as e")["e"]
    assert list(table["receiver"]) == ["L1.H0.k", "L1.H2.k"]
