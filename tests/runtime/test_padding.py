"""Left padding (docs/language.md §3): a run whose prompts differ in length must give every example
the numbers it gets alone. Each spec runs once over all rows (padded) and once per row (a
one-row inline data set: no padding), on GPT-2, Llama with grouped-query attention and NeoX
with a parallel residual; a few are also recomputed by hand on the unpadded prompt. With a
BOS-adding tokenizer, positions count the BOS token.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Fam, at, inline

from patchc.compiler.errors import PatchcError

ROWS = [  # clean/corrupt aligned per row; rows of 8, 3, 5 and 2 tokens
    {"clean": "when Mary and John went to the store", "corrupt":
     "when Anna and Bob went to the store", "answer": "Mary", "distractor": "John", "p": 3},
    {"clean": "the cat sat", "corrupt": "the dog sat", "answer": "mat", "distractor": "tree",
     "p": 1},
    {"clean": "Mary gave the ball to", "corrupt": "John gave the ball to", "answer": "John",
     "distractor": "Mary", "p": 0},
    {"clean": "a bird", "corrupt": "a fish", "answer": "bird", "distractor": "fish", "p": 1},
]
LENGTHS = [8, 3, 5, 2]
OPS = """
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
swap L1.H0.z from clean into corrupt measure ld, loss, kl(clean), rank(d.answer) as z
swap L1.resid_pre @ last from clean into corrupt measure ld as at_last
swap L0.mlp.out @ 1 from clean into corrupt measure ld as one
swap L0.resid_pre @ 0..1 from clean into corrupt measure ld as rng
swap L0.resid_pre @ d.p from clean into corrupt measure ld as col
swap all(L0.attn.out, L1.mlp.post[3]) from clean into corrupt measure prob(d.answer) as grp
scale L1.mlp.out in corrupt by 0.5 measure ld as sc
ablate L2.H1.z in corrupt measure ld as abl
backpatch L2.resid_post -> L0.resid_post @ last in clean measure ld as bp
attribute L*.mlp.out from clean into corrupt using atp measure ld as atp
"""
TABLES = {"z": ["ld", "loss", "kl(clean)", "rank(d.answer)"], "at_last": ["ld"], "one": ["ld"],
          "rng": ["ld"], "col": ["ld"], "grp": ["prob(d.answer)"], "sc": ["ld"],
          "abl": ["ld"], "bp": ["ld"], "atp": ["ld"]}


SWEEP_COLUMNS = ("site", "layer", "head", "pos", "neuron", "scale", "j", "i")


def values(res, table: str, col: str) -> torch.Tensor:
    """[rows of the table, examples] per-example values."""
    df = res.per_example(table)
    keys = [c for c in df.columns if c in SWEEP_COLUMNS]
    if keys:
        df = df.sort_values(keys + ["example"], kind="stable")
    n = int(df["example"].max()) + 1
    return torch.tensor(df[col].to_numpy(), dtype=torch.float64).view(-1, n)


@pytest.fixture(scope="module", params=["gpt2", "llama", "neox"])
def fam(request, get_family) -> Fam:
    return get_family(request.param)


@pytest.fixture(scope="module")
def batched(fam: Fam):
    return fam.run(f"data d = {inline(ROWS)}\n" + OPS)


@pytest.fixture(scope="module")
def alone(fam: Fam):
    return [fam.run(f"data d = {inline([r])}\n" + OPS) for r in ROWS]


def test_padded_rows_equal_unpadded(fam: Fam, batched, alone) -> None:
    assert [len(fam.tok(r["clean"])["input_ids"]) for r in ROWS] == LENGTHS
    for table, cols in TABLES.items():
        for col in cols:
            got = values(batched, table, col)
            for i, res in enumerate(alone):
                want = values(res, table, col)[:, 0]
                assert torch.allclose(got[:, i], want, atol=1e-5, rtol=1e-5), \
                    (fam.name, table, col, i, got[:, i], want)
        # the table's means are over the examples
        df = batched[table]
        for col in cols:
            assert torch.allclose(torch.tensor(df[col].to_numpy(), dtype=torch.float64),
                                  values(batched, table, col).mean(1), atol=1e-6)


def test_padded_rows_equal_hand(fam: Fam, batched) -> None:
    """The head swap and the backpatch, by hand on each prompt alone."""
    for i, r in enumerate(ROWS):
        clean, corrupt = fam.ids([r["clean"]]), fam.ids([r["corrupt"]])
        a, d = fam.tid(r["answer"]), fam.tid(r["distractor"])
        z = fam.forward(clean, reads=("L1.H0.z", "L2.resid_post"))[1]
        logits = fam.forward(corrupt, {"L1.H0.z": at(None, z["L1.H0.z"])})[0][0, -1]
        assert math.isclose(values(batched, "z", "ld")[0, i], logits[a] - logits[d],
                            abs_tol=1e-5)
        logits = fam.forward(clean, {"L0.resid_post": at(-1, z["L2.resid_post"][:, -1])}
                             )[0][0, -1]
        assert math.isclose(values(batched, "bp", "ld")[0, i], logits[a] - logits[d],
                            abs_tol=1e-5)


def test_each_over_unequal_lengths(fam: Fam) -> None:
    """`@ each` sweeps the longest prompt's positions; a shorter prompt has NaN where it has
    no token and is left out of that row's mean."""
    spec = ("run clean = d.clean\nrun corrupt = d.corrupt\n"
            "metric ld = logit(d.answer) - logit(d.distractor)\n"
            "swap L1.resid_pre @ each from clean into corrupt measure ld as e\n")
    res = fam.run(f"data d = {inline(ROWS)}\n" + spec)
    got = values(res, "e", "ld")  # [pos, example]
    assert got.shape == (max(LENGTHS), len(ROWS))
    for i, r in enumerate(ROWS):
        one = values(fam.run(f"data d = {inline([r])}\n" + spec), "e", "ld")[:, 0]
        n = LENGTHS[i]
        assert torch.allclose(got[:n, i], one, atol=1e-5), (fam.name, i)
        assert torch.isnan(got[n:, i]).all()
    mean = torch.tensor(res["e"]["ld"].to_numpy(), dtype=torch.float64)
    assert torch.allclose(mean, got.nanmean(1), atol=1e-6)


def test_mean_ablation_over_unequal_lengths(get_family) -> None:
    """mean(A) over prompts of different lengths: per position counted from each prompt's
    first token, over the examples that have that position."""
    fam = get_family("gpt2")
    res = fam.run(f"data d = {inline(ROWS)}\nrun clean = d.clean\nrun corrupt = d.corrupt\n"
                  "metric ld = logit(d.answer) - logit(d.distractor)\n"
                  "ablate L1.mlp.out in corrupt with mean(clean) measure ld as m\n")
    acts = [fam.read([r["clean"]], "L1.mlp.out")["L1.mlp.out"][0] for r in ROWS]
    total, count = torch.zeros(max(LENGTHS), 32), torch.zeros(max(LENGTHS), 1)
    for a in acts:
        total[:len(a)] += a
        count[:len(a)] += 1
    mean = total / count
    got = values(res, "m", "ld")[0]
    for i, r in enumerate(ROWS):
        logits = fam.forward(fam.ids([r["corrupt"]]),
                             {"L1.mlp.out": at(None, mean[:LENGTHS[i]])})[0][0, -1]
        want = logits[fam.tid(r["answer"])] - logits[fam.tid(r["distractor"])]
        assert math.isclose(got[i], want, abs_tol=1e-5), i


# ---- a tokenizer that adds BOS ------------------------------------------------------------


@pytest.mark.parametrize("fam_name", ["gpt2", "llama"])
def test_bos_positions_count_the_bos_token(fam_name: str, get_family) -> None:
    fam = get_family(fam_name, bos=True)
    bos = fam.tok.bos_token_id
    assert all(fam.tok(r["clean"])["input_ids"][0] == bos for r in ROWS)
    spec = ("run clean = d.clean\nrun corrupt = d.corrupt\n"
            "metric ld = logit(d.answer) - logit(d.distractor)\n"
            "swap embed @ 0 from clean into corrupt measure ld as b0\n"
            "swap embed @ 1 from clean into corrupt measure ld as b1\n"
            "swap L0.resid_pre @ d.p from clean into corrupt measure ld as col\n"
            "ablate L0.mlp.out @ last in corrupt measure ld as abl\n")
    res = fam.run(f"data d = {inline(ROWS)}\n" + spec)
    for i, r in enumerate(ROWS):
        clean, corrupt = fam.ids([r["clean"]]), fam.ids([r["corrupt"]])
        assert clean.shape[1] == LENGTHS[i] + 1 and corrupt[0, 0] == bos
        a, d = fam.tid(r["answer"]), fam.tid(r["distractor"])
        emb = fam.forward(clean, reads=("embed",))[1]["embed"]

        def ld(writes=None, corrupt=corrupt, a=a, d=d):
            logits = fam.forward(corrupt, writes)[0][0, -1]
            return float(logits[a] - logits[d])

        # position 0 is BOS, the same token in both runs: swapping it changes nothing
        assert math.isclose(values(res, "b0", "ld")[0, i], ld(), abs_tol=1e-5)
        # position 1 is the first word
        want = ld({"embed": at(1, emb[:, 1])})
        assert math.isclose(values(res, "b1", "ld")[0, i], want, abs_tol=1e-5)
        want = ld({"embed": at(r["p"], emb[:, r["p"]])})
        assert math.isclose(values(res, "col", "ld")[0, i], want, abs_tol=1e-5)
        want = ld({"L0.mlp.out": at(-1, 0.0)})
        assert math.isclose(values(res, "abl", "ld")[0, i], want, abs_tol=1e-5)
    # rows 0 and 2 differ in their first word: the @ 1 swap does something there
    assert not math.isclose(values(res, "b1", "ld")[0, 2], values(res, "b0", "ld")[0, 2],
                            abs_tol=1e-4)


def test_mean_and_resample_at_each_position_use_examples_that_have_it(get_family) -> None:
    """`@ each` over prompts of different lengths, with mean(A)/resample(A): at position p
    the value comes from A's examples that have a token p (a shorter example has none)."""
    fam = get_family("gpt2")
    rows = ROWS + [{"clean": "when John and Mary went to the store", "corrupt":
                    "when Bob and Anna went to the store", "answer": "John",
                    "distractor": "Mary", "p": 1}]
    lengths = LENGTHS + [8]
    head = (f"data d = {inline(rows)}\nrun clean = d.clean\nrun corrupt = d.corrupt\n"
            "metric ld = logit(d.answer) - logit(d.distractor)\n")
    runs = [fam.run(head + f"set seed = {s}\n"
                    "ablate L1.mlp.out @ each in corrupt with mean(clean) measure ld as m\n"
                    "ablate L1.mlp.out @ each in corrupt with resample(clean) measure ld as r\n")
            for s in (0, 1, 2)]
    acts = [fam.read([r["clean"]], "L1.mlp.out")["L1.mlp.out"][0] for r in rows]
    mean_got = values(runs[0], "m", "ld")  # [pos, example]
    drawn = set()
    for p in range(max(lengths)):
        have = [j for j, n in enumerate(lengths) if n > p]
        mean = torch.stack([acts[j][p] for j in have]).mean(0)
        for i, r in enumerate(rows):
            if lengths[i] <= p:
                assert torch.isnan(mean_got[p, i]) and \
                    all(torch.isnan(values(res, "r", "ld")[p, i]) for res in runs)
                continue

            def ld(v, r=r, p=p):
                logits = fam.forward(fam.ids([r["corrupt"]]), {"L1.mlp.out": at(p, v)})[0]
                return float(logits[0, -1, fam.tid(r["answer"])]
                             - logits[0, -1, fam.tid(r["distractor"])])

            assert math.isclose(mean_got[p, i], ld(mean), abs_tol=1e-5), (p, i)
            options = {j: ld(acts[j][p]) for j in have if j != i}
            for res in runs:
                got = float(values(res, "r", "ld")[p, i])
                hits = [j for j, v in options.items() if math.isclose(got, v, abs_tol=1e-5)]
                assert hits, (p, i, got, options)
                drawn.add((p, i, hits[0]))
    assert len({(p, i) for p, i, _ in drawn}) < len(drawn), "seeds draw different examples"
    # a position that one example alone has: nothing to resample it from
    with pytest.raises(PatchcError, match="E456"):
        fam.run(f"data d = {inline(ROWS)}\nrun clean = d.clean\nrun corrupt = d.corrupt\n"
                "ablate L1.mlp.out @ each in corrupt with resample(clean) "
                "measure logit(d.answer)\n")


def test_generation_and_metric_positions_under_padding(fam: Fam) -> None:
    """Greedy generation from left-padded prompts continues each prompt as it would alone
    (hand decoding without a cache, the write on the prompt's last token only); a metric
    `@ 1` or `@ d.p` reads each prompt's own token there."""
    n_new = 3
    rows, texts = [], []
    for r in ROWS:
        ids = fam.ids([r["clean"]])
        src = fam.read([r["clean"]], "L2.resid_post")["L2.resid_post"][:, -1]
        seq = ids
        for _ in range(n_new):
            logits = fam.forward(seq, {"L0.resid_post": at(ids.shape[1] - 1, src)})[0]
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
        text = fam.tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)
        texts.append(text)
        rows.append(dict(r, answer=(text.split() or ["Anna"])[-1]))
    res = fam.run(f"data d = {inline(rows)}\nrun q = d.clean\n"
                  "metric at1 = logit(d.answer) @ 1\nmetric atp_ = logprob(d.answer) @ d.p\n"
                  "backpatch L2.resid_post -> L0.resid_post @ last in q\n"
                  f"    measure generate({n_new}) contains d.answer, at1, atp_\n    as g\n")
    got = values(res, "g", f"generate({n_new}) contains d.answer")[0]
    assert got.tolist() == [float(r["answer"] in t) for r, t in zip(rows, texts)], texts
    for i, r in enumerate(rows):
        ids = fam.ids([r["clean"]])
        src = fam.read([r["clean"]], "L2.resid_post")["L2.resid_post"][:, -1]
        logits = fam.forward(ids, {"L0.resid_post": at(-1, src)})[0][0]
        a = fam.tid(r["answer"])
        assert math.isclose(values(res, "g", "at1")[0, i], logits[1, a], abs_tol=1e-5)
        want = torch.log_softmax(logits[r["p"]], -1)[a]
        assert math.isclose(values(res, "g", "atp_")[0, i], want, abs_tol=1e-5)
