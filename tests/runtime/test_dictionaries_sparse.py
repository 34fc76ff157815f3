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
