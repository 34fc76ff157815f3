"""Sparse latent sweeps: latents inactive in both runs at every written position report an
effect of exactly zero without a forward, the active ones run packed into full batches, and
every row equals the naive interpreter's (which runs one forward per latent)."""

from __future__ import annotations

import torch
from conftest import Fam
from ops_common import CLEAN, CORRUPT, HEAD
from sae_helpers import HandSAE, save_sae

import patchc

D, N_LATENTS = 32, 64


def _spec(tmp_path, body: str) -> str:
    return HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n' + body


def _active(fam: Fam, hand: HandSAE, texts: list[str], pos=-1) -> set[int]:
    f = hand.encode(fam.read(texts, "L1.resid_post")["L1.resid_post"])
    return set(torch.nonzero((f[:, pos] != 0).any(0)).flatten().tolist())


def test_sparse_swap_skips_inactive_latents(any_family, tmp_path):
    fam = any_family("gpt2")
    w = save_sae(tmp_path / "s1", D, N_LATENTS, bias=-0.6)
    hand = HandSAE(w)
    active = _active(fam, hand, CLEAN) | _active(fam, hand, CORRUPT)
    assert 0 < len(active) < N_LATENTS // 2, active
    body = _spec(tmp_path, "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n"
                 "measure ld in corrupt  as base\n")
    spec = fam.spec(body)
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok, batch_size=64)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    a, b = opt["feats"].set_index("feature"), naive["feats"].set_index("feature")
    base = float(opt["base"]["ld"].iloc[0])
    assert len(a) == N_LATENTS
    for i in range(N_LATENTS):
        if i in active:
            assert abs(a.loc[i, "ld"] - b.loc[i, "ld"]) < 1e-5
        else:  # exactly the unpatched value, and exactly what the naive forward gives
            assert a.loc[i, "ld"] == base == b.loc[i, "ld"], i
    plan = opt.manifest["plan"]
    assert plan["sparse_skipped"] == N_LATENTS - len(active)
    # batch_size 64 rows = 16 experiments of 4 examples per pass: the plan has 4 passes for
    # the 64 latents; the active ones are packed into as few full passes as they fill.
    assert plan["sparse_passes"] == -(-len(active) // 16) < 4
    per_ex = opt.per_example("feats")
    assert per_ex["ld"].notna().all()


def test_sparse_each_ablate_scale_mean(any_family, tmp_path):
    """@ each (a gate per position), ablate zero, ablate mean(clean), scale: every row as the
    naive interpreter's; a latent active at one position only is skipped at the others."""
    fam = any_family("llama")
    save_sae(tmp_path / "s1", D, 24, "topk", k=2)
    body = _spec(tmp_path, "ablate s1[*] @ each in corrupt  measure ld  as zeroed\n"
                 "ablate s1[0:24] @ last in corrupt with mean(clean)  measure ld  as meaned\n"
                 "scale s1[*] @ last in corrupt by {0.0, 3.0}  measure ld  as scaled\n")
    spec = fam.spec(body)
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    for table, keys in (("zeroed", ["feature", "pos"]), ("meaned", []),
                        ("scaled", ["feature", "scale"])):
        a = opt.per_example(table).sort_values(keys + ["example"])["ld"].to_numpy()
        b = naive.per_example(table).sort_values(keys + ["example"])["ld"].to_numpy()
        assert len(a) == len(b) > 0
        assert abs(a - b).max() < 1e-5, table
    # TopK with k=2 of 24 latents: most (latent, position) pairs are skipped.
    assert opt.manifest["plan"]["sparse_skipped"] > 24 * 6 // 2


def test_plan_reports_gated_experiments(any_family, tmp_path):
    fam = any_family("gpt2")
    save_sae(tmp_path / "s1", D, N_LATENTS)
    from patchc.compiler.dump_plan import emit_plan

    program = patchc.compile(fam.spec(_spec(
        tmp_path, "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n")))
    text = emit_plan(program.checked, program.ir, program.optimized)
    assert f"sparse latent sweeps: {N_LATENTS} experiments" in text


def test_cli_run_reports_skipped(any_family, tmp_path, capsys):
    """`patchc run` prints how many latent experiments cost no forward."""
    from patchc.cli import main

    fam = any_family("gpt2")
    save_sae(tmp_path / "s1", D, N_LATENTS, bias=-0.6)
    spec = tmp_path / "feats.patch"
    spec.write_text(fam.spec(_spec(
        tmp_path, "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n")))
    assert main(["run", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "sparse latent sweeps: " in out and "experiments on inactive latents" in out


def test_sparse_packing_across_chunks_and_positions(any_family, tmp_path):
    """@ each with small batches: the plan cuts each position's sweep into many narrowed
    chunks; the active experiments of a position are packed together (fewer passes than
    planned), and every row equals the naive interpreter's."""
    fam = any_family("neox")
    save_sae(tmp_path / "s1", D, 32, "jumprelu", bias=-0.4)
    spec = fam.spec(_spec(tmp_path, "trace s1[*] @ each from clean into corrupt  measure ld  "
                          "as feats\n"))
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok, batch_size=8)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    keys = ["feature", "pos", "example"]
    a = opt.per_example("feats").sort_values(keys)["ld"].to_numpy()
    b = naive.per_example("feats").sort_values(keys)["ld"].to_numpy()
    assert len(a) == 32 * 6 * 4 and abs(a - b).max() < 1e-5
    plan = opt.manifest["plan"]
    assert 0 < plan["sparse_skipped"] < 32 * 6
    assert plan["sparse_passes"] < 32 * 6 // 2  # the plan had one pass per 2 experiments


def test_sparse_compare(any_family, tmp_path):
    """compare's exact swaps on latents are sparse too: the same correlations as the naive
    interpreter's, with the inactive latents' swaps skipped."""
    fam = any_family("gpt2")
    save_sae(tmp_path / "s1", D, N_LATENTS, bias=-0.6)
    spec = fam.spec(_spec(tmp_path, "compare atp, ig(steps=2) against swap on s1[*] @ last "
                          "from clean into corrupt  measure ld  as cmp\n"))
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    a, b = opt["cmp"], naive["cmp"]
    assert abs(a["pearson"] - b["pearson"]).max() < 1e-5
    assert list(a["spearman"]) == list(b["spearman"])
    assert opt.manifest["plan"]["sparse_skipped"] > N_LATENTS // 2


def test_sparse_ragged_prompts(any_family, tmp_path):
    """Prompts of different lengths (left padding): an `@ each` position a short prompt lacks
    is NaN for it whether the experiment ran or was skipped, as in the naive interpreter."""
    fam = any_family("gpt2")
    save_sae(tmp_path / "s1", D, 16, "topk", k=2)
    body = (f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
            'run r = ["the cat sat on the mat", "a dog", "Mary gave the ball"]\n'
            'ablate s1[*] @ each in r  measure logit("mat")  as z\n')
    spec = fam.spec(body)
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    keys = ["feature", "pos", "example"]
    a = opt.per_example("z").sort_values(keys)
    b = naive.per_example("z").sort_values(keys)
    col = [c for c in a.columns if c.startswith("logit")][0]
    assert a[col].isna().tolist() == b[col].isna().tolist() and a[col].isna().any()
    assert (a[col] - b[col]).abs().max() < 1e-5
    assert opt.manifest["plan"]["sparse_skipped"] > 0


def test_ig_skips_latents_inactive_in_both_runs(any_family, tmp_path, monkeypatch):
    """ig on latents: a latent zero in both runs at its positions has a constant path, so
    its estimate is exactly m_B without any pass; the ig passes run for the active latents
    only, and every value equals the dense computation (ig run for every latent)."""
    from patchc.runtime import estimates

    fam = any_family("gpt2")
    w = save_sae(tmp_path / "s1", D, N_LATENTS, bias=-0.6)
    hand = HandSAE(w)
    active = _active(fam, hand, CLEAN) | _active(fam, hand, CORRUPT)
    assert 0 < len(active) < N_LATENTS // 2
    spec = fam.spec(_spec(tmp_path, "attribute s1[*] @ last from clean into corrupt using "
                          "ig(steps=3)  measure ld  as ig\nmeasure ld in corrupt  as base\n"))
    calls = []
    dense_ig = estimates._integrated_gradients

    def counted(interp, ir, bid, pairs, steps):
        calls.append(ir.node(pairs[0][1]).site.features[0])
        return dense_ig(interp, ir, bid, pairs, steps)

    monkeypatch.setattr(estimates, "_integrated_gradients", counted)
    sparse = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    assert sorted(calls) == sorted(active)  # the cost follows the active count
    monkeypatch.setattr(estimates, "zero_path_gradients", lambda *a: None)
    dense = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    assert len(calls) == len(active) + N_LATENTS
    keys = ["feature", "example"]
    a = sparse.per_example("ig").sort_values(keys)
    b = dense.per_example("ig").sort_values(keys)
    assert len(a) == N_LATENTS * len(CLEAN)
    assert (a["ld"].to_numpy() == b["ld"].to_numpy()).all()
    base = sparse.per_example("base").sort_values("example")["ld"].to_numpy()
    for i in set(range(N_LATENTS)) - active:
        assert (a[a["feature"] == i]["ld"].to_numpy() == base).all(), i
