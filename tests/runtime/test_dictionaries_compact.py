"""Compact latent sweeps: a swap/ablate/scale over every latent of a dictionary is ONE sweep
Forward per (statement, dictionary) with its index set, not one Forward per latent; the run
skips the members whose latents are zero in both runs at every written position (their rows
are the target's base values, exactly) and packs the rest into full passes. Every member is
checked against the naive interpreter (one forward per member) and against plain torch hooks
written here (sae_helpers.HandSAE's encode/decode), on GPT-2, Llama (GQA) and NeoX tiny
models, with SAEs and a transcoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import Fam
from ops_common import ATOL, CLEAN, CORRUPT, HEAD, T, ld_of, per_example
from sae_helpers import HandSAE, save_sae

import patchc
from patchc.compiler.ir import Forward

D, N = 32, 24
_BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers", "neox": "gpt_neox.layers"}


def _mlp(fam: Fam, layer: int) -> torch.nn.Module:
    root = fam.model
    for part in _BLOCKS[fam.name].split("."):
        root = getattr(root, part)
    return root[layer].mlp


class Hand:
    """The dictionary by plain hooks: its latents of a run, and the corrupt run's ld with the
    latents edited (the site becomes y + decode(f') - decode(f))."""

    def __init__(self, fam: Fam, hand: HandSAE, kind: str, site: str) -> None:
        self.fam, self.hand, self.kind, self.site = fam, hand, kind, site

    def latents(self, texts: list[str]) -> torch.Tensor:
        if self.kind == "sae":
            return self.hand.encode(self.fam.read(texts, self.site)[self.site])
        seen = {}
        h = _mlp(self.fam, 1).register_forward_hook(lambda m, a, y: seen.update(x=a[0]))
        try:
            with torch.no_grad():
                self.fam.model(self.fam.ids(texts))
        finally:
            h.remove()
        return self.hand.encode(seen["x"])

    def ld(self, edit) -> torch.Tensor:
        hand = self.hand
        if self.kind == "sae":
            def fn(y: torch.Tensor) -> torch.Tensor:
                f = hand.encode(y)
                return y + (hand.decode(edit(f.clone())) - hand.decode(f))
            return ld_of(self.fam, self.fam.forward(self.fam.ids(CORRUPT), {self.site: fn})[0])
        seen = {}
        mlp = _mlp(self.fam, 1)

        def post(mod, args, y):
            f = hand.encode(args[0])
            return y + (hand.decode(edit(f.clone()), args[0]) - hand.decode(f, args[0]))

        h = mlp.register_forward_hook(post)
        try:
            with torch.no_grad():
                logits = self.fam.model(self.fam.ids(CORRUPT)).logits.float()
        finally:
            h.remove()
        del seen
        return ld_of(self.fam, logits)


CASES = [("gpt2", "sae", "L1.resid_post", "standard"), ("llama", "sae", "L0.mlp.out", "topk"),
         ("neox", "sae", "L1.attn.z", "jumprelu"), ("llama", "transcoder", "L1.mlp",
                                                    "transcoder")]


@pytest.mark.parametrize("family,kind,site,arch", CASES)
def test_compact_latent_sweeps_equal_naive_and_hand(any_family, tmp_path, family, kind, site,
                                                    arch):
    fam = any_family(family)
    w = save_sae(tmp_path / "s1", D, N, arch, k=3, d_out=D, bias=-0.5)
    hand = Hand(fam, HandSAE(w, arch, k=3), kind, site)
    body = (HEAD + f'{kind} s1 = "{tmp_path / "s1"}" at {site}\n'
            "swap s1[*] @ each from clean into corrupt  measure ld  as swapped\n"
            "ablate s1[*] @ last in corrupt  measure ld  as zeroed\n"
            "scale s1[*] @ last in corrupt by {0.5, 3.0}  measure ld  as scaled\n"
            "measure ld in corrupt  as base\n")
    spec = fam.spec(body)
    # One gated sweep Forward per statement, whatever the number of latents.
    ir = patchc.compile(spec).ir
    sweeps = [f for _, f in ir.of_type(Forward) if f.sweep is not None]
    assert len(sweeps) == 3 and all(f.sparse and f.same_as for f in sweeps)
    assert ir.count(Forward) == 5  # clean, corrupt, three sweeps
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    for table, keys in (("swapped", ["feature", "pos"]), ("zeroed", ["feature"]),
                        ("scaled", ["feature", "scale"])):
        a = opt.per_example(table).sort_values(keys + ["example"])["ld"].to_numpy()
        b = naive.per_example(table).sort_values(keys + ["example"])["ld"].to_numpy()
        assert len(a) == len(b) > 0 and abs(a - b).max() < ATOL, table

    f_clean, f_corrupt = hand.latents(CLEAN), hand.latents(CORRUPT)
    base = per_example(opt, "base", "ld")
    inactive = 0
    for i in range(N):
        for t in range(T):
            def swap(f, i=i, t=t):
                f[:, t, i] = f_clean[:, t, i]
                return f
            got = per_example(opt, "swapped", "ld", feature=i, pos=t)
            torch.testing.assert_close(got, hand.ld(swap), atol=ATOL, rtol=0)
            if not (f_clean[:, t, i].any() or f_corrupt[:, t, i].any()):
                inactive += 1
                assert torch.equal(got, base), (i, t)  # skipped: exactly the base run
        got = per_example(opt, "zeroed", "ld", feature=i)

        def zero(f, i=i):
            f[:, -1, i] = 0
            return f
        torch.testing.assert_close(got, hand.ld(zero), atol=ATOL, rtol=0)
        for s in (0.5, 3.0):
            def scale(f, i=i, s=s):
                f[:, -1, i] = f[:, -1, i] * s
                return f
            torch.testing.assert_close(per_example(opt, "scaled", "ld", feature=i, scale=s),
                                       hand.ld(scale), atol=ATOL, rtol=0)
    assert 0 < inactive < N * T
    last_off = int((~(f_corrupt[:, -1] != 0).any(0)).sum())  # ablate/scale: target only
    plan = opt.manifest["plan"]
    assert plan["sparse_skipped"] == inactive + 3 * last_off
    assert plan["passes"] == 2 + plan["sparse_passes"]


def test_packed_passes_and_plan_text(any_family, tmp_path):
    """Small batches: the plan cuts the sweep into many chunks; the run packs the active
    members into as few full passes as they fill, and the plan text still says how many
    experiments may be skipped."""
    fam = any_family("gpt2")
    w = save_sae(tmp_path / "s1", D, 64, bias=-0.6)
    spec = fam.spec(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                    "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n")
    from patchc.compiler.dump_plan import emit_plan

    program = patchc.compile(spec)
    text = emit_plan(program.checked, program.ir, program.optimized)
    assert "sparse latent sweeps: 64 experiments run only where a latent they write is " \
        "active (at most 1 passes above" in text
    res = patchc.run(spec, model=fam.model, tokenizer=fam.tok, batch_size=64)
    hand = HandSAE(w)
    f = [hand.encode(fam.read(x, "L1.resid_post")["L1.resid_post"])[:, -1] for x in
         (CLEAN, CORRUPT)]
    active = int(((f[0] != 0) | (f[1] != 0)).any(0).sum())
    plan = res.manifest["plan"]
    # 64 rows a pass = 16 members of 4 examples: 4 planned passes for 64 latents
    assert plan["sparse_skipped"] == 64 - active
    assert plan["sparse_passes"] == -(-active // 16) < 4


def test_sixteen_thousand_latents_plan_in_well_under_a_second(tmp_path):
    """Checking and planning a 16,384-latent sweep builds a handful of nodes (cfg.json only:
    no weights are read), not one Forward per latent."""
    import json
    import time

    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    folder = tmp_path / "s16k"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": 128, "d_sae": 16384, "k": 32, "dtype": "float32",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
    (folder / "sae_weights.safetensors").write_bytes(b"")  # present; `check` never reads it
    spec = (f'model "{root / "examples/models/ioi-gpt2"}"\n'
            f'data ioi = "{root / "examples/data/ioi.jsonl"}"\n'
            "run clean = ioi.clean\nrun corrupt = ioi.corrupt\n"
            "metric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
            f'sae s = "{folder}" at L1.resid_post\n'
            "swap s[*] @ last from clean into corrupt  measure ld  as feats\n")
    from patchc.compiler.dump import dump_ir
    from patchc.compiler.dump_plan import emit_plan

    t0 = time.perf_counter()
    program = patchc.compile(spec)
    text = emit_plan(program.checked, program.ir, program.optimized)
    seconds = time.perf_counter() - t0
    assert program.ir.count(Forward) == 3 and program.optimized.count(Forward) <= 3
    assert "sweep 16384 x replace s [0..16383] @ last" in dump_ir(program.ir)
    assert "sparse latent sweeps: 16384 experiments" in text
    assert seconds < 5  # about 0.1 s alone; generous for a shared machine


@pytest.mark.parametrize("arch,opts", [
    ("standard", {}), ("topk", {"k": 3, "rescale": True}),
    ("jumprelu", {"norm": "layer_norm", "apply_b_dec": False}),
    ("standard", {"norm": "constant_norm_rescale"}), ("skip_transcoder", {})])
def test_decode_change_is_the_change_of_the_reconstruction(tmp_path, arch, opts):
    """What an attached dictionary adds for a latent write, decode(f') - decode(f), computed
    from the changed latents only: equal to the two decodes by hand, exactly 0 for f' = f."""
    from patchc.compiler.dictionaries import DictInfo
    from patchc.compiler.ir import Site
    from patchc.runtime.dictionaries import Dictionary

    transcoder = "transcoder" in arch
    w = save_sae(tmp_path / "s", D, N, arch, d_out=D, k=opts.get("k", 4),
                 apply_b_dec=opts.get("apply_b_dec", True), norm=opts.get("norm", "none"),
                 rescale=opts.get("rescale", False))
    info = DictInfo("s", "transcoder" if transcoder else "sae", str(tmp_path / "s"),
                    "sae_weights.safetensors", arch, D, N, D, Site("resid_post", 1),
                    opts.get("apply_b_dec", True) and not transcoder, opts.get("norm", "none"),
                    opts.get("k", 0), opts.get("rescale", False))
    d = Dictionary.load(info)
    hand = HandSAE(w, arch, **opts)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(2))
    f, norm = d.encode(x)
    hand.encode(x)  # (the hand SAE keeps its normalization state for decode)
    new = f.clone()
    new[0, 4, 3] = 2.5
    new[2, 1, 7] = 0.0
    new[1, :, 11] *= 3
    want = hand.decode(new, x) - hand.decode(f, x)
    torch.testing.assert_close(d.decode_change(new, f, norm), want, atol=1e-5, rtol=0)
    assert torch.equal(d.decode_change(f.clone(), f, norm), torch.zeros(3, 5, D))


def test_sweep_pass_encodes_one_block(any_family, tmp_path, monkeypatch):
    """A compact sweep's pass stacks copies of the run: the dictionary encodes one copy (its
    rows are checked equal first), and the rows still equal the naive interpreter's."""
    from patchc.runtime.dictionaries import Dictionary

    fam = any_family("llama")
    save_sae(tmp_path / "s1", D, N, "topk", k=3)
    spec = fam.spec(HEAD + f'sae s1 = "{tmp_path / "s1"}" at L1.resid_post\n'
                    "ablate s1[*] @ last in corrupt  measure ld  as zeroed\n")
    rows = []
    encode = Dictionary.encode

    def seen(self, x):
        rows.append(x.shape[0])
        return encode(self, x)

    monkeypatch.setattr(Dictionary, "encode", seen)
    opt = patchc.run(spec, model=fam.model, tokenizer=fam.tok)
    assert opt.manifest["plan"]["sparse_passes"] >= 1
    assert set(rows) == {len(CORRUPT)}  # base passes and the sweep's pass: one block each
    naive = patchc.run(spec, model=fam.model, tokenizer=fam.tok, naive=True)
    a = opt.per_example("zeroed").sort_values(["feature", "example"])["ld"].to_numpy()
    b = naive.per_example("zeroed").sort_values(["feature", "example"])["ld"].to_numpy()
    assert abs(a - b).max() < ATOL


def test_the_memory_plan_counts_an_attached_dictionarys_latents(tmp_path):
    """A pass that attaches a dictionary holds its latents at every computed position: the
    planned bytes of a latent sweep's passes grow with d_sae (4 float32 copies per latent and
    position: pre-activations, latents, written copy, comparison), and a budget then cuts the
    sweep into more chunks. Forwards that touch no dictionary site count none."""
    import json

    from pathlib import Path

    from patchc.compiler import costs as C
    from patchc.compiler.schedule import run_shapes, schedule

    root = Path(__file__).resolve().parents[2]

    def program(d_sae: int, memory: str = ""):
        folder = tmp_path / f"s{d_sae}"
        folder.mkdir(exist_ok=True)
        (folder / "cfg.json").write_text(json.dumps({
            "architecture": "standard", "d_in": 128, "d_sae": d_sae, "dtype": "float32",
            "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
        (folder / "sae_weights.safetensors").write_bytes(b"")
        spec = (f'model "{root / "examples/models/ioi-gpt2"}"\n'
                + (f'set memory = "{memory}"\n' if memory else "")
                + f'data ioi = "{root / "examples/data/ioi.jsonl"}"\n'
                "run clean = ioi.clean\nrun corrupt = ioi.corrupt\n"
                "metric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
                f'sae s = "{folder}" at L1.resid_post\n'
                "swap s[*] @ last from clean into corrupt  measure ld  as feats\n"
                "swap L0.mlp.out from clean into corrupt  measure ld  as plain\n")
        p = patchc.compile(spec)
        return p, schedule(p.optimized, p.checked.model, run_shapes(p.checked),
                           C.parse_bytes(memory) if memory else None)

    def latent_sweep(p) -> str:
        return next(fid for fid, f in p.optimized.of_type(Forward)
                    if f.sweep is not None and f.sweep.space.sites[0].kind.startswith("dict:"))
    big, _ = program(16384)
    sizes = C.GraphSizes(big.optimized, big.checked.model, run_shapes(big.checked), 4, False)
    sweep = latent_sweep(big)
    assert sizes.latents(sweep) == 16384
    plain = [fid for fid, f in big.optimized.of_type(Forward)
             if (f.sweep is not None and f.sweep.space.sites[0].kind == "mlp.out")
             or any(big.optimized.node(w).site.kind == "mlp.out" for w in f.writes)]
    assert plain and all(sizes.latents(fid) == 0 for fid in plain)

    shape = sizes.shape([sweep], 0)
    extra = C.forward_bytes(big.checked.model, shape, 4) - C.forward_bytes(
        big.checked.model, dataclasses.replace(shape, latents=1024), 4)
    assert extra >= 4 * shape.rows * (shape.width - shape.p0) * (16384 - 1024) * 4
    # under a budget, each chunk's latents are counted and the chunks still fit
    p_tight, tight = program(16384, "150MB")
    chunks = [s for s in tight.forward_steps() if s.members == [latent_sweep(p_tight)]]
    assert len(chunks) > 1 and not tight.over_budget
    for step in chunks:
        latent_bytes = 4 * step.rows * (step.width - step.p0) * 16384 * 4
        assert latent_bytes <= step.bytes <= 150_000_000
    assert sum(hi - lo for lo, hi in (s.sweep for s in chunks)) == 16384
