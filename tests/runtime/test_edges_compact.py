"""Compact edge attribution (compiler/ir_edges.py, runtime/edge_sets.py): one Estimate per
measure and position run stands for every edge of an `attribute EDGES ... using eap | eap_ig
| relp`. Its tables equal the per-edge lowering's (one Estimate per edge, runtime/
edge_estimates.py), run by the naive interpreter (which expands the compact Estimate member
by member) and by the optimized executor (one batched product), on GPT-2, Llama (grouped
query) and NeoX (parallel residual) tiny models, with patterns, captures, `where`, `all(...)`
groups, positions and prompts of different lengths; and a hand computation of one member."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import transformers as tf
from test_differential import CONFIGS, FAMILIES, HEAD, ROOT

import patchc
from patchc.compiler.ir import Estimate

# Captures on both ends and `where`; every edge into the logits; a joint group at the last
# position; one head's senders into q at each position (the prompts differ in length: a
# shorter prompt lacks the last positions, its rows are NaN there).
BODY = """attribute L$l.H$h.out -> L2.H$h.v, * -> logits,
    all(embed -> L1.mlp.in, L0.mlp.out -> L2.H1.k) @ last, L0.H*.out -> L1.H2.q @ each
    from clean into corrupt using METHOD
    measure ld, logit(d.answer) as t where $l >= 1
"""
METHODS = ["eap", "eap_ig(steps=3)", "relp"]
_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(scope="module")
def tokenizer():
    return tf.AutoTokenizer.from_pretrained(ROOT / "examples" / "models" / "tiny-gpt2")


def model(family: str) -> torch.nn.Module:
    """test_differential's tiny model with weights 10x larger than the default init: the
    edges' scores are then of the metric's own size, not 1e-5 of it."""
    if family not in _MODELS:
        torch.manual_seed(0)
        config = CONFIGS[family]()
        config.initializer_range = 0.2
        m = tf.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() == 1:  # norm weights and biases: make them non-trivial
                    p.add_(torch.randn_like(p) * 0.2)
        _MODELS[family] = m
    return _MODELS[family]


def _tables(family: str, method: str, tok) -> dict[str, patchc.Results]:
    from patchc.compiler.check import check
    from patchc.compiler.lower import lower
    from patchc.compiler.parse import parse
    from patchc.results import Results
    from patchc.runtime.adapters import adapter_for
    from patchc.runtime.naive import Interpreter

    spec = HEAD + BODY.replace("METHOD", method)
    m = model(family)
    checked = check(parse(spec, "<spec>", str(ROOT)), adapter_for(m).spec(), tokenizer=tok)
    out = {}
    for compact in (True, False):
        ir = lower(checked, compact=compact)
        (table,) = ir.tables
        estimates = ir.count(Estimate)
        if compact:  # one Estimate per measure and run of positions, not one per edge
            assert not table.rows and estimates == 2 * len(table.sweeps) < 2 * 20
        else:
            assert not table.sweeps and estimates == 2 * len(table.rows)
        values = Interpreter(checked, m, tok, adapter_for(m)).run(ir)
        out["compact" if compact else "per-edge"] = Results(ir, values, {})
    out["optimized"] = patchc.run(spec, model=m, tokenizer=tok)
    return out


def same_frames(a, b, what: str, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Equal columns and shape; text columns equal, numbers within the tolerances (NaN
    where the other is NaN)."""
    assert list(a.columns) == list(b.columns) and a.shape == b.shape, what
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind != "f":
            assert [str(v) for v in x] == [str(v) for v in y], (what, col)
            continue
        assert (np.isnan(x) == np.isnan(y)).all(), (what, col)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"{what}.{col}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_compact_equals_per_edge_and_naive(family: str, method: str, tokenizer) -> None:
    res = _tables(family, method, tokenizer)
    old = res["per-edge"]
    per = old.per_example("t")
    assert len(old["t"]) > 40 and per["ld"].isna().any()  # NaN: a short prompt's positions
    spread = per["ld"].max() - per["ld"].min()
    assert spread > 0.1, spread  # the scores are not negligible next to the tolerance
    for name in ("compact", "optimized"):
        same_frames(old["t"], res[name]["t"], f"{family} {method} {name}")
        same_frames(old.per_example("t"), res[name].per_example("t"),
                    f"{family} {method} {name}")


def test_a_member_equals_a_hand_computation(tokenizer) -> None:
    """The joint group's row: m_B + the sum of its two edges' (s_A - s_B) . g_r, from reads
    and input gradients the test takes itself (plain hooks on the GPT-2 modules)."""
    m = model("gpt2")
    res = _tables("gpt2", "eap", tokenizer)["optimized"]
    row = res.per_example("t")
    joint = row[row["sender"].isna()] if "sender" in row else None
    assert joint is not None and len(joint) == 3
    got = joint["ld"].to_numpy()

    rows = json.loads(re.search(r"data d = (\[.*?\n\])", HEAD, re.S).group(1))
    want = []
    for r in rows:
        a = _acts(m, tokenizer, r["clean"])
        b = _acts(m, tokenizer, r["corrupt"], grads=(r["answer"], r["distractor"]))
        score = b["ld"]
        # embed -> L1.mlp.in and L0.mlp.out -> L2.H1.k at the last position
        score += float((a["embed"][-1] - b["embed"][-1]) @ b["g_mlp1"][-1])
        score += float((a["mlp0"][-1] - b["mlp0"][-1]) @ b["g_k2h1"][-1])
        want.append(score)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _acts(m, tok, text: str, grads: tuple[str, str] | None = None) -> dict:
    """Sender outputs of one prompt (embed, L0's MLP output), and with `grads` the metric and
    its gradients at L1's MLP input and at L2 head 1's key input (a zero added to the
    residual stream as those components alone read it)."""
    ids = torch.tensor([tok(text)["input_ids"]])
    got: dict = {}
    h = m.transformer.h
    hooks = [h[0].register_forward_pre_hook(
                 lambda mod, a, k: got.__setitem__("embed", (a[0] if a else
                                                             k["hidden_states"])[0].detach()),
                 with_kwargs=True),
             h[0].mlp.register_forward_hook(
                 lambda mod, a, o: got.__setitem__("mlp0", o[0].detach()))]
    zeros = {}
    if grads is not None:
        z1 = torch.zeros(1, ids.shape[1], m.config.n_embd, requires_grad=True)
        z2 = torch.zeros(1, ids.shape[1], m.config.n_embd, requires_grad=True)
        zeros = {"g_mlp1": z1, "g_k2h1": z2}
        hooks.append(h[1].ln_2.register_forward_pre_hook(lambda mod, a: (a[0] + z1,)))
        d, dh = m.config.n_embd, m.config.n_embd // m.config.n_head
        lo = d + 1 * dh  # k of head 1

        def k_input(mod, a, out):
            full = mod.forward(h[2].ln_1.forward(box["x"] + z2))
            out = out.clone()
            out[..., lo:lo + dh] = full[..., lo:lo + dh]
            return out
        box: dict = {}
        hooks.append(h[2].ln_1.register_forward_pre_hook(lambda mod, a: box.__setitem__(
            "x", a[0])))
        hooks.append(h[2].attn.c_attn.register_forward_hook(k_input))
    with torch.enable_grad():
        logits = m(ids).logits[0, -1]
        for x in hooks:
            x.remove()
        if grads is None:
            return got
        ans, dis = (tok(w)["input_ids"][-1] for w in grads)
        ld = logits[ans] - logits[dis]
        gs = torch.autograd.grad(ld, list(zeros.values()))
    got["ld"] = float(ld.detach())
    got.update({k: g[0] for k, g in zip(zeros, gs)})
    return got
