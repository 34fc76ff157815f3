"""benchmarks/sparse_latents.py's pieces: the 16,384-latent SAE it makes is a folder patchc
loads, and its dense hook loop gives what patchc's latent swap gives, latent by latent (the
benchmark itself compares them over a whole sweep)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import patchc

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sparse_latents.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("sparse_latents_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_dense_loop_equals_patchc_on_some_latents(tmp_path):
    bench = load_bench()
    model = AutoModelForCausalLM.from_pretrained(bench.MODEL, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(bench.MODEL)
    w = bench.make_sae(tmp_path / "sae", model, tok, k=32)
    dense = bench.DenseLoop(model, tok, w, 32)
    active = sorted(dense.active())
    inactive = next(i for i in range(bench.D_SAE) if i not in active)
    chosen = [active[0], active[len(active) // 2], active[-1], inactive]
    text = bench.spec(tmp_path / "sae").replace(
        "s[*]", "s[{" + ", ".join(map(str, chosen)) + "}]")
    res = patchc.run(text, model=model, tokenizer=tok)
    table = res["feats"].set_index("feature")["ld"]
    by_hand = dense(chosen)
    for i in chosen:
        assert abs(table[i] - by_hand[i]) < 1e-4
    assert res.manifest["plan"]["sparse_skipped"] == 1  # the inactive latent: no forward
    assert len(active) < 32 * 32  # at most k latents per token fire
