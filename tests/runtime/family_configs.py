"""Tiny random-weight configs of every family in the family table (2 layers, d_model 32).

One generic recipe: each size is set under whichever name the family's config class uses
(n_embd / hidden_size / d_model, ...), plus a few per-family settings (sliding windows, soft-caps,
QK LayerNorm, multi-query) that make the features under test actually run. Mixture-of-experts
models run the eager experts function (what patchc's explicit expert loop reproduces bit for bit).
"""

from __future__ import annotations

import torch
import transformers as tf
from transformers import AutoConfig

from patchc.compiler.families import FAMILIES, lookup

VOCAB = 64
D, HEADS, KV, D_HEAD, LAYERS = 32, 4, 2, 8, 2
SIZES = dict(
    num_hidden_layers=LAYERS, n_layer=LAYERS, n_layers=LAYERS, num_layers=LAYERS,
    hidden_size=D, n_embd=D, d_model=D, num_attention_heads=HEADS, n_head=HEADS, n_heads=HEADS,
    num_key_value_heads=KV, num_kv_heads=KV, head_dim=D_HEAD, intermediate_size=48, ffn_dim=48,
    ffn_hidden_size=48, n_inner=48, vocab_size=VOCAB, max_position_embeddings=64,
    n_positions=64, max_seq_len=64, num_local_experts=4, num_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=16, shared_expert_intermediate_size=24, pad_token_id=0,
    bos_token_id=2, eos_token_id=3, initializer_range=0.1, sliding_window=4,
)  # fmt: skip
EXTRA: dict[str, dict] = {
    "gemma2": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                   query_pre_attn_scalar=8),
    "gemma3_text": dict(final_logit_softcapping=3.0, query_pre_attn_scalar=8,
                        layer_types=["sliding_attention", "full_attention"]),
    "cohere_compass_text": dict(logit_scale=0.5,
                                layer_types=["sliding_attention", "full_attention"],
                                rope_parameters={"sliding_attention": dict(
                                    rope_type="default", rope_theta=10000.0),
                                    "full_attention": None}),
    "cohere2": dict(layer_types=["sliding_attention", "full_attention"]),
    "olmo3": dict(layer_types=["sliding_attention", "full_attention"]),
    "gpt_neox": dict(rotary_pct=0.5, use_parallel_residual=True),
    "stablelm": dict(use_parallel_residual=True, qk_layernorm=True, partial_rotary_factor=0.5),
    "persimmon": dict(num_key_value_heads=HEADS, qk_layernorm=True),
    "phi": dict(partial_rotary_factor=0.5, qk_layernorm=False),
    "phi3": dict(partial_rotary_factor=0.5),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=KV, alibi=False),
    "gpt_bigcode": dict(multi_query=True),
    "gptj": dict(rotary_dim=4),
    "opt": dict(word_embed_proj_dim=D, do_layer_norm_before=True),
    "granite": dict(residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0,
                    attention_multiplier=0.2),
    "granitemoe": dict(residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0),
    "cohere": dict(logit_scale=0.5),
    "qwen2_moe": dict(decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True),
    "olmoe": dict(norm_topk_prob=False),
    "mpt": dict(expansion_ratio=2),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=4),
    "nanochat": dict(final_logit_softcapping=3.0),
    "granite_swa": dict(residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0,
                        attention_multiplier=0.2,
                        layer_types=["sliding_attention", "full_attention"]),
    "aria_text": dict(moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1),
    "ernie4_5_moe": dict(moe_num_experts=4, moe_k=2, moe_num_shared_experts=1,
                         moe_layer_start_index=0, moe_layer_end_index=-1, moe_layer_interval=1),
    "flint": dict(layer_types=["sliding_attention", "full_attention"], mlp_only_layers=[]),
    "hy_v3": dict(mlp_layer_types=["sparse", "sparse"], num_shared_experts=1,
                  router_scaling_factor=2.5),
    "hunyuan_v1_moe": dict(num_experts=4, moe_topk=2),
    "hyperclovax": dict(residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0,
                        attention_multiplier=0.2, use_post_norm=True),
}
# Other layouts of one family: name -> (model_type, settings over EXTRA's).
VARIANTS: dict[str, tuple[str, dict]] = {
    "falcon-mq": ("falcon", dict(new_decoder_architecture=False, multi_query=True)),
    "falcon-alibi-seq": ("falcon", dict(new_decoder_architecture=False, multi_query=False,
                                        alibi=True, parallel_attn=False, num_kv_heads=HEADS)),
    "gpt_neox-seq": ("gpt_neox", dict(use_parallel_residual=False)),
    "stablelm-seq": ("stablelm", dict(use_parallel_residual=False, qk_layernorm=False)),
    "gpt_bigcode-mha": ("gpt_bigcode", dict(multi_query=False)),
}
# Families the installed transformers supports (compiler/families.py SINCE: some need a newer
# release); the refusal itself is tested in tests/compiler/test_families_table.py.
FAMILY_NAMES = [n for n in sorted(FAMILIES) + sorted(VARIANTS)
                if lookup(VARIANTS.get(n, (n,))[0]) is not None]


def config(name: str) -> tf.PretrainedConfig:
    family, variant = VARIANTS.get(name, (name, {}))
    extra = {**EXTRA.get(family, {}), **variant}
    cls = type(AutoConfig.for_model(family))
    default = cls()
    kwargs = {}
    for key, value in {**SIZES, **extra}.items():
        attr = getattr(type(default), key, None)
        if isinstance(attr, property) and attr.fset is None:
            continue
        # pad_token_id always: some releases' models read it although their config class
        # does not define it (5.0 StableLm, Phi, Exaone4)
        if hasattr(default, key) or key in extra or key == "pad_token_id":
            kwargs[key] = value
    cfg = cls(**kwargs)
    if FAMILIES[family].moe:
        cfg._experts_implementation = "eager"
    return cfg


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config(family)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights and biases: not trivially 1 and 0
                p.add_(torch.randn_like(p) * 0.2)
    return model
