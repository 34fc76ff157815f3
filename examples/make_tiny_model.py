"""Build examples/models/tiny-gpt2: a small GPT-2 (GPT-2-small's 12 layers x 12 heads, width 48)
with RANDOM weights and a word-level
tokenizer over the words of examples/data/. It makes every example spec checkable and
runnable offline; it has learned nothing (the trained example models come from
examples/train.py). Deterministic: `python examples/make_tiny_model.py`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
EXTRA_WORDS = "I think this movie is great good bad very".split()


def corpus_words() -> list[str]:
    words: set[str] = set(EXTRA_WORDS)
    for path in sorted((HERE / "data").glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            for value in json.loads(line).values():
                if isinstance(value, str):
                    words.update(re.findall(r"\w+|[^\w\s]", value))
    return sorted(words)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save it under the class name every supported transformers knows (5.x would write
    its own `TokenizersBackend`, which 4.x cannot load)."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text("utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    path.write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def main(out: Path = HERE / "models" / "tiny-gpt2") -> None:
    tokenizer = build_tokenizer(corpus_words())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=48, n_layer=12,
                        n_head=12, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    print(f"wrote {out} (vocab {len(tokenizer)}, {sum(p.numel() for p in model.parameters())} "
          "parameters)")


if __name__ == "__main__":
    main()
