"""Latents in every operation that takes sites: one row per (operation, kind of latent site)
of the language, each either equal to an independent computation written here (plain module
hooks on GPT-2 and sae_helpers.HandSAE) or refused by `check` with an error that says why
it has no meaning.

Kinds of latent site: an SAE's latents (`s[...]`, at L1.resid_post), a transcoder's
(`t[...]`, standing in for L0's MLP), a joint slice (`s[2:9]`, `t[2:9]`) and an error term
(`s.err`, `t.err`); positions `@ last`, `@ 2`, `@ each` or all. The spec runs once per
interpreter (optimized plan, naive reference); each case checks its table.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import Fam
from ops_common import CLEAN, CORRUPT, HEAD, ROWS, ld_of, per_example
from sae_helpers import HandSAE, save_sae
from test_dictionaries_direct import hand_dla, hand_lens

import patchc
from patchc.compiler.check_names import keywords
from patchc.compiler.errors import PatchcError
from patchc.runtime import lrp

D, N, T = 32, 12, 6
LAST = T - 1
ATOL = 1e-4
RUNS = {"clean": CLEAN, "corrupt": CORRUPT}


class Hand:
    """The SAE `s` at L1.resid_post and the transcoder `t` at L0's MLP by plain module hooks.
    `run(texts, edits)` gives ld and each dictionary's (latents, error term) as the forward
    saw them; an edit `(f, err) -> (f', err')` puts y + decode(f') - decode(f) + err' - err
    in the host's place. With grad=True the edited latents and error terms are leaves
    (gradients reach them with the error term held; upstream of a host the model's own)."""

    def __init__(self, fam: Fam, ws: dict, wt: dict) -> None:
        self.fam, self.s, self.t = fam, HandSAE(ws), HandSAE(wt, "transcoder")
        self._base: dict = {}

    def _apply(self, name: str, hand: HandSAE, x, y, edits, grad, store):
        f = hand.encode(x.detach())
        r = hand.decode(f, x.detach())
        err = y.detach().float() - r
        f2, e2 = edits[name](f.clone(), err.clone()) if name in edits else (f, err)
        fl = f2.detach().requires_grad_(grad)
        el = e2.detach().requires_grad_(grad)
        store[name] = (fl, el)
        return y + (hand.decode(fl, x.detach()) - r) + (el - err)

    def run(self, texts, edits=None, grad=False):
        edits, store, seen = edits or {}, {}, {}
        h = self.fam.model.transformer.h

        def s_post(mod, args, out):
            y = out[0] if isinstance(out, tuple) else out
            new = self._apply("s", self.s, y, y, edits, grad, store)
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

        def t_pre(mod, args):
            seen["x"] = args[0]

        def t_post(mod, args, y):
            return self._apply("t", self.t, seen["x"], y, edits, grad, store)

        handles = [h[1].register_forward_hook(s_post), h[0].mlp.register_forward_pre_hook(t_pre),
                   h[0].mlp.register_forward_hook(t_post)]
        try:
            with torch.set_grad_enabled(grad):
                ld = ld_of(self.fam, self.fam.model(self.fam.ids(texts)).logits.float())
        finally:
            for hd in handles:
                hd.remove()
        return ld, store

    def base(self, run: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, error term) of `name` in the run without edits, [n, T, width]."""
        if run not in self._base:
            self._base[run] = self.run(RUNS[run])[1]
        f, e = self._base[run][name]
        return f.detach(), e.detach()

    def ld(self, run: str, edits=None) -> torch.Tensor:
        return self.run(RUNS[run], edits)[0]

    def grads(self, run: str, edits=None):
        """ld of the run and d ld / d (latents, error) of each dictionary."""
        ld, store = self.run(RUNS[run], edits, grad=True)
        leaves = [v for pair in store.values() for v in pair]
        gs = torch.autograd.grad(ld.sum(), leaves)
        out = {name: (gs[2 * i], gs[2 * i + 1]) for i, name in enumerate(store)}
        return ld.detach(), out


def put(name: str, err: bool, pos, feats, value):
    """An edit writing `value` ([n, |pos|, |feats|] or broadcastable) at pos x feats of the
    latents (or error term) of `name`."""
    def edit(f, e):
        t = e if err else f
        sub = t[:, pos][..., feats]
        new = value(sub) if callable(value) else value
        block = t[:, pos].clone()
        block[..., feats] = new.expand_as(sub) if torch.is_tensor(new) else new
        t[:, pos] = block
        return f, e
    return {name: edit}


def _src(h: Hand, run: str, name: str, err: bool):
    f, e = h.base(run, name)
    return e if err else f


# ---- the spec: one table per case -------------------------------------------------------

SPEC = (HEAD + 'sae s = "SPATH" at L1.resid_post\n'
        'transcoder t = "TPATH" at L0.mlp\n'
        "vector vt = mean(clean.t[0:12] @ last)\n"
        "vector ve = mean(clean.s.err @ last)\n"
        "vector vs = mean(clean.s[0:12] @ last)\n"
        "run r_swap = d.corrupt with swap s[2:9] @ last from clean\n"
        "run r_abl = d.corrupt with ablate t[{1, 4}]\n"
        "run r_steer = d.corrupt with steer s.err @ last by 2 * ve\n"
        "run r_scale = d.corrupt with scale t[2:9] by 0.5\n"
        "run r_noise = d.corrupt with noise(s[0:12] @ 2, std=0.5, seed=3)\n"
        "run r_noise2 = d.corrupt with noise(t.err @ 2, std=2*std(t.err), seed=4)\n")

WORKS: dict[str, str] = {
    "swap/sae": "swap s[{1, 4}] @ last from clean into corrupt",
    "swap/transcoder": "swap t[{1, 4}] @ last from clean into corrupt",
    "swap/slice": "swap s[2:9] from clean into corrupt",
    "swap/err": "swap t.err @ last from clean into corrupt",
    "swap/group": "swap all(s[1], t.err) @ last from clean into corrupt",
    "swap/subspace": "swap s[0:12] [vs] @ last from clean into corrupt",
    "trace/transcoder": "trace t[2:9] @ last from clean into corrupt",
    "ablate-zero/sae": "ablate s[{1, 4}] @ last in corrupt",
    "ablate-zero/err": "ablate s.err @ 2 in corrupt",
    "ablate-mean/transcoder": "ablate t[2:9] in corrupt with mean(clean)",
    "ablate-resample/err": "ablate s.err @ last in corrupt with resample(clean)",
    "backpatch/slices": "backpatch s[2:9] -> t[2:9] @ last in corrupt from clean",
    "steer/transcoder": "steer t[0:12] @ last in corrupt by {0.5, 2} * vt",
    "steer/err": "steer s.err @ last in corrupt by ve",
    "scale/sae": "scale s[{1, 4}] in corrupt by {0, 2}",
    "scale/err": "scale t.err @ last in corrupt by 0.5",
    "baked/swap": "measure ld in r_swap",
    "baked/ablate": "measure ld in r_abl",
    "baked/steer": "measure ld in r_steer",
    "baked/scale": "measure ld in r_scale",
    "baked/noise": "measure ld in r_noise",
    "baked/noise-std": "measure ld in r_noise2",
    "atp/sae": "attribute s[{1, 4}] @ each from clean into corrupt using atp",
    "atp/transcoder-slice": "attribute t[2:9] @ last from clean into corrupt using atp",
    "atp/err": "attribute s.err @ last, t.err @ last from clean into corrupt using atp",
    "ig/sae": "attribute s[{1, 4}] @ last from clean into corrupt using ig(steps=2)",
    "ig/err": "attribute t.err @ last from clean into corrupt using ig(steps=2)",
    "compare/sae": "compare atp against swap on s[*] @ last from clean into corrupt",
    "dla/sae": "dla s[{1, 4}] in clean",
    "dla/transcoder-slice": "dla t[2:9] @ last in clean",
    "dla/err": "dla s.err, t.err in clean",
    "lens/sae": "lens s[{1, 4}] @ last in clean",
    "lens/transcoder": "lens t[{1, 4}] @ last in clean",
    "lens/err": "lens t.err @ last in clean",
}
READS = "read s[{1, 4}], t[2:9] @ last, s.err in clean  as reads\n"
CIRCUIT = ("attribute s[*] @ last, t[*] @ last, s.err @ last, t.err @ last from corrupt into "
           "clean using atp  measure ld  as nodes\n"
           "circuit c = top {0, 5} of nodes\n"
           "evaluate c in clean with ablate(corrupt)  measure ld  as ev\n")


def _table(case: str) -> str:
    return case.replace("/", "_").replace("-", "_")


@pytest.fixture(scope="module")
def audit(gpt2: Fam, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    ws = save_sae(tmp / "s", D, N, bias=-0.1, seed=1)
    wt = save_sae(tmp / "t", D, N, "transcoder", d_out=D, bias=-0.1, seed=2)
    body = SPEC.replace("SPATH", str(tmp / "s")).replace("TPATH", str(tmp / "t"))
    body += "".join(f"{stmt}{'' if stmt.startswith('measure') else '  measure ld'}  as "
                    f"{_table(c)}\n" for c, stmt in WORKS.items())
    body += READS + (CIRCUIT if "evaluate" in keywords() else "")
    return gpt2.run(body), Hand(gpt2, ws, wt)


def close(got, want, what=""):
    torch.testing.assert_close(torch.as_tensor(got).float(), want.float(), atol=ATOL, rtol=0,
                               msg=lambda m: f"{what}: {m}")


def _swap(h: Hand, name, err, pos, feats, src="clean", dst="corrupt"):
    return h.ld(dst, put(name, err, pos, feats, _src(h, src, name, err)[:, pos][..., feats]))


def _atp(h: Hand, name, err, pos, feats, g=None):
    """ld_B + sum over pos x feats of (a_A - a_B) * d ld / d a on B."""
    ld_b, gs = g or h.grads("corrupt")
    a, b = _src(h, "clean", name, err), _src(h, "corrupt", name, err)
    grad = gs[name][1 if err else 0]
    return ld_b + ((a - b)[:, pos][..., feats] * grad[:, pos][..., feats]).flatten(1).sum(1)


def _ig(h: Hand, name, err, pos, feats, steps=2):
    a, b = _src(h, "clean", name, err), _src(h, "corrupt", name, err)
    total = 0
    for j in range(steps):
        alpha = (j + 0.5) / steps
        mid = b[:, pos][..., feats] + alpha * (a - b)[:, pos][..., feats]
        _, gs = h.grads("corrupt", put(name, err, pos, feats, mid))
        total = total + gs[name][1 if err else 0][:, pos][..., feats] / steps
    ld_b = h.ld("corrupt")
    return ld_b + ((a - b)[:, pos][..., feats] * total).flatten(1).sum(1)


def _contrib(h: Hand, name, feats, pos=LAST):
    f, _ = h.base("clean", name)
    w = (h.s if name == "s" else h.t).w["W_dec"]
    return f[:, pos][..., feats] @ w[feats]


def _final(h: Hand) -> torch.Tensor:
    got = {}
    hd = h.fam.model.transformer.ln_f.register_forward_pre_hook(
        lambda m, a: got.__setitem__("r", a[0]))
    with torch.no_grad():
        h.fam.model(h.fam.ids(CLEAN))
    hd.remove()
    return got["r"]


def expected(case: str, h: Hand) -> list[tuple[dict, torch.Tensor]]:
    """(row key, per-example ld) of a case's table, by hand."""
    every = slice(None)
    one_four = [(i, [i]) for i in (1, 4)]
    if case == "swap/sae":
        return [({"feature": i}, _swap(h, "s", False, [LAST], f)) for i, f in one_four]
    if case == "swap/transcoder":
        return [({"feature": i}, _swap(h, "t", False, [LAST], f)) for i, f in one_four]
    if case == "swap/slice":
        return [({}, _swap(h, "s", False, every, slice(2, 9)))]
    if case == "swap/err":
        return [({}, _swap(h, "t", True, [LAST], every))]
    if case == "swap/group":
        edits = {**put("s", False, [LAST], [1], _src(h, "clean", "s", False)[:, [LAST]][..., [1]])}
        t_edit = put("t", True, [LAST], every, _src(h, "clean", "t", True)[:, [LAST]])
        return [({}, h.ld("corrupt", {**edits, **t_edit}))]
    if case == "swap/subspace":
        fa, fb = _src(h, "clean", "s", False), _src(h, "corrupt", "s", False)
        v = fa[:, LAST].mean(0)
        p = torch.outer(v, v) / (v @ v)
        new = fb[:, [LAST]] + (fa - fb)[:, [LAST]] @ p
        return [({}, h.ld("corrupt", put("s", False, [LAST], every, new)))]
    if case == "trace/transcoder":
        return [({}, _swap(h, "t", False, [LAST], slice(2, 9)))]
    if case == "ablate-zero/sae":
        return [({"feature": i}, h.ld("corrupt", put("s", False, [LAST], f, 0.0)))
                for i, f in one_four]
    if case == "ablate-zero/err":
        return [({}, h.ld("corrupt", put("s", True, [2], every, 0.0)))]
    if case == "ablate-mean/transcoder":
        mean = _src(h, "clean", "t", False)[..., 2:9].mean(0, keepdim=True)
        return [({}, h.ld("corrupt", put("t", False, every, slice(2, 9), mean)))]
    if case == "ablate-resample/err":
        return []  # a random other example: _check_resample
    if case == "backpatch/slices":
        return [({}, h.ld("corrupt", put("t", False, [LAST], slice(2, 9),
                                         _src(h, "clean", "s", False)[:, [LAST], 2:9])))]
    if case == "steer/transcoder":
        v = _src(h, "clean", "t", False)[:, LAST].mean(0)
        return [({"scale": k}, h.ld("corrupt", put("t", False, [LAST], every,
                                                   lambda x, k=k: x + k * v)))
                for k in (0.5, 2.0)]
    if case == "steer/err":
        v = _src(h, "clean", "s", True)[:, LAST].mean(0)
        return [({}, h.ld("corrupt", put("s", True, [LAST], every, lambda x: x + v)))]
    if case == "scale/sae":
        return [({"feature": i, "scale": k},
                 h.ld("corrupt", put("s", False, every, f, lambda x, k=k: x * k)))
                for i, f in one_four for k in (0.0, 2.0)]
    if case == "scale/err":
        return [({}, h.ld("corrupt", put("t", True, [LAST], every, lambda x: x * 0.5)))]
    if case == "baked/swap":
        return [({}, _swap(h, "s", False, [LAST], slice(2, 9)))]
    if case == "baked/ablate":
        return [({}, h.ld("corrupt", put("t", False, every, [1, 4], 0.0)))]
    if case == "baked/steer":
        v = _src(h, "clean", "s", True)[:, LAST].mean(0)
        return [({}, h.ld("corrupt", put("s", True, [LAST], every, lambda x: x + 2 * v)))]
    if case == "baked/scale":
        return [({}, h.ld("corrupt", put("t", False, every, slice(2, 9), lambda x: x * 0.5)))]
    if case == "baked/noise":
        noise = torch.randn((len(ROWS), 1, N), generator=torch.Generator().manual_seed(3))
        return [({}, h.ld("corrupt", put("s", False, [2], every, lambda x: x + 0.5 * noise)))]
    if case == "baked/noise-std":
        std = _src(h, "corrupt", "t", True).std()
        noise = torch.randn((len(ROWS), 1, D), generator=torch.Generator().manual_seed(4))
        return [({}, h.ld("corrupt", put("t", True, [2], every,
                                         lambda x: x + 2 * std * noise)))]
    if case == "atp/sae":
        g = h.grads("corrupt")
        return [({"feature": i, "pos": p}, _atp(h, "s", False, [p], f, g))
                for i, f in one_four for p in range(T)]
    if case == "atp/transcoder-slice":
        return [({}, _atp(h, "t", False, [LAST], slice(2, 9)))]
    if case == "atp/err":
        g = h.grads("corrupt")
        return [({"site": "s.err @ last"}, _atp(h, "s", True, [LAST], every, g)),
                ({"site": "t.err @ last"}, _atp(h, "t", True, [LAST], every, g))]
    if case == "ig/sae":
        return [({"feature": i}, _ig(h, "s", False, [LAST], f)) for i, f in one_four]
    if case == "ig/err":
        return [({}, _ig(h, "t", True, [LAST], every))]
    if case == "compare/sae":
        return []  # correlations: _check_compare
    final = _final(h) if case.startswith("dla") else None
    if case == "dla/sae":
        return [({"feature": i}, hand_dla(h.fam, _contrib(h, "s", f), final))
                for i, f in one_four]
    if case == "dla/transcoder-slice":
        return [({}, hand_dla(h.fam, _contrib(h, "t", slice(2, 9)), final))]
    if case == "dla/err":
        return [({"site": n + ".err"}, hand_dla(h.fam, h.base("clean", n)[1][:, LAST], final))
                for n in ("s", "t")]
    if case == "lens/sae":
        return [({"feature": i}, hand_lens(h.fam, _contrib(h, "s", f))) for i, f in one_four]
    if case == "lens/transcoder":
        return [({"feature": i}, hand_lens(h.fam, _contrib(h, "t", f))) for i, f in one_four]
    if case == "lens/err":
        return [({}, hand_lens(h.fam, h.base("clean", "t")[1][:, LAST]))]
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(WORKS))
def test_latent_operation_equals_hand(audit, case):
    res, h = audit
    if case in SPECIAL:
        SPECIAL[case](res, h)
        return
    rows = expected(case, h)
    table = _table(case)
    for key, want in rows:
        close(per_example(res, table, "ld", **key), want, f"{case} {key}")
    assert any((want - h.ld("corrupt")).abs().max() > 1e-4 for _, want in rows) or \
        case.startswith(("dla", "lens")), "every row equals the unpatched run: a weak case"


def test_read_latents_equals_hand(audit):
    res, h = audit
    acts = res.activations("reads")
    f_s, e_s = h.base("clean", "s")
    f_t, _ = h.base("clean", "t")
    close(acts["s[1]"], f_s[..., [1]], "s[1]")
    close(acts["s[4]"], f_s[..., [4]], "s[4]")
    close(acts["t[2:9]"], f_t[:, [LAST], 2:9], "t[2:9]")
    close(acts["s.err"], e_s, "s.err")


def _check_resample(res, h: Hand) -> None:
    """ablate ... with resample(clean): each example's row is the run with the error term of
    another clean example at the last token."""
    got = per_example(res, "ablate_resample_err", "ld")
    e = _src(h, "clean", "s", True)
    for i in range(len(ROWS)):
        options = [h.ld("corrupt", put("s", True, [LAST], slice(None),
                                       e[[j]][:, [LAST]].expand(len(ROWS), 1, D)))[i]
                   for j in range(len(ROWS)) if j != i]
        assert min(abs(float(got[i]) - float(o)) for o in options) < ATOL, i


def _check_compare(res, h: Hand) -> None:
    """compare's correlations over the 12 latents: of the hand atp and the hand swaps."""
    import pandas as pd

    g = h.grads("corrupt")
    atp = [_atp(h, "s", False, [LAST], [i], g).mean().item() for i in range(N)]
    swap = [_swap(h, "s", False, [LAST], [i]).mean().item() for i in range(N)]
    row = res["compare_sae"].iloc[0]
    assert row["n"] == N
    a, b = pd.Series(atp), pd.Series(swap)
    assert abs(row["pearson"] - a.corr(b)) < 1e-3
    assert abs(row["spearman"] - a.rank().corr(b.rank())) < 1e-3


SPECIAL = {"ablate-resample/err": _check_resample, "compare/sae": _check_compare}


def test_relp_with_identity_rules_equals_hand_atp(gpt2: Fam, audit, tmp_path, monkeypatch):
    """relp's backward is autograd with LRP rules; with the rules switched off it must be the
    hand gradient with the error term held, for SAE and transcoder latents and errors."""
    _, h = audit
    save_sae(tmp_path / "s", D, N, bias=-0.1, seed=1)
    save_sae(tmp_path / "t", D, N, "transcoder", d_out=D, bias=-0.1, seed=2)
    monkeypatch.setattr(lrp, "rules_for", lambda adapter, rules: contextlib.nullcontext())
    body = SPEC.replace("SPATH", str(tmp_path / "s")).replace("TPATH", str(tmp_path / "t"))
    res = gpt2.run(body + "attribute t[{1, 4}] @ last, s.err @ last from clean into corrupt "
                   "using relp  measure ld  as relp\n")
    g = h.grads("corrupt")
    for i in (1, 4):
        close(per_example(res, "relp", "ld", site="t[{1, 4}] @ last", feature=i),
              _atp(h, "t", False, [LAST], [i], g), f"t[{i}]")
    close(per_example(res, "relp", "ld", site="s.err @ last"), _atp(h, "s", True, [LAST],
                                                              slice(None), g), "s.err")


@pytest.mark.skipif("evaluate" not in keywords(), reason="no `evaluate` statement")
def test_circuit_of_latent_and_error_nodes(audit):
    """Nodes of both dictionaries and their error terms; the evaluated circuit of the top 5
    is the clean run with every other node at the last token taken from corrupt."""
    res, h = audit
    nodes = list(res["c"]["node"])
    assert len(nodes) == 2 * N + 2
    keep = set(nodes[:5])
    edits = {}
    for name in ("s", "t"):
        f_src, e_src = h.base("corrupt", name)
        out = [i for i in range(N) if f"{name}[{i}] @ last" not in keep]
        err_out = f"{name}.err @ last" not in keep

        def edit(f, e, out=out, err_out=err_out, f_src=f_src, e_src=e_src):
            f[:, LAST, out] = f_src[:, LAST, out]
            if err_out:
                e[:, LAST] = e_src[:, LAST]
            return f, e
        edits[name] = edit
    ev = res["ev"]
    assert abs(ev[ev["nodes"] == 5]["ld"].item() - h.ld("clean", edits).mean().item()) < ATOL


# ---- refused: what has no meaning for a latent -------------------------------------------

REFUSED = {  # case -> (statement, error code, words the message must hold)
    "pattern/sae": ("read s.pattern in clean", "E387", "attention pattern"),
    "pattern/latent": ("read s[3].pattern in clean", "E101", ""),
    "edge-sender/sae": ("swap s[3] -> L2.H1.q from clean into corrupt  measure ld", "E390",
                        "dictionary's latent"),
    "edge-receiver/err": ("swap L0.H1.out -> t.err from clean into corrupt  measure ld",
                          "E390", "dictionary's error term"),
    "attach-to-pattern": ('sae p = "SPATH" at L0.H1.pattern', "E385", "fixed-width"),
    "lens/err-slice": ("lens s.err[0:4] @ last in clean  measure ld", "E361", "error term"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_latent_operation_refused(gpt2: Fam, tmp_path, case):
    stmt, code, words = REFUSED[case]
    save_sae(tmp_path / "s", D, N)
    save_sae(tmp_path / "t", D, N, "transcoder", d_out=D)
    body = (SPEC.replace("SPATH", str(tmp_path / "s")).replace("TPATH", str(tmp_path / "t"))
            + stmt.replace("SPATH", str(tmp_path / "s")) + "\n")
    with pytest.raises(PatchcError) as e:
        patchc.compile(gpt2.spec(body))
    errors = getattr(e.value, "errors", None) or [e.value]
    assert [x.code for x in errors] == [code], [str(x) for x in errors]
    assert words in errors[0].message, errors[0].message
