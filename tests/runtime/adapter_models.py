"""Tiny random models of every adapter family, and helpers to run them with hooks.

Built from transformers config classes (no network). 1-D parameters (norm weights, biases) are
perturbed so that LayerNorm/RMSNorm weights and biases are not trivial.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import contextlib  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

from patchc.runtime.adapters import (  # noqa: E402
    EXPERT,
    HEADED,
    KINDS,
    UNLAYERED,
    Adapter,
    adapter_for,
)

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100)
GQA = dict(SMALL, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
CONFIGS: dict[str, Callable[[], tf.PretrainedConfig]] = {
    "gpt2": lambda: tf.GPT2Config(
        n_layer=3, n_embd=32, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        **SMALL, intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5,
        use_parallel_residual=True, attention_bias=True,
    ),
    "gpt_neox_seq": lambda: tf.GPTNeoXConfig(
        **SMALL, intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
        use_parallel_residual=False,
    ),
    "llama": lambda: tf.LlamaConfig(**GQA),
    "qwen2": lambda: tf.Qwen2Config(**GQA),
    "mistral": lambda: tf.MistralConfig(**GQA, sliding_window=4),
    "gemma": lambda: tf.GemmaConfig(**{**GQA, "num_key_value_heads": 1}, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(
        **GQA, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    ),
    "phi3": lambda: tf.Phi3Config(
        **GQA, pad_token_id=0, bos_token_id=1, eos_token_id=2, partial_rotary_factor=0.5
    ),
    "opt": lambda: tf.OPTConfig(
        **SMALL, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1,
        bos_token_id=2, eos_token_id=2,
    ),
}  # fmt: skip
FAMILIES = list(CONFIGS)
BATCH, SEQ = 2, 7


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights and biases: make them non-trivial
                p.add_(torch.randn_like(p) * 0.2)
    return model


def plain(ad: Adapter, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ad.model(ids).logits


def eager_logits(ad: Adapter, ids: torch.Tensor) -> torch.Tensor:
    """The logits of an eager copy of the model: what an identity pattern write must equal bit
    for bit. Where the model's own attention leaves a soft-cap out (transformers 4.x's sdpa,
    for Gemma-2), the copy leaves it out too, as patchc's exposed pattern does."""
    import copy

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from patchc.runtime.adapters.attention import _ignores_softcap

    eager = copy.deepcopy(ad.model)
    own = ALL_ATTENTION_FUNCTIONS.get(ad.model.config._attn_implementation)
    if getattr(eager.config, "attn_logit_softcapping", None) and own is not None and \
            _ignores_softcap(own):
        eager.config.attn_logit_softcapping = None
        for module in eager.modules():
            if getattr(module, "attn_logit_softcapping", None) is not None:
                module.attn_logit_softcapping = None
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(ids).logits


def run(ad: Adapter, ids: torch.Tensor, reads=(), writes=()) -> tuple[torch.Tensor, dict]:
    """One forward with write hooks (entered first) and read hooks; returns logits and reads."""
    got: dict = {}

    def reader(key: tuple) -> Callable:
        def fn(act: torch.Tensor) -> None:
            got[key] = act.detach().clone()

        return fn

    with contextlib.ExitStack() as stack:
        for kind, layer, head, fn in writes:
            stack.enter_context(ad.hook(kind, layer, head, fn))
        for key in reads:
            stack.enter_context(ad.hook(*key, reader(key)))
        with torch.no_grad():
            logits = ad.model(ids).logits
    return logits, got


def all_sites(ad: Adapter, kinds=KINDS) -> list[tuple[str, int | None, int | None]]:
    sites = []
    for kind in sorted(kinds):
        if (kind == "resid_mid" and ad.parallel_attn) or ad.missing(kind):
            continue
        if kind in UNLAYERED:
            sites.append((kind, None, None))
        else:
            for layer in range(ad.n_layers):
                heads = range(ad.n_heads) if kind in HEADED else [None]
                heads = range(ad.n_experts) if kind in EXPERT else heads
                sites += [(kind, layer, h) for h in heads]
    return sites


def no_hooks_left(model: torch.nn.Module) -> bool:
    for mod in model.modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            return False
        if any(k.startswith("_patchc") for k in mod.__dict__):
            return False
    return True


PATTERN_KINDS = {"pattern", "attn.pattern"}


@pytest.fixture(scope="module", params=FAMILIES)
def ad(request: pytest.FixtureRequest) -> Adapter:
    """One adapter per family (module scope: each test module builds its own models)."""
    return adapter_for(build(request.param))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 100, (BATCH, SEQ), generator=g)
