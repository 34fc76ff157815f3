"""Every operation's numbers, recomputed by hand.

Each test runs a spec through `patchc.run` on a tiny random model and recomputes what the
table must hold with plain torch hooks on the HF modules (conftest.Fam.forward), never through
runtime/adapters or runtime/writes: swap at every kind of site and position, the metrics of
LANGUAGE.md §5, ablate (zero/mean/resample), steer, scale, subspaces, backpatch, generation,
interventions baked into runs, and the gradient estimates (atp, ig).
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam, at, inline, logit_diff
from safetensors.torch import save_file

ROWS = [
    {"clean": "when Mary and John went to", "corrupt": "when Anna and Bob went to",
     "answer": "Mary", "distractor": "John"},
    {"clean": "the cat sat on the mat", "corrupt": "the dog sat on the tree",
     "answer": "mat", "distractor": "tree"},
    {"clean": "Mary gave the red ball to", "corrupt": "John gave the blue ball to",
     "answer": "John", "distractor": "Mary"},
    {"clean": "a bird was on the tree", "corrupt": "a fish was on the mat",
     "answer": "bird", "distractor": "fish"},
]
CLEAN = [r["clean"] for r in ROWS]
CORRUPT = [r["corrupt"] for r in ROWS]
T = 6  # tokens per prompt
HEAD = f"""
data d = {inline(ROWS)}
run clean = d.clean
run corrupt = d.corrupt
metric ld = logit(d.answer) - logit(d.distractor)
"""
LD = "logit(d.answer) - logit(d.distractor)"  # the column name of the inline expression
ATOL = 1e-5


def ld_of(fam: Fam, logits: torch.Tensor) -> torch.Tensor:
    return logit_diff(logits, [fam.tid(r["answer"]) for r in ROWS],
                      [fam.tid(r["distractor"]) for r in ROWS])


def hand_ld(fam: Fam, texts: list[str], writes: dict | None = None) -> torch.Tensor:
    return ld_of(fam, fam.forward(fam.ids(texts), writes)[0])


def per_example(res, table: str, col: str, **key) -> torch.Tensor:
    """One row's per-example values, in example order."""
    df = res.per_example(table)
    for k, v in key.items():
        df = df[df[k] == v]
    df = df.sort_values("example")
    assert len(df) == len(ROWS), (key, len(df))
    return torch.tensor(df[col].to_numpy(), dtype=torch.float32)


def row(res, table: str, **key):
    df = res[table]
    for k, v in key.items():
        df = df[df[k] == v]
    assert len(df) == 1, (key, df)
    return df.iloc[0]


def close(a, b, atol: float = ATOL) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b, atol=atol, rtol=1e-5), (a, b, (a - b).abs().max())


def swap_writes(fam: Fam, targets: list[tuple[str, int | slice | None]], src: list[str]):
    """Writes that put `src`'s values of each (site, pos) into the run being computed."""
    clean = fam.read(src, *{s for s, _ in targets})
    writes: dict = {}
    for site, pos in targets:
        v = clean[site] if pos is None else clean[site][:, pos]
        prev = writes.get(site)
        fn = at(pos, v)
        writes[site] = fn if prev is None else (lambda x, f=fn, p=prev: f(p(x)))
    return writes


# ---- swap -----------------------------------------------------------------------------------

SWAPS = [  # spec site item, [(hand site, position)] (None: every position)
    ("L1.H2.z", [("L1.H2.z", None)]),
    ("L1.resid_pre @ last", [("L1.resid_pre", -1)]),
    ("L0.mlp.out @ 2", [("L0.mlp.out", 2)]),
    ("L2.attn.out", [("L2.attn.out", None)]),
    ("L1.mlp.post[5]", [("L1.mlp.post[5]", None)]),
    ("L2.resid_post @ 1..3", [("L2.resid_post", slice(1, 4))]),
    ("embed @ -1", [("embed", -1)]),
    ("all(L0.H1.z, L2.mlp.out) @ last", [("L0.H1.z", -1), ("L2.mlp.out", -1)]),
    ("all(L0.H1.z @ 0, L1.H3.z, L1.resid_pre @ last)",
     [("L0.H1.z", 0), ("L1.H3.z", None), ("L1.resid_pre", -1)]),
]


@pytest.mark.parametrize("fam_name", ["gpt2", "llama", "neox"])
def test_swap_each_site_kind(fam_name: str, get_family) -> None:
    fam = get_family(fam_name)
    items = ", ".join(s for s, _ in SWAPS)
    res = fam.run(HEAD + f"swap {items} from clean into corrupt\n"
                  f"    measure ld normalized, {LD}\n    as t\n")
    m_clean, m_corrupt = hand_ld(fam, CLEAN), hand_ld(fam, CORRUPT)
    assert len(res["t"]) == len(SWAPS)
    for item, targets in SWAPS:
        m = hand_ld(fam, CORRUPT, swap_writes(fam, targets, CLEAN))
        close(per_example(res, "t", LD, site=item), m)
        r = row(res, "t", site=item)
        close(r[LD], m.mean())
        norm = (m.mean() - m_corrupt.mean()) / (m_clean.mean() - m_corrupt.mean())
        close(r["ld"], norm, atol=1e-4)


def test_swap_head_sweep_and_each(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "swap L$l.H$h.z from clean into corrupt measure ld as heads\n"
                   "swap L*.resid_pre @ each from clean into corrupt measure ld as rp\n"
                   "swap L0.resid_pre from clean into corrupt measure ld as everything\n")
    heads, rp = res["heads"], res["rp"]
    assert list(heads.columns) == ["l", "h", "ld"] and len(heads) == 12
    assert list(rp.columns) == ["layer", "pos", "ld"] and len(rp) == 3 * T
    for layer in range(3):
        for h in range(4):
            site = f"L{layer}.H{h}.z"
            m = hand_ld(gpt2, CORRUPT, swap_writes(gpt2, [(site, None)], CLEAN))
            close(per_example(res, "heads", "ld", l=layer, h=h), m)
        for p in range(T):
            m = hand_ld(gpt2, CORRUPT, swap_writes(gpt2, [(f"L{layer}.resid_pre", p)], CLEAN))
            close(per_example(res, "rp", "ld", layer=layer, pos=p), m)
    # Swapping every position of the first residual is running clean.
    close(per_example(res, "everything", "ld"), hand_ld(gpt2, CLEAN))


def test_swap_metrics(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "swap L1.resid_pre @ last, L0.H2.z from clean into corrupt\n"
                   "    measure prob(d.answer), logprob(d.answer), rank(d.answer), kl(clean), "
                   "loss, logit(\"cat\"), logit(id(7)), 2 * ld - 1\n    as t\n")
    clean_logits = gpt2.forward(gpt2.ids(CLEAN))[0]
    ans = torch.tensor([gpt2.tid(r["answer"]) for r in ROWS])
    n = torch.arange(len(ROWS))
    ids = gpt2.ids(CORRUPT)
    for item, targets in [("L1.resid_pre @ last", [("L1.resid_pre", -1)]),
                          ("L0.H2.z", [("L0.H2.z", None)])]:
        logits = gpt2.forward(ids, swap_writes(gpt2, targets, CLEAN))[0]
        last = logits[:, -1]
        lp = torch.log_softmax(last, -1)
        got = lambda col, item=item: per_example(res, "t", col, site=item)  # noqa: E731
        close(got("prob(d.answer)"), lp.exp()[n, ans])
        close(got("logprob(d.answer)"), lp[n, ans])
        assert torch.equal(got("rank(d.answer)"),
                           (last > last[n, ans][:, None]).sum(-1).float())
        p_log = torch.log_softmax(clean_logits[:, -1], -1)
        close(got("kl(clean)"), (p_log.exp() * (p_log - lp)).sum(-1))
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        close(got("loss"), nll.mean(1))
        close(got('logit("cat")'), last[:, gpt2.tid("cat")])
        close(got("logit(id(7))"), last[:, 7])
        close(got("2 * ld - 1"), 2 * ld_of(gpt2, logits) - 1)
    # kl of clean against itself is 0: swapping the whole last residual is running clean.
    res = gpt2.run(HEAD + "swap L2.resid_post from clean into corrupt measure kl(clean) as k\n")
    close(per_example(res, "k", "kl(clean)"), torch.zeros(len(ROWS)))


@pytest.mark.parametrize("fam_name", ["gpt2", "llama"])
def test_swap_with_self_reproduces_the_run(fam_name: str, get_family) -> None:
    fam = get_family(fam_name)
    res = fam.run(HEAD + "swap L*.H*.z, L*.resid_pre @ last, L*.mlp.out, embed @ each "
                  "from corrupt into corrupt\n    measure ld, kl(corrupt)\n    as t\n")
    base = hand_ld(fam, CORRUPT)
    df = res.per_example("t")
    assert len(res["t"]) == 12 + 3 + 3 + T
    for _, group in df.groupby(["site", "layer", "head", "pos"], dropna=False):
        got = torch.tensor(group.sort_values("example")["ld"].to_numpy(),
                           dtype=torch.float32)
        if fam.naive:  # the reference runs each experiment alone: bit for bit
            assert torch.equal(got, base), (got, base)
        else:
            close(got, base, atol=1e-5)
    assert (df["kl(corrupt)"].abs() < 1e-6).all()


# ---- ablate ---------------------------------------------------------------------------------


def test_ablate_zero_and_mean(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "ablate L1.mlp.out, L0.H1.z @ last in corrupt measure ld as z\n"
                   "ablate L1.mlp.out, L0.H1.z @ last in corrupt with mean(clean) "
                   f"measure {LD}, ld normalized as mn\n")
    m_clean, m_corrupt = hand_ld(gpt2, CLEAN), hand_ld(gpt2, CORRUPT)
    clean = gpt2.read(CLEAN, "L1.mlp.out", "L0.H1.z")
    cases = [("L1.mlp.out", "L1.mlp.out", None), ("L0.H1.z @ last", "L0.H1.z", -1)]
    for item, site, pos in cases:
        zero = hand_ld(gpt2, CORRUPT, {site: at(pos, 0.0)})
        close(per_example(res, "z", "ld", site=item), zero)
        close(row(res, "z", site=item)["ld"], zero.mean())
        mean = clean[site].mean(0)  # [T, d]: per position, over the clean examples
        mean = mean if pos is None else mean[pos]
        m = hand_ld(gpt2, CORRUPT, {site: at(pos, mean)})
        close(per_example(res, "mn", LD, site=item), m)
        norm = (m.mean() - m_corrupt.mean()) / (m_clean.mean() - m_corrupt.mean())
        close(row(res, "mn", site=item)["ld"], norm, atol=1e-4)
    # normalized without a source run: m / m_target (on the means)
    res = gpt2.run(HEAD + "ablate L1.mlp.out in corrupt measure ld normalized as zn\n")
    zero = hand_ld(gpt2, CORRUPT, {"L1.mlp.out": at(None, 0.0)})
    close(res["zn"]["ld"][0], zero.mean() / m_corrupt.mean(), atol=1e-4)


def test_ablate_resample(gpt2: Fam) -> None:
    spec = HEAD + "set seed = SEED\nablate L1.mlp.out, L2.H0.z @ last in corrupt " \
        "with resample(clean) measure ld as rs\nablate L1.mlp.out in corrupt measure ld as z\n"
    runs = {s: gpt2.run(spec.replace('SEED', str(s))) for s in (0, 1, 2, 3)}
    again = gpt2.run(spec.replace('SEED', '0'))
    clean = gpt2.read(CLEAN, "L1.mlp.out", "L2.H0.z")
    for item, site, pos in [("L1.mlp.out", "L1.mlp.out", None),
                            ("L2.H0.z @ last", "L2.H0.z", -1)]:
        # Every example takes one *other* clean example's value, whole.
        candidates = []
        for j in range(len(ROWS)):
            v = clean[site][j] if pos is None else clean[site][j, pos]
            candidates.append(hand_ld(gpt2, CORRUPT, {site: at(pos, v)}))
        cand = torch.stack(candidates)  # [source example, example]
        seen = set()
        for seed, res in runs.items():
            got = per_example(res, "rs", "ld", site=item)
            choice = []
            for i in range(len(ROWS)):
                hits = [j for j in range(len(ROWS))
                        if torch.allclose(got[i], cand[j, i], atol=ATOL)]
                assert hits and i not in hits, (seed, i, got[i], cand[:, i])
                choice.append(hits[0])
            seen.add(tuple(choice))
        assert len(seen) > 1, "the seed changes which examples are drawn"
        assert torch.equal(per_example(runs[0], "rs", "ld", site=item),
                           per_example(again, "rs", "ld", site=item))
    assert not torch.allclose(per_example(runs[0], "rs", "ld", site="L1.mlp.out"),
                              per_example(runs[0], "z", "ld"))


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


# ---- subspaces ------------------------------------------------------------------------------


def test_subspace_swap_and_ablate(gpt2: Fam, tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    v, w = torch.randn(32, generator=g), torch.randn(32, generator=g)
    path = tmp_path / "dirs.safetensors"
    save_file({"v": v, "w": w}, str(path))
    res = gpt2.run(HEAD + f"""
vector v = load("{path}", key="v")
vector w = load("{path}", key="w")
swap L1.resid_pre[v], L1.resid_pre[v, w] @ last from clean into corrupt measure ld as sw
ablate L1.resid_pre[v] in corrupt measure ld as ab
""")
    site = "L1.resid_pre"
    a_clean = gpt2.read(CLEAN, site)[site]

    def proj(*vs):
        q, _ = torch.linalg.qr(torch.stack(vs, 1))
        return q @ q.T

    p1, p2 = proj(v), proj(v, w)
    m1 = hand_ld(gpt2, CORRUPT, {site: lambda x: x + (a_clean - x) @ p1})
    close(per_example(res, "sw", "ld", site="L1.resid_pre[v]"), m1)

    def last_only(x):
        out = x.clone()
        out[:, -1] = x[:, -1] + (a_clean[:, -1] - x[:, -1]) @ p2
        return out

    close(per_example(res, "sw", "ld", site="L1.resid_pre[v, w] @ last"),
          hand_ld(gpt2, CORRUPT, {site: last_only}))
    close(per_example(res, "ab", "ld"), hand_ld(gpt2, CORRUPT, {site: lambda x: x - x @ p1}))
    # the ablated component really is gone: reading it back along v gives 0
    got = gpt2.forward(gpt2.ids(CORRUPT), {site: lambda x: x - x @ p1}, reads=(site,))[1]
    assert (got[site] @ v).abs().max() < 1e-4


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


# ---- interventions baked into runs ----------------------------------------------------------


def _noise_write(seed: int, n: int, std: float, pos: int):
    """The embed write of noise(embed @ pos, std, seed) over n rows (examples x samples):
    one Gaussian draw per (row, feature) from a generator seeded with `seed`."""
    noise = torch.randn((n, 1, 32), generator=torch.Generator().manual_seed(seed))
    return lambda x: torch.cat([x[:, :pos], x[:, pos:pos + 1] + std * noise, x[:, pos + 1:]], 1)


def _noised(gpt2: Fam, seed: int, samples: int, std: float, pos: int) -> torch.Tensor:
    """ld of the noised clean run, by hand: each example repeated `samples` times, noised,
    and the samples of an example averaged."""
    ids = gpt2.ids(CLEAN).repeat_interleave(samples, 0)
    logits = gpt2.forward(ids, {"embed": _noise_write(seed, len(ids), std, pos)})[0]
    ld = logit_diff(logits, [gpt2.tid(r["answer"]) for r in ROWS for _ in range(samples)],
                    [gpt2.tid(r["distractor"]) for r in ROWS for _ in range(samples)])
    return ld.view(-1, samples).mean(1)


def test_kl_and_atp_against_a_run_with_noise_samples(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + """
run noisy = d.clean with noise(embed @ 1, std=0.5, samples=3, seed=1)
scale L2.mlp.out in clean by 1 measure kl(noisy) as k
attribute L1.mlp.out from clean into noisy using atp measure ld as a
""")
    ids = gpt2.ids(CLEAN).repeat_interleave(3, 0)
    noise = _noise_write(1, len(ids), 0.5, 1)
    noisy = gpt2.forward(ids, {"embed": noise})[0][:, -1]
    clean = gpt2.forward(gpt2.ids(CLEAN))[0][:, -1].repeat_interleave(3, 0)
    p_log, q_log = torch.log_softmax(noisy, -1), torch.log_softmax(clean, -1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1).view(-1, 3).mean(1)
    close(per_example(res, "k", "kl(noisy)"), kl)
    # atp into the noised run: per sample m_B + (a_A - a_B) . grad, samples averaged
    site = "L1.mlp.out"
    a = gpt2.read(CLEAN, site)[site].repeat_interleave(3, 0)
    got: dict = {}

    def leaf(x):
        got["b"] = x.detach().clone()
        got["d"] = torch.zeros_like(x, requires_grad=True)
        return x + got["d"]

    with torch.enable_grad(), gpt2.hooked({"embed": noise, site: leaf}):
        logits = gpt2.model(ids).logits
        ld = logit_diff(logits, [gpt2.tid(r["answer"]) for r in ROWS for _ in range(3)],
                        [gpt2.tid(r["distractor"]) for r in ROWS for _ in range(3)])
        ld.sum().backward()
    est = ld.detach() + ((a - got["b"]) * got["d"].grad).sum((1, 2))
    close(per_example(res, "a", "ld"), est.view(-1, 3).mean(1), atol=1e-4)


def test_noise_runs(gpt2: Fam) -> None:
    spec = HEAD + """
run noisy = d.clean with noise(embed @ 1, std=0.5, samples=3, seed=SEED)
run noisy3 = d.clean with noise(embed @ 2, std=3*std(embed), samples=2, seed=4)
scale L2.mlp.out in noisy by 1 measure ld as n
scale L2.mlp.out in noisy3 by 1 measure ld as n3
trace L2.resid_post from clean into noisy measure ld as tr
trace L2.resid_post from clean into noisy measure ld normalized as trn
trace L$l.resid_post @ each from clean into noisy measure prob(d.answer) as per_pos
"""
    res, again, other = (gpt2.run(spec.replace('SEED', str(s))) for s in (1, 1, 2))
    noisy = per_example(res, "n", "ld")
    assert torch.equal(noisy, per_example(again, "n", "ld"))
    assert not torch.allclose(noisy, per_example(other, "n", "ld"))
    close(noisy, _noised(gpt2, 1, 3, 0.5, 1))
    close(per_example(other, "n", "ld"), _noised(gpt2, 2, 3, 0.5, 1))
    emb = gpt2.read(CLEAN, "embed")["embed"]
    close(per_example(res, "n3", "ld"), _noised(gpt2, 4, 2, 3 * float(emb.std()), 2), atol=1e-4)
    # restoring the whole last residual gives back the clean run's metric
    m_clean = hand_ld(gpt2, CLEAN)
    close(per_example(res, "tr", "ld"), m_clean, atol=1e-5)
    close(res["tr"]["ld"][0], m_clean.mean())
    close(res["trn"]["ld"][0], 1.0, atol=1e-4)
    assert len(res["per_pos"]) == 3 * T


def test_baked_ablate_and_swap(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + """
run x = d.corrupt with ablate L0.mlp.out
run y = d.corrupt with swap L1.H0.z @ last from clean, scale L2.mlp.out by 0.5
scale L2.attn.out in x by 1 measure ld as bx
swap L1.resid_pre @ last from clean into x measure ld as sx
scale L0.attn.out in y by 1 measure ld as b_y
""")
    zero = {"L0.mlp.out": at(None, 0.0)}
    close(per_example(res, "bx", "ld"), hand_ld(gpt2, CORRUPT, zero))
    # an operation on a run with baked interventions applies on top of them
    src = gpt2.read(CLEAN, "L1.resid_pre")["L1.resid_pre"][:, -1]
    close(per_example(res, "sx", "ld"),
          hand_ld(gpt2, CORRUPT, {**zero, "L1.resid_pre": at(-1, src)}))
    z = gpt2.read(CLEAN, "L1.H0.z")["L1.H0.z"][:, -1]
    close(per_example(res, "b_y", "ld"), hand_ld(
        gpt2, CORRUPT, {"L1.H0.z": at(-1, z), "L2.mlp.out": lambda x: 0.5 * x}))


# ---- gradient estimates ---------------------------------------------------------------------


def _grads(fam: Fam, texts: list[str], sites: list[str], at_point: dict | None = None
           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ld and d(ld)/d(site) by autograd, with every site's gradient the total derivative
    (a zero tensor added at each site: paths through the other sites stay open)."""
    deltas: dict[str, torch.Tensor] = {}

    def leaf(x: torch.Tensor, s: str) -> torch.Tensor:
        deltas[s] = torch.zeros_like(x, requires_grad=True)
        base = (at_point or {}).get(s)
        return (x if base is None else base) + deltas[s]

    writes = {s: (lambda x, s=s: leaf(x, s)) for s in sites}
    with torch.enable_grad(), fam.hooked(writes):
        logits = fam.model(fam.ids(texts)).logits.float()
        ld = ld_of(fam, logits)
        ld.sum().backward()
    return ld.detach(), {s: d.grad for s, d in deltas.items()}


@pytest.mark.parametrize("kind", ["mlp.out", "resid_pre"])
def test_attribute_atp(gpt2: Fam, kind: str) -> None:
    res = gpt2.run(HEAD + f"attribute L*.{kind} from clean into corrupt using atp "
                   "measure ld normalized as a\n"
                   f"attribute L*.{kind} @ last from clean into corrupt using atp "
                   "measure ld as al\n")
    sites = [f"L{k}.{kind}" for k in range(3)]
    m_b, grads = _grads(gpt2, CORRUPT, sites)
    m_a = hand_ld(gpt2, CLEAN)
    a_clean, a_corr = gpt2.read(CLEAN, *sites), gpt2.read(CORRUPT, *sites)
    for k, s in enumerate(sites):
        diff = a_clean[s] - a_corr[s]
        est = m_b + (diff * grads[s]).sum((1, 2))
        close(per_example(res, "a", "ld", layer=k), est, atol=1e-4)
        norm = (est.mean() - m_b.mean()) / (m_a.mean() - m_b.mean())
        close(row(res, "a", layer=k)["ld"], norm, atol=1e-4)
        est_last = m_b + (diff[:, -1] * grads[s][:, -1]).sum(1)
        close(per_example(res, "al", "ld", layer=k), est_last, atol=1e-4)


def test_attribute_ig_one_step_is_the_midpoint_gradient(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "attribute L*.mlp.out from clean into corrupt using ig(steps=1) "
                   "measure ld as ig1\n"
                   "attribute L1.resid_post from clean into corrupt using ig(steps=2) "
                   "measure ld as ig2\n")
    m_b = hand_ld(gpt2, CORRUPT)
    for k in range(3):
        s = f"L{k}.mlp.out"
        a, b = gpt2.read(CLEAN, s)[s], gpt2.read(CORRUPT, s)[s]
        _, g = _grads(gpt2, CORRUPT, [s], {s: b + 0.5 * (a - b)})
        close(per_example(res, "ig1", "ld", layer=k), m_b + ((a - b) * g[s]).sum((1, 2)),
              atol=1e-4)
    s = "L1.resid_post"
    a, b = gpt2.read(CLEAN, s)[s], gpt2.read(CORRUPT, s)[s]
    total = torch.zeros(len(ROWS))
    for alpha in (0.25, 0.75):
        _, g = _grads(gpt2, CORRUPT, [s], {s: b + alpha * (a - b)})
        total += ((a - b) * g[s]).sum((1, 2)) / 2
    close(per_example(res, "ig2", "ld"), m_b + total, atol=1e-4)


def test_attribute_groups_and_positions(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "attribute all(L0.mlp.out, L2.H1.z @ last) from clean into corrupt "
                   "using atp measure ld as g\n"
                   "attribute L1.attn.out @ each from clean into corrupt using atp measure ld "
                   "as e\n")
    sites = ["L0.mlp.out", "L2.H1.z", "L1.attn.out"]
    m_b, grads = _grads(gpt2, CORRUPT, sites)
    a, b = gpt2.read(CLEAN, *sites), gpt2.read(CORRUPT, *sites)
    est = m_b + ((a["L0.mlp.out"] - b["L0.mlp.out"]) * grads["L0.mlp.out"]).sum((1, 2)) \
        + ((a["L2.H1.z"] - b["L2.H1.z"])[:, -1] * grads["L2.H1.z"][:, -1]).sum(1)
    close(per_example(res, "g", "ld"), est, atol=1e-4)
    diff = a["L1.attn.out"] - b["L1.attn.out"]
    for p in range(T):
        close(per_example(res, "e", "ld", pos=p),
              m_b + (diff[:, p] * grads["L1.attn.out"][:, p]).sum(1), atol=1e-4)


def test_compare_correlates_table_means(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "compare atp against swap on L*.mlp.out from clean into corrupt "
                   "measure ld as c\n")
    sites = [f"L{k}.mlp.out" for k in range(3)]
    m_b, grads = _grads(gpt2, CORRUPT, sites)
    a, b = gpt2.read(CLEAN, *sites), gpt2.read(CORRUPT, *sites)
    est = [float((m_b + ((a[s] - b[s]) * grads[s]).sum((1, 2))).mean()) for s in sites]
    exact = [float(hand_ld(gpt2, CORRUPT, {s: at(None, a[s])}).mean()) for s in sites]
    r = row(res, "c", site_kind="mlp.out", method="atp")
    x, y = torch.tensor(est, dtype=torch.float64), torch.tensor(exact, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    close(r["pearson"], float((x * y).sum() / (x.norm() * y.norm())), atol=1e-4)
    rank = lambda v: torch.tensor(v).argsort().argsort().double()  # noqa: E731  (no ties)
    x, y = rank(est) - 1, rank(exact) - 1
    close(r["spearman"], float((x * y).sum() / (x.norm() * y.norm())), atol=1e-6)


def _ln_scales(fam: Fam, texts: list[str]) -> dict[str, torch.Tensor]:
    """1/sigma of every LayerNorm's input, per token."""
    got = {}
    handles = []
    for name, mod in fam.model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            def pre(m, args, name=name):
                x = args[0]
                got[name] = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + m.eps)
            handles.append(mod.register_forward_pre_hook(pre))
    try:
        fam.forward(fam.ids(texts))
    finally:
        for h in handles:
            h.remove()
    return got


def test_freeze_ln(gpt2: Fam) -> None:
    res = gpt2.run(HEAD + "run fc = d.corrupt with freeze ln from clean\n"
                   "run fs = d.corrupt with freeze ln from corrupt\n"
                   "scale L0.mlp.out in fc by 1 measure ld as c\n"
                   "scale L0.mlp.out in fs by 1 measure ld as s\n")
    close(per_example(res, "s", "ld"), hand_ld(gpt2, CORRUPT), atol=1e-5)
    scales = _ln_scales(gpt2, CLEAN)
    assert len(scales) == 2 * 3 + 1
    handles = []
    for name, mod in gpt2.model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            def post(m, args, out, name=name):
                x = args[0]
                return (x - x.mean(-1, keepdim=True)) * scales[name] * m.weight + m.bias
            handles.append(mod.register_forward_hook(post))
    try:
        want = hand_ld(gpt2, CORRUPT)
    finally:
        for h in handles:
            h.remove()
    close(per_example(res, "c", "ld"), want, atol=1e-5)
    assert not torch.allclose(want, hand_ld(gpt2, CORRUPT), atol=1e-3)
