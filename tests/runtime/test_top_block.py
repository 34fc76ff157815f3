"""A pass that computes no logits stops after the last block it reads or writes
(runtime/pass_plan.top_block, runtime/prefix.skip_above): a swap's source run read at L0, a
mean ablation's run read at L1, a run whose embedding is read. On tiny GPT-2, Llama and NeoX
models every value equals the naive interpreter's, which runs every block of every pass."""

from __future__ import annotations

import pytest

import patchc
from test_differential import FAMILIES, HEAD, assert_same, model
from test_differential import tokenizer as _tokenizer

tokenizer = _tokenizer  # the module-scoped fixture, shared with test_differential.py

BODY = """
swap L0.attn.out from clean into corrupt measure ld as low
ablate L1.mlp.out in clean with mean(corrupt) measure ld as mid
swap embed from corrupt into clean measure ld as emb
swap L1.H0.z from clean into corrupt measure ld as head
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
    # The optimized run: the plain clean run (read at L0 and L1: the swaps' sources and the
    # vector v of HEAD) and the plain corrupt run (L1 mlp.out, embed, v) stop after block 1;
    # the passes that measure run every block (or start above block 0: share_prefix).
    fast = passes
    assert fast.count({0, 1}) == 2
    assert all(p in ({0, 1}, every) or min(p) > 0 for p in fast)
