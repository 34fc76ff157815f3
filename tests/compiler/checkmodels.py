"""Tiny model directories and data files for the checker's tests (config + tokenizer only:
check never reads weights).

- gpt2:  GPT-2, 4 layers, 4 heads, d_model 64, word-level tokenizer WITHOUT BOS
- llama: Llama, 2 layers, 8 query heads over 2 kv heads (GQA), tokenizer that ADDS BOS
- neox:  GPT-NeoX with parallel attention (no resid_mid)

`build()` is cached, so every test module of one pytest process shares one directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
WORDS = """When Then Mary John Alice Bob Tom Anna went to the store park , gave a drink book
to The Eiffel Tower is in Paris Rome city of Colosseum I love hate this What delight
disaster think movie great New York capital and had long day at . subject answer""".split()

IOI = [
    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupt": "When Alice and Bob went to the store , Bob gave a drink to",
     "answer": " Mary", "distractor": " John"},
    {"clean": "When Tom and Anna went to the park , Anna gave a book to",
     "corrupt": "When Alice and Bob went to the park , Bob gave a book to",
     "answer": " Tom", "distractor": " Anna"},
    {"clean": "When John and Mary went to the store , Mary gave a drink to",
     "corrupt": "When Bob and Alice went to the store , Alice gave a drink to",
     "answer": " John", "distractor": " Mary"},
]
# Same count, but row 1's corrupt prompt is one token longer.
IOI_RAGGED = [dict(r) for r in IOI]
IOI_RAGGED[1] = dict(IOI[1], corrupt="Then When Alice and Bob went to the park , Bob gave a "
                     "book to")
FACTS = [
    {"prompt": "The Eiffel Tower is in the city of", "answer": " Paris", "subject_pos": 3},
    {"prompt": "The Colosseum is in the city of", "answer": " Rome", "subject_pos": 1},
]


@dataclass(frozen=True)
class Models:
    root: Path
    gpt2: Path
    llama: Path
    neox: Path

    def spec_dir(self) -> str:
        return str(self.root)


def _tokenizer(with_bos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if with_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="[BOS] $A", pair="[BOS] $A [BOS] $B", special_tokens=[("[BOS]", 2)])
    return tok, len(vocab)


def _save_tokenizer(path: Path, with_bos: bool) -> int:
    from transformers import PreTrainedTokenizerFast

    tok, n = _tokenizer(with_bos)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                            bos_token="[BOS]", eos_token="[EOS]").save_pretrained(path)
    return n


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


@lru_cache(maxsize=1)
def build() -> Models:
    import transformers as T

    root = Path(tempfile.mkdtemp(prefix="patchc-check-"))
    m = Models(root, root / "gpt2", root / "llama", root / "neox")
    n = _save_tokenizer(m.gpt2, with_bos=False)
    ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    T.GPT2Config(n_layer=4, n_head=4, n_embd=64, n_positions=64, vocab_size=n, **ids) \
        .save_pretrained(m.gpt2)
    n = _save_tokenizer(m.llama, with_bos=True)
    T.LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=96, max_position_embeddings=128,
                  vocab_size=n, **ids).save_pretrained(m.llama)
    n = _save_tokenizer(m.neox, with_bos=False)
    T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                    intermediate_size=128, max_position_embeddings=64,
                    use_parallel_residual=True, vocab_size=n, **ids).save_pretrained(m.neox)
    data = root / "data"
    data.mkdir()
    _jsonl(data / "ioi.jsonl", IOI)
    _jsonl(data / "ioi_ragged.jsonl", IOI_RAGGED)
    _jsonl(data / "facts.jsonl", FACTS)
    _jsonl(data / "ioi2.jsonl", IOI[:2])
    _jsonl(data / "multi.jsonl", [{"prompt": "I love this", "answer": " New York"}])
    (data / "bad.jsonl").write_text('{"clean": "I love this"}\n{"clean": oops}\n', "utf-8")
    _save_vectors(root)
    return m


def _save_vectors(root: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"love": np.zeros(64, np.float32), "big": np.zeros(256, np.float32),
               "mat": np.zeros((2, 64), np.float32),
               "inf": np.full(64, np.inf, np.float32)}, str(root / "vecs.safetensors"))
    save_file({"W_dec": np.zeros((16, 64), np.float32)}, str(root / "sae.safetensors"))
