"""Qwen2: llama-like, with biases on the q/k/v projections (handled by the projections' own
outputs) and optional sliding-window layers (in the masks the model builds)."""

from __future__ import annotations

from .llama import LlamaLikeAdapter


class Qwen2Adapter(LlamaLikeAdapter):
    family = "qwen2"
