"""What a HuggingFace module path names, as a patchc site: hints for users of nnsight and
of plain hooks, who address a model by its modules (`transformer.h.0.attn`,
`model.layers.3.mlp.down_proj`), and of TransformerLens hooks that have no site alias
(`blocks.0.attn.hook_result`).

patchc names an activation by what it holds, the same way in every family; a module's
output is one of those sites. This is only used to hint, never to resolve: a spec names
sites, so that it means the same thing on every architecture.
"""

from __future__ import annotations

import re

# The module (after its layer's index) -> the site that is its output.
_IN_LAYER = (
    (r"(attn|self_attn|attention|self_attention)\.(q_proj|query)", "attn.q"),
    (r"(attn|self_attn|attention|self_attention)\.(k_proj|key)", "attn.k"),
    (r"(attn|self_attn|attention|self_attention)\.(v_proj|value)", "attn.v"),
    (r"(attn|self_attn|attention|self_attention)(\.(o_proj|c_proj|out_proj|dense|o))?",
     "attn.out"),
    (r"(mlp|feed_forward|ffn)\.(c_fc|fc1|fc_in|dense_h_to_4h)", "mlp.pre"),
    (r"(mlp|feed_forward|ffn)(\.(c_proj|down_proj|fc2|fc_out|dense_4h_to_h|w2))?", "mlp.out"),
    (r"attn\.hook_result", "H*.out"),  # TransformerLens: every head's output
)
_LAYER = re.compile(r"(?:.*\.)?(?:h|layers|layer|blocks)\.(\d+)(?:\.(.+))?")
_OUTSIDE = (
    (r"(?:.*\.)?(wte|embed_tokens|embed_in|word_embeddings)", "embed"),
    (r"(?:.*\.)?(lm_head|embed_out)", "logits"),
)


def site_of_module(path: str) -> str | None:
    """The site a module path's output is (`transformer.h.0.attn` -> `L0.attn.out`, a whole
    block -> its `resid_post`), or None when the path names no module this knows."""
    m = _LAYER.fullmatch(path)
    if m is not None:
        layer, rest = m[1], m[2]
        if rest is None:
            return f"L{layer}.resid_post"
        for pattern, site in _IN_LAYER:
            if re.fullmatch(pattern, rest):
                return f"L{layer}.{site}"
        return None
    for pattern, site in _OUTSIDE:
        if re.fullmatch(pattern, path):
            return site
    return None
