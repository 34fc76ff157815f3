"""Optimized vs naive vs a plain hook loop (vs TransformerLens / nnsight when installed) on the
issue's three sweeps, random GPT-2 (6 layers, 8 heads, d_model 256, vocab 50257), 8 prompts
of 16 tokens, fp32:

    python benchmarks/sweep.py [--repeats 2] [--threads 2] [--only heads_last]

- heads_all   swap L*.H*.z from clean into corrupt          (48 experiments, all positions)
- heads_last  swap L*.H*.z @ last from clean into corrupt   (48 experiments, last position)
- resid_each  swap L*.resid_pre @ each from clean into corrupt  (96 experiments)
each `measure ld normalized` (logit difference at the last token).

Contenders, taking turns within each round after a warm-up round (min and median reported):
- optimized   patchc.run(spec, model=..., tokenizer=...): check, lower, passes, schedule, run
- naive       patchc.run(..., naive=True): one full forward per experiment
- hook loop   hand-written torch hooks on the HF modules, one full forward per experiment
              (what a researcher writes by hand; TransformerLens/nnsight do the same)
The FLOP-bound ratio is naive FLOPs / optimized FLOPs from the plans (compiler/costs.py:
matrix products only); the measured speedup can exceed it where overheads dominate the naive
loop, and falls short of it where the optimized passes are small. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import torch
from bench_common import build, first_run, prompts, spec, summary, timings

import patchc
from patchc.compiler.schedule import run_shapes, schedule

SWEEPS = {
    "heads_all": "swap L*.H*.z from clean into corrupt\n    measure ld normalized\n    as t",
    "heads_last": "swap L*.H*.z @ last from clean into corrupt\n    measure ld normalized\n"
                  "    as t",
    "resid_each": "swap L*.resid_pre @ each from clean into corrupt\n    measure ld normalized\n"
                  "    as t",
}
TARGETS = {"heads_all": 3.0, "heads_last": 15.0, "resid_each": 4.0}


class HookLoop:
    """The sweep written by hand: cache the clean run's activations with hooks, then one
    forward of the corrupt run per experiment with a hook that patches one site."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        enc = lambda texts: torch.tensor([tokenizer(t)["input_ids"] for t in texts])  # noqa: E731
        self.clean, self.corrupt = enc(prompts(1)), enc(prompts(2))
        self.ids = tokenizer("w1")["input_ids"][0], tokenizer("w2")["input_ids"][0]
        self.blocks = model.transformer.h
        self.dh = model.config.n_embd // model.config.n_head

    @torch.no_grad()
    def ld(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids).logits[:, -1]
        return logits[:, self.ids[0]] - logits[:, self.ids[1]]

    def _cache(self, module_of, layers) -> dict[int, torch.Tensor]:
        got: dict[int, torch.Tensor] = {}
        handles = [module_of(i).register_forward_pre_hook(
            lambda _m, args, i=i: got.__setitem__(i, args[0].clone())) for i in layers]
        m_clean = self.ld(self.clean)
        for h in handles:
            h.remove()
        self.m_clean = m_clean
        return got

    def run(self, sweep: str) -> list[float]:
        n_layers = len(self.blocks)
        if sweep.startswith("heads"):
            proj = lambda i: self.blocks[i].attn.c_proj  # noqa: E731
            cache = self._cache(proj, range(n_layers))
            sites = [(i, h) for i in range(n_layers) for h in range(self.model.config.n_head)]
        else:
            proj = lambda i: self.blocks[i]  # noqa: E731
            cache = self._cache(proj, range(n_layers))
            sites = [(i, p) for i in range(n_layers) for p in range(self.clean.shape[1])]
        m_corrupt = self.ld(self.corrupt)
        out = []
        for layer, k in sites:
            def hook(_m, args, layer=layer, k=k):
                x = args[0].clone()
                src = cache[layer]
                if sweep == "heads_all":
                    x[..., k * self.dh:(k + 1) * self.dh] = src[..., k * self.dh:(k + 1) * self.dh]
                elif sweep == "heads_last":
                    x[:, -1, k * self.dh:(k + 1) * self.dh] = \
                        src[:, -1, k * self.dh:(k + 1) * self.dh]
                else:
                    x[:, k] = src[:, k]
                return (x, *args[1:])
            handle = proj(layer).register_forward_pre_hook(hook)
            m = self.ld(self.corrupt)
            handle.remove()
            t, s = float(m_corrupt.mean()), float(self.m_clean.mean())
            out.append((float(m.mean()) - t) / (s - t))
        return out


def _cases(got: dict, text: str, name: str, model, tok, loop: HookLoop) -> dict:
    return {
        "optimized": lambda: got.__setitem__(
            "optimized", first_run(text, model=model, tokenizer=tok)),
        "naive": lambda: got.__setitem__(
            "naive", patchc.run(text, model=model, tokenizer=tok, naive=True)),
        "hook loop": lambda: got.__setitem__("loop", loop.run(name)),
    }


def flop_ratio(text: str) -> tuple[float, int, int]:
    prog = patchc.compile(text)
    plan = schedule(prog.optimized, prog.checked.model, run_shapes(prog.checked),
                    naive_ir=prog.ir)
    assert plan.naive is not None
    return plan.naive.flops / plan.optimized.flops, plan.optimized.forwards, plan.naive.forwards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=list(SWEEPS), action="append")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peers = [name for name in ("transformer_lens", "nnsight")
             if importlib.util.find_spec(name) is not None]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        model, tok = build(path)
        loop = HookLoop(model, tok)
        rows = []
        for name in args.only or list(SWEEPS):
            text = spec(path, SWEEPS[name])
            got: dict[str, object] = {}
            times = timings(_cases(got, text, name, model, tok, loop), args.repeats)
            fast, slow = got["optimized"]["t"], got["naive"]["t"]  # type: ignore[index]
            col = fast.columns[-1]
            diff = float((fast[col] - slow[col]).abs().max())
            diff_loop = max(abs(a - b) for a, b in zip(fast[col], got["loop"]))  # type: ignore[arg-type]
            bound, passes, naive_passes = flop_ratio(text)
            t_opt, t_naive, t_loop = (summary(times[k]) for k in
                                      ("optimized", "naive", "hook loop"))
            rows.append((name, len(fast), passes, naive_passes, t_opt, t_naive, t_loop,
                         t_naive[0] / t_opt[0], t_loop[0] / t_opt[0], bound, TARGETS[name],
                         max(diff, diff_loop)))
    skipped = "none (TransformerLens, nnsight skipped)"
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} rounds after a "
          f"warm-up; peers installed: {', '.join(peers) or skipped}\n")
    print("| sweep | experiments | passes (naive) | optimized s | naive s | hook loop s | "
          "speedup vs naive | vs hook loop | FLOP-bound ratio | target | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, n, p, pn, o, nv, lp, sp, sl, bound, target, diff) in rows:
        print(f"| {name} | {n} | {p} ({pn}) | {o[0]:.2f} (med {o[1]:.2f}) | {nv[0]:.2f} | "
              f"{lp[0]:.2f} | **{sp:.1f}x** | {sl:.1f}x | {bound:.1f}x | >= {target:.0f}x | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
