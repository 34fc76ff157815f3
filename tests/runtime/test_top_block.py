"""A pass that computes no logits stops after the last block it reads or writes
(runtime/pass_plan.top_block, runtime/prefix.skip_above): here a run that only vectors read,
at its embedding, L0 and L1 (an operation's own runs are measured: their unpatched
baselines). On tiny GPT-2, Llama and NeoX models every value equals the naive
interpreter's, which runs every block of every pass."""

from __future__ import annotations

import pytest

import patchc
from test_differential import FAMILIES, HEAD, assert_same, model
from test_differential import tokenizer as _tokenizer

tokenizer = _tokenizer  # the module-scoped fixture, shared with test_differential.py

BODY = """
run third = d.corrupt
vector w = mean(third.L0.resid_post @ last) - mean(third.L1.attn.out @ last)
vector u = mean(third.embed @ last)
steer L2.resid_pre in clean by w measure ld as st
steer L1.resid_pre in corrupt by u measure ld as su
"""

BLOCKS = {"gpt2": lambda m: m.transformer.h, "llama": lambda m: m.model.layers,
          "neox": lambda m: m.gpt_neox.layers}


@pytest.mark.parametrize("family", FAMILIES)
def test_passes_without_logits_stop_after_their_last_read(family: str, tokenizer) -> None:
    m = model(family)
    blocks = BLOCKS[family](m)
    passes: list[set[int]] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a: passes.append(set()))]
    handles += [b.register_forward_pre_hook(lambda _m, _a, i=i: passes[-1].add(i))
                for i, b in enumerate(blocks)]
    try:
        assert_same(family, BODY, tokenizer)  # the naive run, then the optimized one
        naive = passes[:]
        passes.clear()
        patchc.run(HEAD + BODY, model=m, tokenizer=tokenizer)
    finally:
        for h in handles:
            h.remove()
    every = set(range(len(blocks)))
    assert naive and all(p == every for p in naive[:len(naive) - len(passes)])
    # The optimized run: the run `third` (read at the embedding, L0 and L1) stops after
    # block 1; the passes that measure run every block (or start above block 0).
    fast = passes
    assert fast.count({0, 1}) == 1
    assert all(p in ({0, 1}, every) or min(p) > 0 for p in fast)
