"""Operations that add to, rescale or move an activation, with their numbers recomputed by hand.

Each test runs a spec through `patchc.run` on a tiny random model and recomputes what the
table must hold with plain torch hooks on the HF modules (conftest.Fam.forward), never through
runtime/adapters or runtime/writes: steer by a vector sweep, scale, backpatch (a later layer's
value written into an earlier one), and the `generate(n) contains` metric under a write.
Shared rows and helpers: ops_common.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam, at, inline
from ops_common import CLEAN, CORRUPT, HEAD, ROWS, T, close, hand_ld, ld_of, per_example, row

# ---- steer, scale ---------------------------------------------------------------------------


def test_steer_by_vector_sweep(gpt2: Fam) -> None:
    pos = ["I love this movie", "what a great delight"]
    neg = ["I hate this movie", "what a awful disaster"]
    neutral = ["I think this movie is", "the movie was"]
    res = gpt2.run(f"""
run pos = {inline(pos)}
run neg = {inline(neg)}
run neutral = {inline(neutral)}
metric lp = logprob("great")
vector love = mean(pos.L1.resid_post @ last) - mean(neg.L1.resid_post @ last)
steer L1.resid_post in neutral by {{1, 4}} * love
    measure lp normalized, logprob("great")
    as st
steer L0.mlp.out @ last in neutral by 2 * love measure logit("great") as one
""")
    site = "L1.resid_post"
    v = gpt2.read(pos, site)[site][:, -1].mean(0) - gpt2.read(neg, site)[site][:, -1].mean(0)
    g = gpt2.tid("great")
    base = [torch.log_softmax(gpt2.forward(gpt2.ids([t]))[0][0, -1], -1)[g] for t in neutral]
    df = res.per_example("st")
    assert list(res["st"]["scale"]) == [1, 4]
    for scale in (1, 4):
        hand = []
        for t in neutral:  # prompts of different lengths: one at a time, scale * v everywhere
            logits = gpt2.forward(gpt2.ids([t]), {site: lambda x, s=scale: x + s * v})[0]
            hand.append(torch.log_softmax(logits[0, -1], -1)[g])
        got = df[df["scale"] == scale].sort_values("example")['logprob("great")']
        close(torch.tensor(got.to_numpy()), torch.stack(hand))
        r = row(res, "st", scale=scale)
        close(r['logprob("great")'], torch.stack(hand).mean())
        # no source run: normalized is m / m_target, on the means
        close(r["lp"], torch.stack(hand).mean() / torch.stack(base).mean())
    for i, t in enumerate(neutral):
        logits = gpt2.forward(gpt2.ids([t]), {"L0.mlp.out": lambda x: torch.cat(
            [x[:, :-1], x[:, -1:] + 2 * v], 1)})[0]
        close(res.per_example("one")['logit("great")'][i], logits[0, -1, g])


def test_scale(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "scale L1.mlp.out, L0.H3.z @ 2 in corrupt by {0, 0.5} measure ld "
                   "as sc\nablate L1.mlp.out, L0.H3.z @ 2 in corrupt measure ld as z\n")
    for item, site, pos in [("L1.mlp.out", "L1.mlp.out", None), ("L0.H3.z @ 2", "L0.H3.z", 2)]:
        def scaled(k, pos=pos):
            def fn(x):
                out = x.clone()
                if pos is None:
                    out = out * k
                else:
                    out[:, pos] = out[:, pos] * k
                return out
            return fn
        zero = per_example(res, "z", "ld", site=item)
        assert torch.equal(per_example(res, "sc", "ld", site=item, scale=0), zero)
        close(zero, hand_ld(gpt2, CORRUPT, {site: scaled(0.0)}))
        close(per_example(res, "sc", "ld", site=item, scale=0.5),
              hand_ld(gpt2, CORRUPT, {site: scaled(0.5)}))

# ---- backpatch ------------------------------------------------------------------------------


@pytest.mark.parametrize("fam_name", ["gpt2", "llama"])
def test_backpatch_pairs(fam_name: str, get_family) -> None:
    fam = get_family(fam_name)
    res = fam.run(HEAD + "run q = d.clean\nbackpatch L$j.resid_post -> L$i.resid_post @ last "
                  "in q\n    where $j > $i\n    measure logit(d.answer), ld normalized\n"
                  "    as bp\n")
    n = 3
    assert len(res["bp"]) == n * (n - 1) // 2
    assert sorted(zip(res["bp"]["j"], res["bp"]["i"])) == [(1, 0), (2, 0), (2, 1)]
    posts = fam.read(CLEAN, *[f"L{k}.resid_post" for k in range(n)])
    ans = torch.tensor([fam.tid(r["answer"]) for r in ROWS])
    base = hand_ld(fam, CLEAN)
    for j, i in [(1, 0), (2, 0), (2, 1)]:
        logits = fam.forward(fam.ids(CLEAN), {
            f"L{i}.resid_post": at(-1, posts[f"L{j}.resid_post"][:, -1])})[0]
        close(per_example(res, "bp", "logit(d.answer)", j=j, i=i),
              logits[:, -1][torch.arange(len(ROWS)), ans])
        # without `from`, normalized is m / m_q
        close(row(res, "bp", j=j, i=i)["ld"], ld_of(fam, logits).mean() / base.mean(),
              atol=1e-4)


def _greedy(fam: Fam, ids: torch.Tensor, n_new: int, writes: dict, pos: int) -> list[str]:
    """Greedy decoding without a cache: the whole sequence is recomputed each step, with
    `writes` (site -> value) put at prompt position `pos` only (what a write on the prompt
    pass means: the generated tokens are not written)."""
    seq = ids
    for _ in range(n_new):
        logits = fam.forward(seq, {s: at(pos, v) for s, v in writes.items()})[0]
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return [fam.tok.decode(r[ids.shape[1]:], skip_special_tokens=True) for r in seq]


def test_generate_contains(get_family) -> None:
    fam = get_family("qwen2")  # a tiny model whose greedy output the write below changes
    n_new = 4
    src = fam.read(CLEAN, "L1.resid_post")["L1.resid_post"][:, -1]
    texts = _greedy(fam, fam.ids(CLEAN), n_new, {"L0.resid_post": src}, T - 1)
    plain = _greedy(fam, fam.ids(CLEAN), n_new, {}, T - 1)
    # Per row an answer that only the patched generation contains if there is one, else (odd
    # rows) a word neither contains or (even rows) one the patched generation contains.
    answers = []
    for i, (t, p) in enumerate(zip(texts, plain)):
        only = [w for w in t.split() if w not in p]
        answers.append((only or (["Anna"] if i % 2 else t.split()) or ["Anna"])[0])
    rows = [dict(r, answer=a) for r, a in zip(ROWS, answers)]
    col = f"generate({n_new}) contains d.answer"
    res = fam.run(f"data d = {inline(rows)}\nrun q = d.clean\n"
                  "backpatch L1.resid_post -> L0.resid_post @ last in q\n"
                  f"    measure generate({n_new}) contains d.answer\n    as g\n"
                  f"scale L0.mlp.out in q by 1 measure {col} as p\n")
    want = [float(a in t) for a, t in zip(answers, texts)]
    want_plain = [float(a in p) for a, p in zip(answers, plain)]
    assert per_example(res, "g", col).tolist() == want
    assert per_example(res, "p", col).tolist() == want_plain
    assert want != want_plain, "the write changes what is generated"
    close(res["g"][col][0], sum(want) / len(want))
