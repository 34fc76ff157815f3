"""dead_positions with gradient-only reads: attribution passes compute the last block's MLP at
the metric's positions only, and every estimate stays the full computation's.

Each case runs a spec twice, narrowed (the pipeline as it is) and un-narrowed (the pass told
that no read is gradient-only), and against an independent computation: plain torch hooks on
the HF modules (conftest.Fam), a zero added at each site, torch.autograd for the gradient.
The three families cover GPT-2 (GELU MLP), Llama (gated MLP, grouped-query attention) and
NeoX (parallel residual).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import LAYERS, Fam
from ops_common import CLEAN, CORRUPT, HEAD, T, ld_of
from test_gradients import _hand_rules

import patchc
from patchc import compile_cache
from patchc.compiler.passes import dead_positions as dp

FAMILIES = ["gpt2", "llama", "neox"]
TOP = LAYERS - 1
KINDS = ["mlp.out", "resid_post"]
SITES = (f"L*.mlp.out @ each, L*.resid_post @ each, L{TOP}.ln2.scale @ each, "
         f"L{TOP}.mlp.in @ each")
IG_SITES = f"L{TOP}.mlp.out @ each, L{TOP}.resid_post @ each"
SPEC = HEAD + (
    f"attribute {SITES} from clean into corrupt using atp measure ld as atp\n"
    f"attribute {SITES} from clean into corrupt using relp measure ld as relp\n"
    f"attribute {IG_SITES} from clean into corrupt using ig(steps=2) measure ld as ig\n")
ATP = HEAD + f"attribute {SITES} from clean into corrupt using atp measure ld as atp\n"
# the MLP's first projection: the rows it sees are the positions the MLP computes
FIRST = {"gpt2": "transformer.h.{}.mlp.c_fc", "llama": "model.layers.{}.mlp.up_proj",
         "neox": "gpt_neox.layers.{}.mlp.dense_h_to_4h"}
ATOL = 1e-6


@contextlib.contextmanager
def top_mlp_widths(fam: Fam):
    """The position counts the last block's MLP computes at, one per model call."""
    seen: list[int] = []
    mod = fam.model.get_submodule(FIRST[fam.name].format(TOP))
    handle = mod.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        yield seen
    finally:
        handle.remove()


def unnarrowed(fam: Fam, spec: str, monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(dp, "gradient_only", lambda *_a: False)
        compile_cache.clear()  # (else a run of the spec before hands back its graphs)
        try:
            return fam.run(spec, naive=False).tables
        finally:
            compile_cache.clear()


def same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            if x[col].dtype.kind == "f":
                assert torch.allclose(torch.tensor(x[col].to_numpy()),
                                      torch.tensor(y[col].to_numpy()), atol=ATOL, rtol=0,
                                      equal_nan=True), (name, col)
            else:
                assert (x[col] == y[col]).all(), (name, col)


def estimates(res, table: str, kind: str, layer: int) -> torch.Tensor:
    """[T, examples] of one site kind and layer."""
    df = res.per_example(table)
    at = df["layer"] == layer if "layer" in df else df["site"].str.startswith(f"L{layer}.")
    df = df[df["site"].str.contains(kind, regex=False) & at]
    df = df.sort_values(["pos", "example"])
    assert len(df) == T * len(CLEAN), (table, kind, layer)
    return torch.tensor(df["ld"].to_numpy(), dtype=torch.float32).view(T, len(CLEAN))


def hand_gradients(fam: Fam, sites: list[str], relp: bool = False,
                   replace: dict | None = None) -> tuple[torch.Tensor, dict]:
    """ld on the corrupt run and d ld / d site ([N, T, D] each), a zero added at each site
    after `replace[site]` edits it."""
    d = fam.model.config.hidden_size
    zeros = {s: torch.zeros(len(CORRUPT), T, d, requires_grad=True) for s in sites}
    edits = {s: (lambda x, s=s: (replace[s](x) if replace and s in replace else x) + zeros[s])
             for s in sites}
    with torch.enable_grad(), _hand_rules(fam) if relp else contextlib.nullcontext(), \
            fam.hooked(edits):
        ld = ld_of(fam, fam.model(fam.ids(CORRUPT)).logits.float())
        ld.sum().backward()
    return ld.detach(), {s: z.grad for s, z in zeros.items()}


def hand_atp(fam: Fam, relp: bool) -> dict[str, torch.Tensor]:
    """m_B + sum_d (a_A - a_B) * g at each position: [T, examples] per site."""
    sites = [f"L{layer}.{k}" for k in KINDS for layer in range(LAYERS)]
    m_b, grads = hand_gradients(fam, sites, relp)
    a, b = fam.read(CLEAN, *sites), fam.read(CORRUPT, *sites)
    return {s: (m_b[:, None] + ((a[s] - b[s]) * grads[s]).sum(-1)).T for s in sites}


def hand_ig(fam: Fam, site: str, steps: int = 2) -> torch.Tensor:
    """Integrated gradients of each position on its own: the site at that position moved
    along a_B -> a_A, the gradient there averaged over the midpoints."""
    a, b = fam.read(CLEAN, site)[site], fam.read(CORRUPT, site)[site]
    out = torch.empty(T, len(CLEAN))
    for p in range(T):
        total = torch.zeros(len(CLEAN), b.shape[-1])
        for j in range(steps):
            alpha = (j + 0.5) / steps

            def move(x: torch.Tensor, p=p, alpha=alpha) -> torch.Tensor:
                x = x.clone()
                x[:, p] = b[:, p] + alpha * (a[:, p] - b[:, p])
                return x
            _, grads = hand_gradients(fam, [site], replace={site: move})
            total += grads[site][:, p] / steps
        m_b = ld_of(fam, fam.forward(fam.ids(CORRUPT))[0])
        out[p] = m_b + ((a[:, p] - b[:, p]) * total).sum(-1)
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_attribution_passes_narrow_the_last_mlp(any_family, monkeypatch, name: str) -> None:
    fam: Fam = any_family(name)
    with top_mlp_widths(fam) as seen:
        narrowed = fam.run(ATP, naive=False)
    # the clean pass and the corrupt run's forward+backward: one position each (`@ last`)
    assert seen == [1, 1]
    with top_mlp_widths(fam) as seen:
        full = unnarrowed(fam, ATP, monkeypatch)
    assert seen == [T, T]
    same_tables(narrowed.tables, full)


@pytest.mark.parametrize("name", FAMILIES)
def test_estimates_equal_the_full_computation_and_hand_gradients(any_family, monkeypatch,
                                                                name: str) -> None:
    fam: Fam = any_family(name)
    res = fam.run(SPEC, naive=False)
    same_tables(res.tables, unnarrowed(fam, SPEC, monkeypatch))
    same_tables(res.tables, fam.run(SPEC, naive=True).tables)
    for method in ("atp", "relp") if name != "neox" else ("atp",):  # (hand rules: 2 families)
        want = hand_atp(fam, relp=method == "relp")
        # (the hand RelP recomputes the MLP through its own rules: rounding of ~2e-6)
        tol = ATOL if method == "atp" else 10 * ATOL
        for k in KINDS:
            for layer in range(LAYERS):
                got = estimates(res, method, k, layer)
                assert torch.allclose(got, want[f"L{layer}.{k}"], atol=tol, rtol=ATOL), \
                    (method, k, layer, (got - want[f"L{layer}.{k}"]).abs().max())
    for k in KINDS:
        got, want = estimates(res, "ig", k, TOP), hand_ig(fam, f"L{TOP}.{k}")
        assert torch.allclose(got, want, atol=ATOL, rtol=ATOL), (k, (got - want).abs().max())
    # Before the last position the top block's MLP side reaches no metric: exactly m_B.
    m_b = ld_of(fam, fam.forward(fam.ids(CORRUPT))[0])
    for method in ("atp", "relp", "ig"):
        for k in KINDS:
            dead = estimates(res, method, k, TOP)[:-1]
            assert torch.equal(dead, dead[:1].expand_as(dead)), (method, k)
            assert torch.allclose(dead[0], m_b, atol=ATOL), (method, k)


def test_a_read_of_the_same_site_keeps_every_position(any_family, monkeypatch) -> None:
    fam: Fam = any_family("gpt2")
    spec = ATP + f"read L{TOP}.mlp.out in corrupt as r\n"
    with top_mlp_widths(fam) as seen:
        res = fam.run(spec, naive=False)
    assert seen == [1, T]  # the clean pass narrows; the read's run computes every position
    got = res.activations("r")[f"L{TOP}.mlp.out"]
    want = fam.read(CORRUPT, f"L{TOP}.mlp.out")[f"L{TOP}.mlp.out"]
    assert got.shape == want.shape and torch.allclose(got, want, atol=ATOL)
    same_tables({"atp": res.tables["atp"]}, {"atp": unnarrowed(fam, spec, monkeypatch)["atp"]})


def test_hooks_on_the_narrowed_mlp_see_every_position() -> None:
    """live_positions widens the MLP's output before the hooks entered ahead of it (a read
    or gradient leaf of `mlp.out`): they see [B, T, d], zero at the dead positions."""
    from patchc.runtime.prefix import live_positions

    torch.manual_seed(0)
    mlp = torch.nn.Linear(4, 4)
    x = torch.randn(2, 5, 4)
    index = torch.tensor([[4], [2]])
    seen: list[torch.Tensor] = []
    handle = mlp.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    try:
        with live_positions(mlp, index):
            out = mlp(x)
    finally:
        handle.remove()
    assert seen[0].shape == (2, 5, 4) and torch.equal(seen[0], out)
    rows = torch.arange(2)
    assert torch.allclose(out[rows, index[:, 0]], mlp(x)[rows, index[:, 0]], atol=0)
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[rows, index[:, 0]] = True
    assert (out[~keep] == 0).all()


def test_a_source_run_of_other_token_lengths_stays_whole(any_family) -> None:
    """The source run narrows because its metric positions are the differentiated run's
    (equal token lengths, E322); where `check` could not see the tokens, the runtime keeps a
    source run of other lengths whole."""
    from patchc.compiler.ir import Forward
    from patchc.runtime.pass_plan import unaligned_sources

    fam: Fam = any_family("gpt2")
    ir = patchc.compile(fam.spec(ATP)).optimized

    def live(graph) -> dict:
        return {f.run: f.live_from for _, f in graph.of_type(Forward)}

    assert live(ir) == {"clean": 0, "corrupt": 0}  # every read is gradient-only
    equal = {"clean": (T,) * 4, "corrupt": (T,) * 4}
    assert unaligned_sources(ir, equal) is ir
    ragged = {"clean": (T, T, T, T - 1), "corrupt": (T,) * 4}
    assert live(unaligned_sources(ir, ragged)) == {"clean": None, "corrupt": 0}
