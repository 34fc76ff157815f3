"""runtime/prefix.py: the narrowed pass's key/value prefix and the last block's live MLP,
against plain torch on a tiny GPT-2."""

from __future__ import annotations

import torch
import transformers as tf

from patchc.runtime.compat import layer_kv, output_cache, with_cache
from patchc.runtime.prefix import live_positions, prefix_cache


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32)
    return tf.GPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def test_prefix_cache_repeats_without_copying_and_continues_exactly() -> None:
    m = _model()
    ids = torch.randint(0, 50, (2, 7))
    twin = output_cache(m(ids, use_cache=True))
    cache = prefix_cache(twin, 5, 3, 0)
    for (k, _), (tk, _) in zip(layer_kv(cache), layer_kv(twin)):
        assert k.shape[-2] == 5 and k.data_ptr() == tk.data_ptr()  # a view, no copy
    # The last two positions of 3 member blocks fed on the prefix: each block equals the
    # twin's own full forward at those positions.
    rest = ids[:, 5:].repeat(3, 1)
    pos = torch.arange(5, 7).expand(6, -1)
    out = m(**with_cache(m, dict(input_ids=rest, position_ids=pos, use_cache=True), cache)).logits
    full = m(ids).logits[:, 5:]
    torch.testing.assert_close(out, full.repeat(3, 1, 1), rtol=1e-5, atol=1e-5)
    k, _ = layer_kv(cache)[1]
    assert k.shape == (6, 4, 7, 8)


@torch.no_grad()
def test_live_positions_runs_the_mlp_at_those_positions_only() -> None:
    m = _model()
    mlp = m.transformer.h[1].mlp
    x = torch.randn(2, 6, 32)
    index = torch.tensor([[5], [3]])
    seen: list[int] = []
    h = mlp.c_fc.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
    try:
        with live_positions(mlp, index):
            out = mlp(x)
    finally:
        h.remove()
    assert seen == [1] and out.shape == x.shape
    want = mlp(x)
    torch.testing.assert_close(out[0, 5], want[0, 5])
    torch.testing.assert_close(out[1, 3], want[1, 3])
    assert out[0, :5].abs().sum() == 0 and out[1, 4:].abs().sum() == 0
