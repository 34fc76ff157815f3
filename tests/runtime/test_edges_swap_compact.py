"""Compact edge sweeps (compiler/ir_edges.py, runtime/edge_sweeps.py): `swap`/`ablate` over
single edges lower to one sweep Forward per receiver group and run of positions. Their tables
equal the per-edge lowering's (one Forward per edge), with each interpreter, and a hand path
patching written with plain torch hooks (edge_hand.py), on GPT-2, Llama (grouped query: k/v
receivers are kv heads) and NeoX (parallel residual) tiny models: patterns, captures,
`where`, several items, `* -> logits`, positions, ablation with zero and mean(A),
`normalized`, and prompts of different lengths (`@ each`: a short prompt's rows are NaN)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import inline
from test_edges import PRELUDE, _hand
from test_edges_compact import same_frames

import patchc
from patchc import compile_cache
import patchc.execution
from patchc.compiler.ir import Forward
from patchc.compiler.lower import lower

BODY = """swap L$l.H*.out -> L$m.H1.q from clean into corrupt measure ld as s where $l >= 1
swap L0.mlp.out -> L*.H*.v, * -> logits from clean into corrupt measure ld normalized as a
ablate L0.H*.out -> L*.mlp.in, embed -> L2.H*.k in corrupt with zero measure ld as z
ablate L*.H0.out -> L2.H*.q @ last in corrupt with mean(clean) measure ld as m
"""
# Prompts of different lengths (no hand computation: the hand runs take equal lengths).
UNEVEN = [
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the mat", "a": "mat",
     "b": "tree"},
    {"clean": "Mary gave the ball", "corrupt": "John gave the ball", "a": "John", "b": "Mary"},
]
BODY_UNEVEN = f"""data u = {inline(UNEVEN)}
run c2 = u.clean
run k2 = u.corrupt
metric ld2 = logit(u.a) - logit(u.b)
swap L0.H*.out -> L1.H2.q @ each, L1.mlp.out -> logits from c2 into k2 measure ld2 as e
ablate embed -> L*.H*.v @ last, L0.H*.out -> L*.mlp.in in k2 with mean(c2) measure ld2 as em
"""
FAMILIES = ["gpt2", "llama", "neox"]


def _per_edge(fam, body: str, monkeypatch) -> patchc.Results:
    """The same spec lowered one Forward per edge (`lower(..., compact=False)`)."""
    with monkeypatch.context() as mp:
        mp.setattr(patchc.execution, "lower", lambda checked: lower(checked, compact=False))
        compile_cache.clear()  # (else a run of the spec before hands back its graphs)
        try:
            return fam.run(PRELUDE + body)
        finally:
            compile_cache.clear()


def _same(a: pd.DataFrame, b: pd.DataFrame, what: str, tol: float = 1e-6) -> None:
    same_frames(a, b, what, rtol=0, atol=tol)


def _sweeps(fam, body: str) -> list[Forward]:
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse
    from patchc.runtime.adapters import adapter_for

    checked = check(parse(fam.spec(PRELUDE + body), "<spec>"), adapter_for(fam.model).spec(),
                    tokenizer=fam.tok)
    ir = lower(checked)
    assert all(not t.rows and t.sweeps for t in ir.tables)
    exps = [f for _, f in ir.of_type(Forward) if f.experiment is not None]
    assert all(f.sweep is not None for f in exps)
    return exps


@pytest.mark.parametrize("name", FAMILIES)
def test_edge_sweeps_equal_per_edge_and_hand(get_family, name: str, monkeypatch) -> None:
    fam = get_family(name)
    sweeps = _sweeps(fam, BODY)
    # one sweep per statement x receiver group (layer; MLP inputs apart) x position run
    assert len(sweeps) < 20 and sum(len(f.sweep) for f in sweeps) > 40
    got, old = fam.run(PRELUDE + BODY), _per_edge(fam, BODY, monkeypatch)
    for t in ("s", "a", "z", "m"):
        _same(old[t], got[t], f"{name} {t}")
        _same(old.per_example(t), got.per_example(t), f"{name} {t} per example")
    s = got["s"]
    assert (s["l"] >= 1).all() and set(s["m"]) == {2}  # `where`; L1 senders reach L2 only
    if name == "llama":  # k/v of a grouped-query model: one receiver per kv head
        assert sorted(set(got["z"]["receiver"]) - {f"L{i}.mlp.in" for i in range(3)}) == \
            ["L2.H0.k", "L2.H2.k"]
    # Rows spread over receiver groups, each against plain hooks on the HF modules.
    a = got["a"]
    picks = [("s", s, 0), ("s", s, len(s) - 1), ("z", got["z"], 1), ("z", got["z"], 5),
             ("m", got["m"], 2)] + [("a", a, i) for i in (0, 7, len(a) - 1)]
    how = {"s": "swap", "a": "swap", "z": "zero", "m": "mean"}
    for t, table, i in picks:
        edge = (table["sender"].iloc[i], table["receiver"].iloc[i])
        want = _hand(fam, [edge], how[t], pos=-1 if t == "m" else None)
        value = table["ld"].iloc[i]
        if t == "a":  # normalized between corrupt (0) and clean (1)
            base = _hand(fam, [], "swap")
            want = (want - base) / (_clean_ld(fam) - base)
        assert abs(value - want) <= 1e-6, (name, t, edge, value, want)


def _clean_ld(fam) -> float:
    from test_edges import ROWS, _ld

    logits = fam.model(fam.ids([r["clean"] for r in ROWS])).logits.detach()
    return float(_ld(fam, logits).mean())


@pytest.mark.parametrize("name", FAMILIES)
def test_uneven_prompts_and_positions_equal_per_edge(get_family, name: str, monkeypatch
                                                      ) -> None:
    fam = get_family(name)
    assert len(_sweeps(fam, BODY_UNEVEN)) >= 3
    got, old = fam.run(PRELUDE + BODY_UNEVEN), _per_edge(fam, BODY_UNEVEN, monkeypatch)
    for t in ("e", "em"):
        _same(old[t], got[t], f"{name} {t}")
        _same(old.per_example(t), got.per_example(t), f"{name} {t} per example")
    per = got.per_example("e")
    assert per["ld2"].isna().any() and per["ld2"].notna().sum() > 10  # the short prompt


def test_chunks_of_a_sweep_equal_one_pass(any_family) -> None:
    """`set batch_size = 6` (3 members of 2 examples per pass) cuts each sweep into chunks,
    each its own pass with its own members' senders: the same table as one pass per sweep."""
    fam = any_family("gpt2")
    whole = fam.run(PRELUDE + BODY)
    chunked = fam.run("set batch_size = 6\n" + PRELUDE + BODY)
    assert chunked.manifest["plan"]["passes"] > whole.manifest["plan"]["passes"] + 10
    for t in ("s", "a", "z", "m"):
        _same(whole[t], chunked[t], f"chunked {t}")


def test_compact_forms_and_fallbacks(any_family) -> None:
    """All(...) groups, a table a circuit ranks and kl metrics keep one Forward per edge;
    a statement of a few edges each in a group of its own too (its forwards batch with the
    others of their layer)."""
    fam = any_family("gpt2")
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse
    from patchc.runtime.adapters import adapter_for

    def forms(body: str) -> list[bool]:
        checked = check(parse(fam.spec(PRELUDE + body), "<spec>"),
                        adapter_for(fam.model).spec(), tokenizer=fam.tok)
        return [bool(t.sweeps) for t in lower(checked).tables if t.op == "swap"]

    assert forms("swap L0.H*.out -> L1.H*.q from clean into corrupt measure ld") == [True]
    assert forms("swap all(L0.H*.out -> L1.H*.q) from clean into corrupt measure ld") == \
        [False]
    assert forms("swap L0.H0.out -> L1.H0.q, L1.H0.out -> L2.H0.q from clean into corrupt "
                 "measure ld") == [False]
    assert forms("swap L0.H*.out -> L1.H*.q from clean into corrupt measure kl(clean)") == \
        [False]
    # a table a circuit ranks is a sweep too (its Select puts the members in row order)
    assert forms("swap L0.H*.out -> L1.H*.q from clean into corrupt measure ld as e\n"
                 "circuit c = top 2 of e") == [True]


CIRCUIT = """swap * -> * from corrupt into clean measure ld normalized as e
circuit c = top {3, 10%, 50%} of e
evaluate c in clean with ablate(corrupt) measure ld as ev
"""


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_circuit_of_an_edge_sweep_equals_per_edge(get_family, name: str, monkeypatch) -> None:
    """A circuit ranks the sweep's rows in the table's order (the receiver groups interleave
    in it): the same ranking, circuit table and faithfulness as from the per-edge table."""
    fam = get_family(name)
    got, old = fam.run(PRELUDE + CIRCUIT), _per_edge(fam, CIRCUIT, monkeypatch)
    assert got["e"]["receiver"].tolist() != sorted(got["e"]["receiver"])  # interleaved groups
    for t in ("e", "c", "ev"):
        _same(old[t], got[t], f"{name} {t}")


def test_head_receivers_write_the_projection_in_place(any_family) -> None:
    """Without gradients a head receiver's hook writes its columns into the fused q/k/v
    projection's own output (no copy of it per head receiver: most of an edge chunk's
    overhead on a small model), with the numbers of the copying write."""
    import torch

    from patchc.runtime.adapters import adapter_for

    fam = any_family("gpt2")
    ad = adapter_for(fam.model)
    proj = fam.model.transformer.h[1].attn.c_attn
    ids = fam.ids(["the cat sat on the mat"])
    seen: list = []
    first = proj.register_forward_hook(lambda m, a, o: seen.append(o.data_ptr()))
    hooks = [("q.in", 1, h, lambda x: x + 0.5) for h in range(2)]
    with torch.no_grad():
        with ad.hooks(hooks):
            last = proj.register_forward_hook(lambda m, a, o: seen.append(o.data_ptr()))
            fast = fam.model(ids).logits
            last.remove()
        first.remove()
        with torch.enable_grad(), ad.hooks(hooks):  # (a gradient-tracking pass copies)
            slow = fam.model(ids).logits.detach()
    assert seen[0] == seen[1]
    assert torch.equal(fast, slow)
