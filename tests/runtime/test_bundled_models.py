"""The bundled example models load under every transformers pyproject declares.

transformers 5 saves tokenizers under its own class name (`TokenizersBackend`), which 4.x and
early 5.x cannot load; the bundled files name `PreTrainedTokenizerFast`, which every release
knows (examples/make_tiny_model.py save_tokenizer writes them so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as tf

MODELS = sorted((Path(__file__).resolve().parents[2] / "examples/models").iterdir())


@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_bundled_tokenizer_names_a_portable_class(path):
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = tf.AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id is not None and tok(" Mary")["input_ids"]
