"""runtime/compat.py: what an older transformers reads differently, put back.

A GPT-NeoX config.json written by transformers 5.x keeps the partial rotary factor in
`rope_parameters` only; releases before 5.9 read it from `rotary_pct` alone and fall back to
0.25, so the model would rotate other dimensions than it was trained with (the bundled
induction model among them). patchc's loader reads the config through compat.load_config.
"""

from __future__ import annotations

import json

import torch
import transformers as tf

from patchc.runtime.compat import load_config


def test_neox_partial_rotary_of_a_5x_config_is_kept(tmp_path) -> None:
    d_head = 8
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
        "hidden_size": 4 * d_head, "num_attention_heads": 4, "num_hidden_layers": 1,
        "intermediate_size": 16, "vocab_size": 32, "max_position_embeddings": 16,
        "rope_parameters": {"partial_rotary_factor": 1.0, "rope_theta": 10000.0,
                            "rope_type": "default"}}))
    model = tf.AutoModelForCausalLM.from_config(load_config(str(tmp_path)))
    # one inverse frequency per pair of rotated dimensions: all d_head of them
    assert model.gpt_neox.rotary_emb.inv_freq.numel() == d_head // 2


def test_rope_base_of_a_5x_config_is_kept(tmp_path) -> None:
    # a 5.x config keeps the rotary base in rope_parameters only; 4.x read rope_theta
    theta, d_head = 500000.0, 8
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2 * d_head, "num_attention_heads": 2, "num_key_value_heads": 1,
        "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 32,
        "max_position_embeddings": 16,
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"}}))
    model = tf.AutoModelForCausalLM.from_config(load_config(str(tmp_path)))
    inv_freq = model.model.rotary_emb.inv_freq
    expected = 1.0 / theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    assert torch.allclose(inv_freq, expected)
