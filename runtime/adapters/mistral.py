"""Mistral: llama-like; its sliding window lives in the masks the model builds."""

from __future__ import annotations

from .llama import LlamaLikeAdapter


class MistralAdapter(LlamaLikeAdapter):
    family = "mistral"
