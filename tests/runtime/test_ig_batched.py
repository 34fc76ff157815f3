"""Integrated gradients of compact estimates with members batched (runtime/ig_sweeps.py):
  - on tiny GPT-2, Llama (GQA) and NeoX models, the plan interpreter's batched ig equals the
    naive interpreter's member-by-member ig per example (<= 1e-5), with the default pass
    size and with passes cut by `set batch_size` (several members a pass, steps split over
    passes, one member a pass) and by `set memory`;
  - on GPT-2 it equals integrated gradients written here with plain hooks and autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_differential import FAMILIES, HEAD, assert_same, model
from test_differential import tokenizer as _tokenizer
from test_differential_estimates import _lowered

tokenizer = _tokenizer  # the module-scoped fixture, shared with test_differential.py

BODY = """
attribute L*.resid_pre @ each, L*.H*.z @ last, L1.mlp.post[0:5] @ d.p, L0.attn.out @ 1..2
    from clean into corrupt using ig(steps=5) measure ld normalized, logprob(d.answer) as t
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_ig_equals_member_by_member(family: str, tokenizer) -> None:
    assert_same(family, BODY, tokenizer)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_target_run_with_its_own_writes(family: str, tokenizer) -> None:
    """A target run steered at L1.resid_pre and ablated at L0.mlp.out: a pass that starts at
    layer 1 or 2 takes B's residual stream with the layer-0 write in it and applies the
    steering at L1.resid_pre itself (once: the state is taken before it)."""
    body = """run steered = d.corrupt with steer L1.resid_pre by v, ablate L0.mlp.out
attribute L*.resid_pre @ each, L*.attn.out @ last from clean into steered using ig(steps=3)
    measure ld as t
"""
    assert_same(family, body, tokenizer)


@pytest.mark.parametrize("settings", ["set batch_size = 30\n", "set batch_size = 6\n",
                                      "set batch_size = 1\n", 'set memory = "40MB"\n'])
def test_pass_sizes(settings: str, tokenizer, monkeypatch) -> None:
    """3 examples x 5 steps: 30 rows hold 2 members a pass, 6 rows 2 steps of one member
    (steps in passes of 2, 2, 1), 1 row still one step of one member (the examples)."""
    from patchc.runtime import ig_sweeps

    shapes = []
    real = ig_sweeps.gradients

    def spy(*args, **kw):
        shapes.append(kw["repeat"])
        return real(*args, **kw)

    monkeypatch.setattr(ig_sweeps, "gradients", spy)
    assert_same("gpt2", settings + BODY, tokenizer)
    want = {"set batch_size = 30\n": 10, "set batch_size = 6\n": 2,
            "set batch_size = 1\n": 1}.get(settings)
    if want is not None:
        assert max(shapes) == want
    else:  # the memory budget allows fewer rows than the default pass
        assert 1 <= max(shapes) < ig_sweeps.IG_PASS_ROWS // 3


def test_ig_equals_plain_autograd(tokenizer) -> None:
    """GPT-2, `L*.resid_pre @ each`, 4 steps: for each layer and position, the metric's
    gradient at that position of the block's input, with a_B + alpha (a_A - a_B) written
    there alone (alpha = (t + 0.5) / 4), averaged over the steps, dotted with a_A - a_B,
    plus m_B (left-padded prompts: positions from each prompt's first token)."""
    import patchc
    from patchc.runtime.inputs import encode, make_batch

    m = model("gpt2")
    steps = 4
    body = (f"attribute L*.resid_pre @ each from clean into corrupt using ig(steps={steps}) "
            "measure ld as t\n")
    got = patchc.run(HEAD + body, model=m, tokenizer=tokenizer).per_example("t")
    _, checked = _lowered("gpt2", tokenizer, body)
    rows = list(checked.data["d"].rows)
    bc, bb = (make_batch(encode(tokenizer, list(checked.runs[r].texts)), 0)
              for r in ("clean", "corrupt"))
    ans, dis = ([tokenizer(r[k], add_special_tokens=False)["input_ids"][0] for r in rows]
                for k in ("answer", "distractor"))
    idx = torch.arange(len(rows))

    def ld(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return last[idx, torch.tensor(ans)] - last[idx, torch.tensor(dis)]

    with torch.no_grad():
        clean = m(**bc.model_kwargs(), output_hidden_states=True).hidden_states
        out = m(**bb.model_kwargs(), output_hidden_states=True)
        corrupt, m_b = out.hidden_states, ld(out.logits)
    wa = [bc.input_ids.shape[1] - n for n in bc.lengths]
    wb = [bb.input_ids.shape[1] - n for n in bb.lengths]
    checked_values = 0
    for layer in range(3):
        for pos in range(max(bb.lengths)):
            here = [i for i in range(len(rows)) if pos < bb.lengths[i]]
            at_a = [wa[i] + min(pos, bc.lengths[i] - 1) for i in here]
            at_b = [wb[i] + pos for i in here]
            a = clean[layer][here, at_a]
            b = corrupt[layer][here, at_b]
            g_sum = torch.zeros_like(b)
            for t in range(steps):
                point = b + (t + 0.5) / steps * (a - b)
                leaf = torch.zeros_like(corrupt[layer], requires_grad=True)

                def pre(_mod, args, kwargs, point=point, leaf=leaf, at_b=at_b, here=here):
                    h = args[0].clone()
                    h[here, at_b] = point
                    return (h + leaf,) + args[1:], kwargs

                hook = m.transformer.h[layer].register_forward_pre_hook(pre, with_kwargs=True)
                try:
                    (g,) = torch.autograd.grad(ld(m(**bb.model_kwargs()).logits).sum(), [leaf])
                finally:
                    hook.remove()
                g_sum += g[here, at_b]
            want = m_b[here] + ((a - b) * g_sum / steps).sum(-1)
            cell = got[(got.layer == layer) & (got["pos"] == pos)].sort_values("example")
            for i, w in zip(here, want.tolist()):
                v = cell[cell.example == i]["ld"].item()
                assert abs(v - w) <= 1e-5 * max(1.0, abs(w)), (layer, pos, i, v, w)
                checked_values += 1
            for i in set(range(len(rows))) - set(here):  # corrupt lacks the position
                assert np.isnan(cell[cell.example == i]["ld"].item())
    assert checked_values > 60
