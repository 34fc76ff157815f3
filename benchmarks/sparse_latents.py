"""A 16,384-latent sweep on the bundled IOI model: what skipping inactive latents saves.

    OMP_NUM_THREADS=1 python benchmarks/sparse_latents.py [--repeats 3] [--k 32]

The dictionary is made here, deterministically, in SAELens' folder layout (a temporary
folder): a TopK SAE (k latents per token) at `L1.resid_post` of examples/models/ioi-gpt2
whose 16,384 decoder rows are seeded random unit vectors, its encoder their transpose and its
decoder bias the mean activation of the model's own text. It is not a trained dictionary (that
would take long on a CPU and is not what is measured): the cost of a latent sweep depends only
on which latents fire, and here, as in a trained TopK SAE, k of them fire per token.

    sae s = "<folder>" at L1.resid_post
    swap s[*] @ last from clean into corrupt  measure ld  as feats      (data/ioi.jsonl, 16 rows)

Contenders, taking turns within each round after a warm-up round (min, median, max reported):
- patchc     patchc.run of the spec (loaded model): latents inactive in both runs at the last
             token of every example are 0 without a forward; the rest are batched
- dense loop hand-written hooks: one forward of the 16 corrupt prompts per latent, 16,384
             forwards (what a latent sweep costs without the sparsity)

It checks that both give the same values (the sampled latents' ld, to 1e-4; every inactive
latent's per-example values are exactly the corrupt run's own, by hand), that patchc skipped
exactly the inactive latents and ran the clean and corrupt passes plus its sparse passes
only, and prints the figures for docs/performance.md, with patchc's planning time (lowering,
passes, schedule: the sweep is one Forward with its index set) apart from its model time.
The dense loop runs `--dense-sample` evenly spaced latents per round and its time is scaled
to all 16,384 (each of its forwards is the same computation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "ioi-gpt2"
DATA = ROOT / "examples" / "data" / "ioi.jsonl"
D_SAE, LAYER = 16384, 1


def make_sae(folder: Path, model, tok, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The benchmark's TopK SAE (see the module docstring), written in SAELens' layout."""
    sys.path.insert(0, str(ROOT / "examples"))
    import make_data

    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, model.config.n_embd, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        y = output[0] if isinstance(output, tuple) else output
        seen.append(y.reshape(-1, y.shape[-1]))

    handle = model.transformer.h[LAYER].register_forward_hook(keep)
    try:
        with torch.no_grad():
            for text in make_data.lm_corpus(200, seed=99):
                model(**tok(text, return_tensors="pt", add_special_tokens=False))
    finally:
        handle.remove()
    w = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(D_SAE), "W_dec": w_dec.contiguous(),
         "b_dec": torch.cat(seen).mean(0)}
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "topk", "d_in": model.config.n_embd, "d_sae": D_SAE, "k": k,
           "rescale_acts_by_decoder_norm": False, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.0.0", "model_name": "ioi-gpt2",
                        "hook_name": f"blocks.{LAYER}.hook_resid_post"}}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    save_file(w, str(folder / "sae_weights.safetensors"))
    return w


def encode(w: dict[str, torch.Tensor], k: int, x: torch.Tensor) -> torch.Tensor:
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


class DenseLoop:
    """The latent sweep by hand: cache both runs' last-token latents, then one forward of the
    corrupt prompts per latent, adding (f_clean[i] - f_corrupt[i]) * W_dec[i] to the block's
    output at the last token."""

    def __init__(self, model, tok, w: dict[str, torch.Tensor], k: int) -> None:
        rows = [json.loads(line) for line in DATA.read_text().splitlines()]
        self.model, self.w, self.k = model, w, k
        self.clean = tok([r["clean"] for r in rows], return_tensors="pt")["input_ids"]
        self.corrupt = tok([r["corrupt"] for r in rows], return_tensors="pt")["input_ids"]
        self.answer = torch.tensor([tok.convert_tokens_to_ids(r["answer"].strip()) for r in rows])
        self.distractor = torch.tensor([tok.convert_tokens_to_ids(r["distractor"].strip())
                                        for r in rows])
        self.block = model.transformer.h[LAYER]

    def latents(self, ids: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = self.block.register_forward_hook(lambda m, a, o: seen.append(
            (o[0] if isinstance(o, tuple) else o)[:, -1]))
        try:
            self.model(input_ids=ids)
        finally:
            handle.remove()
        return encode(self.w, self.k, seen[0])

    def ld_each(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        rows = torch.arange(len(last))
        return last[rows, self.answer] - last[rows, self.distractor]

    def ld(self, logits: torch.Tensor) -> float:
        return self.ld_each(logits).mean().item()

    @torch.no_grad()
    def __call__(self, latents: range | list[int] | None = None) -> dict[int, float]:
        f_clean, f_corrupt = self.latents(self.clean), self.latents(self.corrupt)
        out: dict[int, float] = {}
        delta = None

        def hook(m, args, output):
            y = output[0] if isinstance(output, tuple) else output
            y = y.clone()
            y[:, -1] += delta
            return (y, *output[1:]) if isinstance(output, tuple) else y

        handle = self.block.register_forward_hook(hook)
        try:
            for i in latents if latents is not None else range(D_SAE):
                delta = (f_clean[:, i] - f_corrupt[:, i])[:, None] * self.w["W_dec"][i]
                out[i] = self.ld(self.model(input_ids=self.corrupt).logits)
        finally:
            handle.remove()
        return out

    def active(self) -> set[int]:
        """Latents active at the last token of some example in either run."""
        with torch.no_grad():
            both = (self.latents(self.clean) > 0) | (self.latents(self.corrupt) > 0)
        return set(torch.nonzero(both.any(0)).flatten().tolist())


def spec(folder: Path) -> str:
    return (f'model "{MODEL}"\ndata ioi = "{DATA}"\nrun clean = ioi.clean\n'
            "run corrupt = ioi.corrupt\nmetric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
            f'sae s = "{folder}" at L1.resid_post\n'
            "swap s[*] @ last from clean into corrupt  measure ld  as feats\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dense-sample", type=int, default=1024,
                    help="latents the dense loop runs per round (evenly spaced; its time is "
                         "scaled to all 16,384, every forward costing the same); 16384: all")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_common import first_run

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae16k"
        w = make_sae(folder, model, tok, args.k)
        dense = DenseLoop(model, tok, w, args.k)
        active = dense.active()
        step = max(1, D_SAE // args.dense_sample)
        sample = list(range(0, D_SAE, step))[:args.dense_sample]
        print(f"{D_SAE} latents, TopK k={args.k}: {len(active)} active at the last token of "
              f"some example in clean or corrupt; dense loop over {len(sample)} of them per "
              "round", flush=True)
        text = spec(folder)
        t_patchc: list[float] = []
        t_plan: list[float] = []
        t_dense: list[float] = []
        res = got = None
        for r in range(args.repeats + 1):  # round 0 warms up; the two take turns
            t0 = time.perf_counter()
            res = first_run(text, model=model, tokenizer=tok)
            t1 = time.perf_counter()
            got = dense(sample)
            t2 = time.perf_counter()
            if r:
                t_patchc.append(t1 - t0)
                t_plan.append(res.manifest["timings"]["plan"])
                t_dense.append((t2 - t1) * D_SAE / len(sample))
            print(f"round {r}: patchc {t1 - t0:.2f} s, dense {len(sample)} latents "
                  f"{t2 - t1:.2f} s", flush=True)
        table = res["feats"].set_index("feature")["ld"]
        worst = max(abs(table[i] - v) for i, v in got.items())
        assert worst < 1e-4, f"patchc and the dense loop differ by {worst}"
        with torch.no_grad():
            base = dense.ld_each(model(input_ids=dense.corrupt).logits).double().numpy()
        inactive = set(range(D_SAE)) - active
        each = res.per_example("feats")
        skipped = each[each["feature"].isin(inactive)].sort_values(["feature", "example"])
        assert (skipped["ld"].to_numpy().reshape(len(inactive), -1) == base).all(), \
            "an inactive latent's values are not the base run's"
        plan = res.manifest["plan"]
        timings = res.manifest["timings"]
        assert plan["sparse_skipped"] == D_SAE - len(active)
        assert plan["passes"] == 2 + plan["sparse_passes"]
        print(json.dumps({"plan": plan, "timings": timings}))
        rows_per_pass = math.ceil(len(active) / max(1, plan["sparse_passes"]))
        print("\n| | forwards (model passes) | time, min / median / max (s) |\n|---|---|---|")
        print(f"| patchc `swap s[*] @ last` | {plan['passes']} passes: clean, corrupt, "
              f"{plan['sparse_passes']} for the {len(active)} active latents "
              f"({plan['sparse_skipped']} skipped) | "
              f"{min(t_patchc):.1f} / {statistics.median(t_patchc):.1f} / {max(t_patchc):.1f} |")
        print(f"| dense loop (one forward per latent) | {D_SAE} + 2 | "
              f"{min(t_dense):.1f} / {statistics.median(t_dense):.1f} / {max(t_dense):.1f} "
              f"(from {len(sample)} latents per round) |")
        print(f"\npatchc planning min / median / max {min(t_plan):.2f} / "
              f"{statistics.median(t_plan):.2f} / {max(t_plan):.2f} s; in its last round "
              f"planning {timings['plan']:.2f} s, model {timings['model']:.1f} s of "
              f"{timings['total']:.1f} s; up to {rows_per_pass} experiments x 16 prompts per "
              f"sparse pass; max |patchc - dense| = {worst:.2e}")


if __name__ == "__main__":
    main()
