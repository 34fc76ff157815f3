"""Write examples/data/vectors.safetensors: saved directions for the `load(...)` and
`sae(...)` vector forms (docs/language.md §10), from the bundled `ioi-gpt2` model.

- `love`: the difference of means of the residual stream after layer 1 (`L1.resid_post`, the
  output of block 1) at the last token, over the positive minus the negative prompts of
  data/sentiment.jsonl: the same vector examples/steering.patch builds with `mean(...)`.
- `W_dec`: a decoder-shaped matrix [2, d_model] in SAELens' layout, so that `sae(FILE,
  feature=i)` can be shown offline. It is NOT a trained sparse autoencoder: row 0 is `love`
  scaled to unit norm and row 1 its opposite.

Deterministic: `python examples/make_vectors.py` (the model runs in float32 on the CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
MODEL = HERE / "models" / "ioi-gpt2"
OUT = HERE / "data" / "vectors.safetensors"


@torch.no_grad()
def last_token_state(model, tokenizer, prompts: list[str], layer: int) -> torch.Tensor:
    """The residual stream after block `layer` at each prompt's last token [n, d_model]."""
    rows = []
    for prompt in prompts:  # one at a time: no padding to account for
        ids = tokenizer(prompt, return_tensors="pt")
        hidden = model(**ids, output_hidden_states=True).hidden_states
        rows.append(hidden[layer + 1][0, -1])  # hidden_states[0] is the embedding
    return torch.stack(rows)


def main() -> None:
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = [json.loads(line) for line in (HERE / "data" / "sentiment.jsonl").open()]
    pos = last_token_state(model, tokenizer, [r["positive"] for r in rows], 1)
    neg = last_token_state(model, tokenizer, [r["negative"] for r in rows], 1)
    love = (pos.mean(0) - neg.mean(0)).contiguous()
    unit = love / love.norm()
    save_file({"love": love, "W_dec": torch.stack([unit, -unit]).contiguous()}, str(OUT),
              metadata={"made_by": "examples/make_vectors.py", "model": "ioi-gpt2"})
    print(f"wrote {OUT}: love [{love.numel()}], W_dec [2, {love.numel()}]")


if __name__ == "__main__":
    main()
