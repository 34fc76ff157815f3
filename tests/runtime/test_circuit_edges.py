"""Edge circuits: `evaluate` equals a hand edge-masked forward (edge_hand.Hand: plain torch
hooks on the HF modules) on tiny GPT-2, Llama (grouped-query) and NeoX (parallel) models, with
both interpreters: every edge outside the circuit enters its receiver as s_A - s, s the
sender's output in that same forward, the circuit's edges as they are."""

from __future__ import annotations

import pytest
import torch
from edge_hand import Hand
from ops_common import CLEAN, CORRUPT, HEAD, ld_of

SPEC = HEAD + """
attribute * -> * from corrupt into clean using eap  measure ld  as edges
circuit c = top {0, 7, 30, 100%} of edges
evaluate c in clean with {how}(corrupt)  measure ld  as ev
"""


def _masked(fam, patched: list[tuple[str, str]], how: str) -> torch.Tensor:
    """ld per example of clean with the `patched` edges taking corrupt's senders."""
    hand = Hand(fam)
    new = hand.senders(fam.ids(CORRUPT), list(dict.fromkeys(s for s, _ in patched)))
    if how == "mean":
        new = {s: v.mean(0, keepdim=True).expand_as(v) for s, v in new.items()}
    return ld_of(fam, hand.patched(fam.ids(CLEAN), patched, new))


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("how", ["ablate", "mean"])
def test_evaluate_equals_hand_edge_masked_forward(get_family, family, how):
    fam = get_family(family)
    res = fam.run(SPEC.replace("{how}", how))
    edges = [(r.sender, r.receiver) for r in res["c"].itertuples()]  # ranked
    n = len(edges)
    assert n == len(res["edges"]) and list(res["c"]["rank"]) == list(range(1, n + 1))
    ev = res["ev"]
    assert list(ev["edges"]) == [0, 7, 30, n]
    per = res.per_example("ev")
    full = ld_of(fam, fam.forward(fam.ids(CLEAN))[0])
    empty = _masked(fam, edges, how)
    for k in (0, 7, 30, n):
        want = full if k == n else _masked(fam, edges[k:], how)
        got = torch.tensor(per[per["edges"] == k].sort_values("example")["ld"].to_numpy())
        assert torch.allclose(got.float(), want.float(), atol=1e-5), (k, got, want)
        faith = ev[ev["edges"] == k]["faithfulness"].item()
        hand = (want.mean() - empty.mean()) / (full.mean() - empty.mean())
        assert abs(faith - hand.item()) <= 1e-4, (k, faith, hand)
    assert ev[ev["edges"] == n]["faithfulness"].item() == 1.0
    assert ev[ev["edges"] == 0]["faithfulness"].item() == 0.0


def test_edge_circuit_ranks_by_distance_from_the_clean_run(gpt2):
    """An eap table from corrupt into clean estimates clean's metric with one edge patched:
    its effect is estimate - ld(clean), ranked by size."""
    res = gpt2.run(SPEC.replace("{how}", "ablate"))
    clean = ld_of(gpt2, gpt2.forward(gpt2.ids(CLEAN))[0]).mean().item()
    c = res["c"]
    assert c["effect"].tolist() == pytest.approx((c["ld"] - clean).tolist(), abs=1e-4)
    assert c["effect"].abs().is_monotonic_decreasing


def test_the_languages_edge_example_runs(get_family):
    """The statements of the language's edge example, as written (on the tiny GPT-2)."""
    gpt2 = get_family("gpt2")
    res = gpt2.run(HEAD + """
attribute * -> * from clean into corrupt using eap_ig(steps=5)  measure ld  as edges
circuit ioi = top {5, 10, 20, 50, 100} of edges
evaluate ioi in clean with ablate(corrupt)  measure ld
swap L0.H3.out -> L$l.H$h.q from clean into corrupt  measure ld normalized  as s2_to_q
""")
    ev = res[next(n for n in res.tables if n.startswith("op_"))]
    assert list(ev["edges"]) == [5, 10, 20, 50, 100]
    assert ev["faithfulness"].notna().all() and ev["cpr"].notna().all()
    assert len(res["ioi"]) == len(res["edges"])
    assert list(res["s2_to_q"]["l"]) == [1, 1, 1, 1, 2, 2, 2, 2]
