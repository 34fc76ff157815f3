"""A metric's answer column read on a run of other prompts (an inline list, or another
table's column) pairs row i of the column with example i of the run; check makes sure the
counts match (E348)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import patchc  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "examples" / "models" / "ioi-gpt2"
PROMPTS = ["when Mary and John went to the store, Mary gave a drink to",
           "when Anna and Bob went to the park, Anna gave a ball to"]
ANSWERS = [" Mary", " Anna"]


@pytest.mark.parametrize("naive", [False, True])
def test_answer_column_on_an_inline_run(naive: bool):
    rows = ", ".join(f'{{"prompt": "x", "answer": "{a}"}}' for a in ANSWERS)
    spec = (f'model "{MODEL}"\ndata facts = [{rows}]\n'
            f'run other = [{", ".join(repr(p).replace(chr(39), chr(34)) for p in PROMPTS)}]\n'
            "metric lp = logprob(facts.answer)\nmeasure lp in other as t\n")
    got = patchc.run(spec, naive=naive)["t"]["lp"].item()
    model = tf.AutoModelForCausalLM.from_pretrained(MODEL).eval()
    tok = tf.AutoTokenizer.from_pretrained(MODEL)
    with torch.no_grad():
        want = sum(model(tok(p, return_tensors="pt").input_ids).logits[0, -1]
                   .log_softmax(-1)[tok(a).input_ids[0]].item()
                   for p, a in zip(PROMPTS, ANSWERS)) / 2
    assert got == pytest.approx(want, abs=1e-5)
