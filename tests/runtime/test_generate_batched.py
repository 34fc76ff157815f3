"""Forwards whose metrics generate (generate/text/seqlogprob) run batched in the plan
interpreter (runtime/generate.run_generating): one prompt pass for every member, the rows
decoded together. The values equal the reference interpreter's (one forward, one greedy
decode per experiment) and a hand-written back-patch with plain torch hooks."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import patchc  # noqa: E402

EX = Path(__file__).resolve().parents[2] / "examples"
MODEL = EX / "models" / "ioi-gpt2"
SPEC = f"""model "{MODEL}"
data hops = "{EX / 'data' / 'hops.jsonl'}"
run q = hops.prompt
metric solved = generate(3) contains hops.answer
backpatch L$j.resid_post -> L$i.resid_post @ last in q
    where $j > $i
    measure solved, says = text(2), longer = text(4), s = seqlogprob(hops.answer)
    as hop
"""


@pytest.fixture(scope="module")
def loaded():
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    return model, tok


@pytest.fixture(scope="module")
def both(loaded):
    model, tok = loaded
    return (patchc.run(SPEC, model=model, tokenizer=tok),
            patchc.run(SPEC, model=model, tokenizer=tok, naive=True))


def test_batched_generation_equals_the_reference_interpreter(both) -> None:
    fast, naive = both
    for name in ("hop",):
        a, b = fast.tables[name], naive.tables[name]
        pd.testing.assert_frame_equal(a.drop(columns=["s"]), b.drop(columns=["s"]))
        assert (a["s"] - b["s"]).abs().max() < 1e-5
    ex_a = fast.per_example("hop")
    ex_b = naive.per_example("hop")
    assert list(ex_a["says"]) == list(ex_b["says"])
    assert list(ex_a["longer"]) == list(ex_b["longer"])


def test_the_six_backpatches_are_one_prompt_pass() -> None:
    prog = patchc.compile(SPEC)
    groups = {f.group for _, f in prog.optimized.of_type(patchc.compiler.ir.Forward)
              if f.experiment is not None}
    assert len(groups) == 1 and None not in groups


def _hand(model, tok, j: int, i: int, n_new: int) -> list[str]:
    """Back-patch by hand: layer j's output at the last token written into layer i's output,
    the prompt pass hooked, then greedy decoding from its cache without hooks."""
    rows = [line for line in (EX / "data" / "hops.jsonl").read_text().splitlines() if line]
    import json

    prompts = [json.loads(r)["prompt"] for r in rows]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    blocks = model.transformer.h
    got = {}
    h = blocks[j].register_forward_hook(lambda m, a, o: got.__setitem__("v", o[0][:, -1].clone()
                                        if isinstance(o, tuple) else o[:, -1].clone()))
    with torch.no_grad():
        model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos)
    h.remove()

    def patch(m, a, o):
        act = (o[0] if isinstance(o, tuple) else o).clone()
        act[:, -1] = got["v"]
        return (act, *o[1:]) if isinstance(o, tuple) else act
    h = blocks[i].register_forward_hook(patch)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos,
                    use_cache=True)
    h.remove()
    cache, ids = out.past_key_values, [out.logits[:, -1].argmax(-1, keepdim=True)]
    with torch.no_grad():
        for _ in range(n_new - 1):
            mask = torch.cat([mask, torch.ones_like(ids[-1])], 1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=ids[-1], attention_mask=mask, position_ids=pos,
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            ids.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return tok.batch_decode(torch.cat(ids, 1), skip_special_tokens=True)


def test_a_backpatch_equals_hand_hooks(loaded, both) -> None:
    model, tok = loaded
    fast, _ = both
    ex = fast.per_example("hop")
    for j, i in ((3, 0), (2, 1)):
        mine = ex[(ex["j"] == j) & (ex["i"] == i)].sort_values("example")
        assert list(mine["longer"]) == _hand(model, tok, j, i, 4)


@pytest.mark.parametrize("measure", [
    "solved, p3", "solved, l = loss",
    "t = text(2), s = seqlogprob(hops.answer), p = prob(hops.answer)"])
def test_other_metrics_beside_a_continuation(loaded, measure: str) -> None:
    """The prompt pass keeps only the logits the metrics read (and the last position's,
    where decoding starts), or every position's for `loss`."""
    model, tok = loaded
    spec = SPEC.split("backpatch")[0] + "metric p3 = prob(hops.answer) @ 3\n" + (
        "ablate L{1,2}.mlp.out @ last in q\n"
        f"    measure {measure}\n    as t\n")
    fast = patchc.run(spec, model=model, tokenizer=tok)
    naive = patchc.run(spec, model=model, tokenizer=tok, naive=True)
    a, b = fast.per_example("t"), naive.per_example("t")
    for col in a.columns:
        if not pd.api.types.is_numeric_dtype(a[col]):
            assert list(a[col]) == list(b[col])
        else:
            assert (a[col] - b[col]).abs().max() < 1e-5, col


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox", "mistral", "gemma"])
def test_narrowed_batched_continuations_equal_hand_greedy(any_family, name: str) -> None:
    """Back-patches measured by text(3) and seqlogprob, narrowed to the last position (the
    twin's keys and values before it; not narrowed with a sliding window) and batched,
    equal a greedy decode that recomputes the whole sequence each step (no cache), and the
    reference interpreter's values."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from ops_common import CLEAN, ROWS, T
    from test_ops_steer import _greedy

    from conftest import inline

    fam = any_family(name)
    body = (f"data d = {inline(ROWS)}\nrun q = d.clean\n"
            "backpatch L$j.resid_post -> L$i.resid_post @ last in q\n    where $j > $i\n"
            "    measure t = text(3), s = seqlogprob(d.answer)\n    as g\n")
    fast = fam.run(body, naive=False)
    naive = fam.run(body, naive=True)
    a, b = fast.per_example("g"), naive.per_example("g")
    assert list(a["t"]) == list(b["t"])
    assert (a["s"] - b["s"]).abs().max() < 1e-4
    src = fam.read(CLEAN, "L1.resid_post")["L1.resid_post"][:, -1]
    want = _greedy(fam, fam.ids(CLEAN), 3, {"L0.resid_post": src}, T - 1)
    got = a[(a["j"] == 1) & (a["i"] == 0)].sort_values("example")["t"]
    assert [t.strip() for t in got] == [t.strip() for t in want]
