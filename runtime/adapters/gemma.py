"""Gemma: llama-like, but the embedding is scaled by sqrt(d_model) (inside the embedding module,
so `embed`, the input of block 0, includes it) and RMSNorm multiplies by (1 + weight)."""

from __future__ import annotations

from .llama import LlamaLikeAdapter


class GemmaAdapter(LlamaLikeAdapter):
    family = "gemma"
    rms_offset = 1.0
