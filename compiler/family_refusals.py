"""Why model types outside the family table are refused: `UNSUPPORTED`, model_type -> reason.

compiler/families.py re-exports it; `why_unsupported` there turns a reason into the E210/E401
message that check and the runtime share.
"""

from __future__ import annotations

# Why common model types that are not decoder-only transformers are refused.
_ENCODERS = ("bert", "roberta", "camembert", "xlm-roberta", "electra", "data2vec-text",
             "big_bird", "rembert", "roformer", "ernie", "megatron-bert", "modernbert",
             "deberta", "deberta-v2", "distilbert", "albert", "xlm-roberta-xl", "xmod",
             "bert-generation", "roberta-prelayernorm", "roc_bert", "xlm")
_ENC_DEC = ("t5", "bart", "mbart", "marian", "pegasus", "blenderbot", "whisper", "mvp",
            "plbart", "prophetnet", "mt5", "umt5", "led", "bigbird_pegasus",
            "blenderbot-small", "trocr", "musicgen", "musicgen_melody")
_STATE_SPACE = ("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma")
_HYBRID = ("jamba", "zamba", "zamba2", "bamba", "falcon_h1", "nemotron_h", "granitemoehybrid",
           "lfm2", "qwen3_next", "minimax", "qwen3_5_text", "qwen3_5_moe_text",
           "qwen4_exp_text", "lara_mini", "kimi_linear", "olmo_hybrid", "bailing_hybrid",
           "lfm2_moe", "lfm3")
_MULTIMODAL = ("emu3", "fuyu", "git", "got_ocr2", "mllama", "phi4_multimodal", "gemma3n",
               "gemma4", "gemma4_unified", "gemma4_assistant", "gemma4_unified_assistant",
               "qwen3_5", "qwen3_5_moe", "qwen4_exp", "dots3_note", "moshi",
               "moss_transcribe_diarize")
_MLA = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4", "youtu", "minicpm3",
        "glm4_moe_lite", "glm_moe_dsa", "axk1", "axk2", "hy_v4", "sarvam_mla", "longcat_flash")
# Mixtures of experts whose router patchc cannot re-route from written logits.
_GROUPED_SIGMOID = ("glm4_moe", "dots1", "exaone_moe", "solar_open", "mimo_v2_flash", "beam",
                    "sarvam_moe")
_POST_NORM_MOE = ("flex_olmo", "kolibri1", "afmoe")
_RESIDUAL_MULTIPLIER_MOE = ("granitemoe", "granitemoeshared", "granitemoe_swa")
UNSUPPORTED: dict[str, str] = {
    **{t: "an encoder (bidirectional attention), not a decoder-only causal LM" for t in _ENCODERS},
    **{t: "an encoder-decoder model, not a decoder-only causal LM" for t in _ENC_DEC},
    **{t: "a state-space/recurrent model: it has no attention heads, q/k/v or pattern sites"
       for t in _STATE_SPACE},
    **{t: "a hybrid of attention and state-space/linear-attention layers, whose layers do not "
          "all have attention heads" for t in _HYBRID},
    **{t: "a multimodal model, not a text-only decoder; load its text model (a *_text "
          "model_type) where one exists" for t in _MULTIMODAL},
    **{t: "multi-head latent attention (compressed q/k/v) has no per-head q/k/v sites"
       for t in _MLA},
    **{t: "its router chooses experts from group-limited sigmoid scores with a correction bias "
          "and scales their weights (DeepSeek-V3 routing), which patchc's router site cannot "
          "re-route" for t in _GROUPED_SIGMOID},
    **{t: "its MLP output is normalized after the experts are summed, so an expert's output is "
          "not a part of what the block adds to the residual stream" for t in _POST_NORM_MOE},
    **{t: "its residual multiplier scales the experts' sum after the experts run, so "
          "expert contributions are not what the block adds" for t in _RESIDUAL_MULTIPLIER_MOE},
    "gemma3": "a multimodal model: its text model (model_type gemma3_text) is supported",
    "openai-gpt": "post-LayerNorm blocks (GPT-1): each block normalizes the residual stream "
                  "after its adds, so the stream does not decompose into sub-block outputs",
    "doge": "its blocks scale the residual by a learned per-channel vector before each add, "
            "so the residual stream does not decompose into sub-block outputs",
    "xlnet": "a permutation language model with two attention streams, not a decoder-only "
             "causal LM",
    "reformer": "LSH/chunked attention in reversible blocks: no per-head pattern over the whole "
                "sequence and no single residual stream",
    "blt": "a byte-level model whose local and global transformers work on different sequences "
           "(bytes and patches), not one decoder stack",
    "hrm_text": "a hierarchical recurrent model: two decoder stacks applied in loops, not one "
                "pass through one stack of blocks",
    "jetmoe": "its attention is a mixture of experts too (expert query/output projections "
              "chosen per token), which patchc's per-head q/k/v sites do not map",
    "gemma3n_text": "its blocks keep several residual streams (AltUp) and add per-layer inputs, "
                    "so there is no single residual stream",
    "inkling_text": "short convolutions over positions follow its k/v projections, so k/v are "
                    "not projections of one position's residual",
    "inkling2_text": "short convolutions over positions follow its k/v projections, so k/v are "
                     "not projections of one position's residual",
    "inkling2_loop_text": "short convolutions over positions follow its k/v projections, so k/v "
                          "are not projections of one position's residual",
    "llama4_text": "its experts read their input already multiplied by the routing score "
                   "(rather than weighting their outputs), so an expert's output is not its "
                   "contribution; its layers also interleave chunked and position-free global "
                   "attention",
    "gpt_neox_japanese": "its attention returns its output bias apart, and the block adds it "
                         "with the residual, so the attention module's output is not what the "
                         "block adds; its attention also computes scores itself",
    "cpmant": "its attention adds a learned segment-relative position bias inside its own "
              "attention code, and its blocks keep their norms in sub-modules patchc does not "
              "map",
    "llama4": "a multimodal mixture of experts whose layers interleave chunked and global "
              "attention without position encoding; not in the family table",
    **{t: "its blocks multiply the whole residual stream by a learned per-layer scalar "
          "(layer_scalar) after their adds, so the stream does not decompose into sub-block "
          "outputs; some configurations also add per-layer input embeddings to the stream "
          "after the MLP, and let later layers reuse an earlier layer's keys and values"
       for t in ("gemma4_text", "gemma4_unified_text")},
    "dbrx": "its experts keep their weights in one flat GLU module (w1/v1/w2) and its router "
            "returns bare logits that the MLP routes itself, which patchc's expert and router "
            "sites do not map; its attention also clamps the fused qkv output",
    "laguna": "its attention output also depends on the block's input through a softplus gate "
              "on each head (g_proj), a path no q/k/v site covers; its layers may also differ "
              "in head count (num_attention_heads_per_layer)",
    "zaya": "its residual adds go through learned per-channel scale-and-bias modules "
            "(ZayaResidualScaling) that rescale the residual stream too, so the stream does not "
            "decompose into sub-block outputs; its router also reads state carried over from "
            "the previous layer's router",
    "dory": "each block replaces the residual stream by its normalized value and moves it "
            "toward each sub-block's output (h + rate * (out - h)), so the stream does not "
            "decompose into sub-block outputs",
    "modernbert-decoder": "its embedding output is normalized before the first block (which "
                          "has no pre-attention norm), and its unembedding runs a dense layer, "
                          "an activation and a norm (a prediction head) after the final norm, "
                          "layouts patchc's embed, ln1.scale and unembedding do not map",
    "minimax_m3_vl_text": "sparse attention: an indexer chooses which blocks of earlier "
                          "positions each query attends to, so a head's pattern is not a "
                          "softmax over all earlier positions",
    "dots3_note_text": "multi-head latent attention (compressed q/k/v) with a sparse-attention "
                       "indexer has no per-head q/k/v sites",
    "cohere2_moe": "its shared experts are averaged with the routed ones by default "
                   "((experts + shared) / 2), so an expert's output is not what the block adds, "
                   "and its sigmoid router (sigmoid of the top-k logits) has no re-routing rule "
                   "in patchc",
    "codegen": "its fused qkv_proj interleaves heads in model-parallel groups",
    "phimoe": "its sparsemixer router (jittered top-2 selection) cannot be re-routed from logits",
}
