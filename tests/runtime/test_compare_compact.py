"""Compact `compare` (compiler/lower_compare.py) against the per-experiment lowering: on tiny
GPT-2, Llama (grouped-query attention) and NeoX models, atp/relp/ig against the exact swap
over `@ each`, one position, heads, a neuron slice and `where`, measured plain, `normalized` and
twice:
  - the plan interpreter's values equal the naive interpreter's, per example (assert_same);
  - the compact lowering (sweep Forwards, or a Forward per member for an item with one
    member a layer, + compact Estimates, paired by member) gives the per-experiment
    lowering's tables and points, both run naively;
  - the exact swap's points equal a plain-hook swap written here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_differential import FAMILIES, HEAD, assert_same, model
from test_differential import tokenizer as _tokenizer
from test_differential_estimates import _lowered

tokenizer = _tokenizer  # the module-scoped fixture, shared with test_differential.py

BODY = """
compare atp, relp, ig(steps=3) against swap on L*.resid_pre @ each, L*.H*.z @ last
    from clean into corrupt measure ld normalized, logprob(d.answer) as cmp
compare atp against swap on L$l.mlp.post[0:6] @ d.p from clean into corrupt where $l != 1
    measure ld as neurons
"""


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str, atol: float) -> None:
    assert list(a.columns) == list(b.columns) and a.shape == b.shape, what
    for col in a.columns:
        if not pd.api.types.is_numeric_dtype(a[col]):
            assert (a[col] == b[col]).all(), (what, col)
            continue
        x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
        assert (np.isnan(x) == np.isnan(y)).all(), (what, col)
        np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=f"{what}.{col}")


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_compare_matches_per_experiment(family: str, tokenizer) -> None:
    from patchc.compiler.ir import Estimate, Forward
    from patchc.compiler.lower import lower
    from patchc.results import Results
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.naive import Interpreter

    fast = assert_same(family, BODY, tokenizer)  # plan interpreter == naive, per example
    m, checked = _lowered(family, tokenizer, BODY)
    results = {}
    for compact in (True, False):
        ir = lower(checked, compact=compact)
        pairs = [p for t in ir.tables for p in t.pairs]
        assert all((p.members is not None) == compact for p in pairs)
        values = Interpreter(checked, m, tokenizer, adapter_for(m)).run(ir)
        results[compact] = Results(ir, values, {})
        if compact:  # one sweep Forward per layer and item (the neuron slice, one member a
            # layer, keeps a Forward per member), one Estimate per item, method and measure
            assert sum(1 for _, f in ir.of_type(Forward) if f.sweep is not None) == 3 + 3
            assert ir.count(Estimate) == 2 * 3 * 2 + 1
    new, old = results[True], results[False]
    for name in ("cmp", "neurons"):
        _frames_equal(old[name], new[name], f"{family} {name}", 1e-6)
        # (Spearman's ranks flip between near-ties that differ by float rounding: the
        # optimized run's per-example values are compared above, by assert_same.)
        _frames_equal(old[name].drop(columns="spearman"), fast[name].drop(columns="spearman"),
                      f"{family} {name} (optimized)", 1e-5)
        cols = ["site", "site_kind", "method"] + (["metric"] if name == "cmp" else [])
        a, b = old.pairs(name), new.pairs(name)
        assert (a[cols] == b[cols]).all().all()  # the same points, in the same order
        _frames_equal(a, b, f"{family} {name} points", 1e-6)
    assert list(new["cmp"].n) == [33] * 6 + [12] * 6 and list(new["neurons"].n) == [2]


def test_exact_points_equal_plain_hooks(tokenizer) -> None:
    """GPT-2, `L*.resid_pre @ each`: each exact point is the mean over examples of ld with
    clean's residual stream swapped into corrupt's at that layer and position (prompts
    left-padded, positions counted from each prompt's first token; a position past a
    prompt's end leaves that example out)."""
    import patchc

    from patchc.runtime.inputs import encode, make_batch

    m = model("gpt2")
    body = "compare atp against swap on L*.resid_pre @ each from clean into corrupt " \
           "measure ld as c\n"
    res = patchc.run(HEAD + body, model=m, tokenizer=tokenizer)
    points = res.pairs("c")
    _, checked = _lowered("gpt2", tokenizer, body)
    rows = list(checked.data["d"].rows)
    bc, bb = (make_batch(encode(tokenizer, list(checked.runs[r].texts)), 0)
              for r in ("clean", "corrupt"))
    tid = [[tokenizer(r[k], add_special_tokens=False)["input_ids"][0] for r in rows]
           for k in ("answer", "distractor")]
    with torch.no_grad():
        clean = m(**bc.model_kwargs(), output_hidden_states=True).hidden_states
    checked_points = 0
    for layer in range(3):
        for pos in range(max(bb.lengths)):
            lds = []
            for i in range(len(rows)):
                n_a, n_b = bc.lengths[i], bb.lengths[i]
                if pos >= n_b:
                    continue  # corrupt's prompt has no such position: no experiment
                wa = bc.input_ids.shape[1] - n_a
                wb = bb.input_ids.shape[1] - n_b
                new = clean[layer][i, wa + min(pos, n_a - 1)]

                def pre(_mod, args, kwargs, i=i, new=new, at=wb + pos):
                    h = args[0].clone()
                    h[i, at] = new
                    return (h,) + args[1:], kwargs

                hook = m.transformer.h[layer].register_forward_pre_hook(pre, with_kwargs=True)
                try:
                    with torch.no_grad():
                        logits = m(**bb.model_kwargs()).logits[i, -1]
                finally:
                    hook.remove()
                lds.append(float(logits[tid[0][i]] - logits[tid[1][i]]))
            got = points[points.site == f"L{layer}.resid_pre @ {pos}"]["exact"].item()
            assert abs(got - float(np.mean(lds))) <= 1e-5 * max(1.0, abs(got)), (layer, pos)
            checked_points += 1
    assert checked_points == len(points) == 33
