"""Node circuits (`circuit NAME = top K of TABLE`, `evaluate`), recomputed by hand.

The ranking is checked against the table it ranks, and each evaluated size against a plain
torch forward (conftest.Fam.forward, hooks on the HF modules) in which every head outside
the circuit takes the corrupt run's value (or its mean over examples); faithfulness and
its areas against the MIB formulas written out here. Keeping every row gives exactly 1 and
keeping none exactly 0.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import at
from ops_common import CLEAN, CORRUPT, HEAD, close, hand_ld

HEADS = [f"L{layer}.H{head}.z" for layer in range(3) for head in range(4)]  # table row order
SIZES = (0, 3, 7, 12)
SPEC = HEAD + f"""
swap L*.H*.z from clean into corrupt  measure ld  as heads
circuit c = top {{{", ".join(map(str, SIZES))}}} of heads
evaluate c in clean with {{how}}(corrupt)  measure ld  as ev
"""


def _patched(fam, keep: set[str], how: str) -> dict:
    """Hand writes: every head not in `keep` takes corrupt's z (or its example mean)."""
    src = fam.read(CORRUPT, *HEADS)
    writes = {}
    for site in HEADS:
        if site in keep:
            continue
        v = src[site]
        if how == "mean":
            v = v.mean(0, keepdim=True).expand_as(v)
        writes[site] = at(None, v)
    return writes


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("how", ["ablate", "mean"])
def test_evaluate_equals_hand_masked_forward(get_family, family, how):
    fam = get_family(family)
    res = fam.run(SPEC.replace("{how}", how))
    heads, circuit, ev = res["heads"], res["c"], res["ev"]
    # The ranking: |ld - ld(corrupt)|, largest first, ties in table order.
    base = hand_ld(fam, CORRUPT).mean().item()
    effects = [v - base for v in heads["ld"]]
    order = sorted(range(len(effects)), key=lambda i: (-round(abs(effects[i]), 5), i))
    ranked = [f"L{heads['layer'][i]}.H{heads['head'][i]}.z" for i in order]
    got = [f"L{r.layer}.H{r.head}.z" for r in circuit.itertuples()]
    assert got == ranked
    close(circuit["effect"], [effects[i] for i in order], atol=1e-4)
    assert list(circuit["rank"]) == list(range(1, 13))
    full = hand_ld(fam, CLEAN).mean().item()
    empty = hand_ld(fam, CLEAN, _patched(fam, set(), how)).mean().item()
    for k in SIZES:
        r = ev[ev["nodes"] == k].iloc[0]
        m = hand_ld(fam, CLEAN, _patched(fam, set(got[:k]), how))
        close(r["ld"], m.mean(), atol=1e-4)
        close(r["faithfulness"], (m.mean().item() - empty) / (full - empty), atol=1e-4)
        assert r["fraction"] == k / 12
    # Exactly 1 with every node kept, exactly 0 with none: the baselines' own forwards.
    assert ev[ev["nodes"] == 12]["faithfulness"].item() == 1.0
    assert ev[ev["nodes"] == 0]["faithfulness"].item() == 0.0


def test_evaluate_per_example_equals_hand(gpt2):
    """Per example, not only the means: the size-7 forward is the hand-masked one."""
    res = gpt2.run(SPEC.replace("{how}", "ablate"))
    got = [f"L{r.layer}.H{r.head}.z" for r in res["c"].itertuples()]
    df = res.per_example("ev")
    # raw values only: a per-example `faithfulness` would be the raw ld under another name
    assert "faithfulness" not in df.columns and "ld" in df.columns
    mine = torch.tensor(df[df["nodes"] == 7].sort_values("example")["ld"].to_numpy())
    close(mine, hand_ld(gpt2, CLEAN, _patched(gpt2, set(got[:7]), "ablate")))


def test_areas_follow_mib(gpt2):
    """cpr and cmd: trapezoids between consecutive sizes over the fraction kept."""
    res = gpt2.run(SPEC.replace("{how}", "ablate"))
    ev = res["ev"].sort_values("fraction")
    xs, fs = list(ev["fraction"]), list(ev["faithfulness"])
    cpr = sum((x2 - x1) * (f1 + f2) / 2 for x1, x2, f1, f2 in zip(xs, xs[1:], fs, fs[1:]))
    cmd = sum((x2 - x1) * (abs(1 - f1) + abs(1 - f2)) / 2
              for x1, x2, f1, f2 in zip(xs, xs[1:], fs, fs[1:]))
    assert list(ev["cpr"]) == pytest.approx([cpr] * len(ev), abs=1e-12)
    assert list(ev["cmd"]) == pytest.approx([cmd] * len(ev), abs=1e-12)


def test_percentages_and_normalized_tables(gpt2):
    """A percentage keeps floor(p * n / 100) rows and stands at p on the axis; a normalized
    table ranks by the distance from 0 (its no-intervention value) as the raw one does."""
    res = gpt2.run(HEAD + """
swap L*.H*.z from clean into corrupt  measure ld normalized  as heads
circuit c = top {25%, 50%, 100%} of heads
evaluate c in clean with ablate(corrupt)  measure ld  as ev
swap L*.H*.z from clean into corrupt  measure ld  as raw
circuit r = top 3 of raw
""")
    ev = res["ev"]
    assert list(ev["nodes"]) == [3, 6, 12] and list(ev["fraction"]) == [0.25, 0.5, 1.0]
    assert ev["faithfulness"].iloc[-1] == 1.0
    assert list(res["c"]["rank"]) == list(range(1, 13))
    same = [(r.layer, r.head) for r in res["c"].itertuples()]
    raw = [(r.layer, r.head) for r in res["r"].itertuples()]
    assert same[:3] == raw[:3]
    close(res["c"]["effect"], res["c"]["ld"], atol=1e-6)


def test_attribution_table_and_zero_ablation_circuit(gpt2):
    """An attribute table ranks by |estimate - m_B|; a zero-ablation table normalized without
    a source run (m / m_B) by |value - 1|."""
    res = gpt2.run(HEAD + """
attribute L*.H*.z from clean into corrupt using atp  measure ld  as est
circuit a = top 4 of est
ablate L*.H*.z in clean  measure ld normalized  as zeroed
circuit z = top 4 of zeroed
""")
    base = hand_ld(gpt2, CORRUPT).mean().item()
    close(res["a"]["effect"], res["a"]["ld"] - base, atol=1e-4)
    assert list(res["a"]["effect"].abs()) == sorted(res["a"]["effect"].abs(), reverse=True)
    close(res["z"]["effect"], res["z"]["ld"] - 1, atol=1e-5)
    assert not math.isnan(res["z"]["effect"].iloc[0])


def test_ranking_ties_nan_and_normalization():
    """Ties keep the table's row order, NaN effects rank last; a normalized column ranks by
    the normalized distance, over the examples each row has."""
    from patchc.compiler.ir import Select
    from patchc.runtime.circuits import rank

    t = torch.tensor
    values = {"m0": t([1.0, 3.0]), "m1": t([3.0, 1.0]), "m2": t([0.0, 0.0]),
              "m3": t([float("nan"), float("nan")]), "m4": t([6.0, float("nan")]),
              "ref": t([2.0, 2.0]), "src": t([4.0, 6.0])}
    r = rank(Select("t", ("m0", "m1", "m2", "m3", "m4"), "ref"), values)
    assert r.effects[:3] == (0.0, 0.0, -2.0) and math.isnan(r.effects[3])
    assert r.effects[4] == 4.0  # example 1 of m4 is NaN: its reference is example 0 alone
    assert r.order == (4, 2, 0, 1, 3) and r.ranks == (3, 4, 2, 5, 1)
    assert r.kept(2) == [4, 2]
    # (m - t) / (s - t) on means: t = 2, s = 5 (and s = 4 over example 0 only, for m4)
    n = rank(Select("t", ("m0", "m2", "m4"), "ref", ("ref", "src")), values)
    assert n.values == pytest.approx((0.0, -2 / 3, 2.0)) and n.order == (2, 1, 0)
    z = rank(Select("t", ("m1", "m2"), "ref", ("ref",)), values)  # m / m_ref: 1 means none
    assert z.effects == pytest.approx((0.0, -1.0)) and z.order == (1, 0)


def test_neuron_circuit_equals_hand(get_family):
    """A neuron sweep is a node table too: its circuit's left-out neurons take the corrupt
    run's values."""
    fam = get_family("gpt2")
    res = fam.run(HEAD + """
swap L1.mlp.post[0..11] from corrupt into clean  measure ld  as neurons
circuit n = top {0, 4, 12} of neurons
evaluate n in clean with ablate(corrupt)  measure ld  as ev
""")
    kept = list(res["n"]["node"])
    assert kept[0].startswith("L1.mlp.post[") and len(kept) == 12
    sites = [f"L1.mlp.post[{i}]" for i in range(12)]
    src = fam.read(CORRUPT, *sites)
    per = res.per_example("ev")
    for k in (0, 4, 12):
        writes = {s: at(None, src[s]) for s in sites if s not in kept[:k]}
        got = torch.tensor(per[per["nodes"] == k].sort_values("example")["ld"].to_numpy())
        close(got, hand_ld(fam, CLEAN, writes))
    assert res["ev"]["faithfulness"].tolist()[0] == 0.0
    assert res["ev"]["faithfulness"].tolist()[-1] == 1.0


def test_evaluate_against_its_own_run_warns_with_a_fix(gpt2):
    """Ablating with the evaluated run itself leaves nothing to normalize by: W470 says to
    ablate with another run (not to drop `normalized`, which evaluate does not take)."""
    with pytest.warns(Warning, match="W470"):
        res = gpt2.run(SPEC.replace("{how}(corrupt)", "ablate(clean)"))
    (w,) = [w for w in res.warnings if w.code == "W470"]
    assert "`faithfulness` is NaN" in w.message
    assert "ablate with another run" in w.hint and "normalized`" not in w.hint
