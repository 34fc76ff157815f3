"""Compact estimates (compiler/lower_estimates.py) against the reference: on tiny GPT-2, Llama
and NeoX models, atp/relp/ig over `@ each`, single positions, ranges, per-example columns,
neurons, feature slices, heads, q/k/v, the embedding, several site items and `where` (one
that keeps no member too), measured plain and `normalized`:
  - the plan interpreter's batched estimates (runtime/estimate_sweeps.py) equal the naive
    interpreter's member-by-member ones, per example;
  - both equal the per-experiment lowering (one Estimate per experiment) run naively;
  - an independent plain-torch attribution patching (forward hooks, autograd) gives the
    atp numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_differential import FAMILIES, HEAD, ROOT, assert_same, model
from test_differential import tokenizer as _tokenizer

tokenizer = _tokenizer  # the module-scoped fixture, shared with test_differential.py

BODY = """
attribute L*.resid_pre @ each, L*.attn.out @ each, L*.mlp.out @ each
    from clean into corrupt using atp measure ld as e5
attribute L*.H*.z @ each from clean into corrupt using atp measure ld normalized as heads
attribute L$l.mlp.post[*] @ d.p from clean into corrupt using relp where $l != 1
    measure ld, logprob(d.answer) as neurons
attribute L1.resid_post @ 1..2, L$l.attn.out @ last, L$l.H*.v @ {1, 3}
    from clean into corrupt using ig(steps=3) where $l >= 1 measure ld normalized as igs
attribute L0.mlp.post[2:5] @ each, L*.mlp.pre[0:3] @ last
    from clean into corrupt using relp(ah=true) measure ld as slices
attribute embed @ each, L*.H*.k @ last, L1.attn.v @ 1..2, L0.H*.q @ d.p
    from clean into corrupt using atp measure ld as qkv
attribute L$l.resid_post @ each from clean into corrupt using atp where $l > 5
    measure ld as none
"""


def _lowered(family: str, tokenizer, body: str):
    from patchc.compiler.check import check
    from patchc.compiler.parse import parse
    from patchc.runtime.adapters import adapter_for

    m = model(family)
    return m, check(parse(HEAD + body, "<spec>", str(ROOT)), adapter_for(m).spec(),
                    tokenizer=tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_estimates_match_naive_and_per_experiment(family: str, tokenizer) -> None:
    from patchc.compiler.lower import lower
    from patchc.results import Results
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.naive import Interpreter

    fast = assert_same(family, BODY, tokenizer)  # batched == member by member, per example
    assert all(bool(t.sweeps) == (t.name != "none") and not t.rows for t in fast._ir.tables)
    m, checked = _lowered(family, tokenizer, BODY)
    tables = {}
    for compact in (True, False):
        ir = lower(checked, compact=compact)
        assert all(bool(t.sweeps) == compact and bool(t.rows) != compact
                   for t in ir.tables if t.name != "none")  # none: `where` keeps no row
        values = Interpreter(checked, m, tokenizer, adapter_for(m)).run(ir)
        tables[compact] = Results(ir, values, {})
    new, old = tables[True], tables[False]
    for name in old.tables:
        for a, b, c in ((old[name], new[name], fast[name]),
                        (old.per_example(name), new.per_example(name),
                         fast.per_example(name))):
            assert list(a.columns) == list(b.columns) == list(c.columns), name
            assert a.shape == b.shape == c.shape, name
            for col in a.columns:
                if not pd.api.types.is_numeric_dtype(a[col]):
                    assert (a[col] == b[col]).all() and (a[col] == c[col]).all(), col
                    continue
                x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
                z = c[col].to_numpy(dtype=float)
                assert (np.isnan(x) == np.isnan(y)).all(), (family, name, col)
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-6,
                                           err_msg=f"{family}: {name}.{col}")
                if "_se" not in col and name not in ("heads", "igs"):  # normalized: above
                    np.testing.assert_allclose(x, z, rtol=0, atol=1e-5,
                                               err_msg=f"{family}: {name}.{col} (batched)")


def _hooked(m, batch, module, grad: bool):
    """(logits, the module's output) of one plain forward; with `grad`, the output is
    returned as a zero leaf added to it, so autograd.grad gives d(...)/d(output)."""
    got = {}

    def hook(_mod, _inp, out):
        if not grad:
            got["act"] = out
            return None
        leaf = torch.zeros_like(out, requires_grad=True)
        got["act"], got["leaf"] = out, leaf
        return out + leaf

    h = module.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            logits = m(**batch.model_kwargs()).logits  # with left padding's position ids
    finally:
        h.remove()
    return logits, got


def test_atp_equals_plain_hooks(tokenizer) -> None:
    """Every layer's mlp.out at every position on GPT-2: the estimate is m_B + (a_A - a_B).g,
    with g from autograd through a plain forward hook (left-padded prompts, so positions are
    counted from each prompt's first token)."""
    import patchc
    from patchc.runtime.inputs import encode, make_batch

    m = model("gpt2")
    body = "attribute L*.mlp.out @ each from clean into corrupt using atp measure ld as t\n"
    res = patchc.run(HEAD + body, model=m, tokenizer=tokenizer)
    table = res.per_example("t")
    _, checked = _lowered("gpt2", tokenizer, body)
    rows = list(checked.data["d"].rows)
    batches = {r: make_batch(encode(tokenizer, list(checked.runs[r].texts)), 0)
               for r in ("clean", "corrupt")}
    ans = torch.tensor([tokenizer(r["answer"], add_special_tokens=False)["input_ids"][0]
                        for r in rows])
    dis = torch.tensor([tokenizer(r["distractor"], add_special_tokens=False)["input_ids"][0]
                        for r in rows])
    for layer in range(3):
        mod = m.transformer.h[layer].mlp
        bc, bb = batches["clean"], batches["corrupt"]
        _, got_a = _hooked(m, bc, mod, False)
        logits, got_b = _hooked(m, bb, mod, True)
        ld = logits[:, -1].gather(1, ans[:, None])[:, 0] - \
            logits[:, -1].gather(1, dis[:, None])[:, 0]
        (g,) = torch.autograd.grad(ld.sum(), [got_b["leaf"]])
        a_clean, a_b, ld = got_a["act"], got_b["act"].detach(), ld.detach()
        for i in range(len(rows)):
            n_a = int(bc.attention_mask[i].sum())
            n_b = int(bb.attention_mask[i].sum())
            wa, wb = bc.input_ids.shape[1] - n_a, bb.input_ids.shape[1] - n_b
            for pos in range(max(n_a, n_b)):
                got = table[(table.layer == layer) & (table["pos"] == pos) &
                            (table.example == i)]["ld"].item()
                if pos >= n_b:  # B's prompt has no such position: no estimate
                    assert np.isnan(got), (layer, pos, i)
                    continue
                if pos >= n_a:
                    continue  # A's prompt lacks it: its last token stands in (as in a swap)
                want = ld[i] + ((a_clean[i, wa + pos] - a_b[i, wb + pos]) * g[i, wb + pos]).sum()
                assert abs(got - float(want)) <= 1e-5 * max(1.0, abs(float(want))), \
                    (layer, pos, i, got, float(want))
