"""Operations that replace an activation, with their numbers recomputed by hand.

Each test runs a spec through `patchc.run` on a tiny random model and recomputes what the
table must hold with plain torch hooks on the HF modules (conftest.Fam.forward), never through
runtime/adapters or runtime/writes: swap at every kind of site and position, the metrics of
docs/language.md §8, ablate (zero/mean/resample), and swap/ablate restricted to subspaces.
Shared rows and helpers: ops_common.py; the other operations: test_ops_steer.py and
test_ops_runs.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam, at
from ops_common import (
    ATOL,
    CLEAN,
    CORRUPT,
    HEAD,
    LD,
    ROWS,
    T,
    close,
    hand_ld,
    ld_of,
    per_example,
    row,
)
from safetensors.torch import save_file


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
    assert list(heads.columns) == ["l", "h", "ld", "ld_se"] and len(heads) == 12
    assert list(rp.columns) == ["layer", "pos", "ld", "ld_se"] and len(rp) == 3 * T
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
