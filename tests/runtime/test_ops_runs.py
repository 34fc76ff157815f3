"""Runs with interventions baked in, and the gradient estimates, recomputed by hand.

Each test runs a spec through `patchc.run` on a tiny random model and recomputes what the
table must hold with plain torch hooks on the HF modules (conftest.Fam.forward), never through
runtime/adapters or runtime/writes: runs declared `with` noise samples, ablate, swap, scale or
frozen LayerNorm scales (and trace into a noised run), and the gradient estimates atp and ig,
with `compare` correlating them against exact swaps. Shared rows and helpers: ops_common.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Fam, at, logit_diff
from ops_common import CLEAN, CORRUPT, HEAD, ROWS, T, close, hand_ld, ld_of, per_example, row

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


def test_std_is_taken_at_its_positions(gpt2: Fam) -> None:
    """std(SITE @ POS) is the std over those positions of every prompt (and every feature);
    it used to take every token whatever the position said."""
    res = gpt2.run(HEAD + """
run a = d.clean with noise(embed @ 2, std=3*std(embed @ 1..2), samples=2, seed=4)
run b = d.clean with noise(embed @ 2, std=3*std(L1.resid_post @ last), samples=2, seed=4)
scale L2.mlp.out in a by 1 measure ld as a
scale L2.mlp.out in b by 1 measure ld as b
""")
    emb = gpt2.read(CLEAN, "embed")["embed"]
    resid = gpt2.read(CLEAN, "L1.resid_post")["L1.resid_post"]
    close(per_example(res, "a", "ld"), _noised(gpt2, 4, 2, 3 * float(emb[:, 1:3].std()), 2),
          atol=1e-4)
    close(per_example(res, "b", "ld"), _noised(gpt2, 4, 2, 3 * float(resid[:, -1].std()), 2),
          atol=1e-4)
    assert float(emb[:, 1:3].std()) != float(emb.std())


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


def test_spearman_ties_values_within_float_noise() -> None:
    """Swaps that change nothing come out a few units in the last place apart; ranking them
    by that noise moved compare's Spearman (0.996 for what is 1 up to rounding)."""
    from patchc.tables import spearman

    estimate = [0.0, 0.0, 0.0, 1.0, 2.0]
    exact = [3e-8, -2e-8, 1e-8, 1.0, 2.0]  # (the first three: one value, up to noise)
    assert spearman(estimate, exact) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
