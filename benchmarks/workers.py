"""`--workers 2` vs one process, on a random GPT-2 (`--model gpt2-small`: 12 layers, 12
heads, d_model 768; `--model small`: the sweep benchmark's 6 layers, 8 heads, d_model 256;
vocab 50257 both), 8 prompts of 16 tokens, fp32, on this machine's CPU:

    python benchmarks/workers.py [--repeats 2] [--model gpt2-small] [--sweep heads_all]
                                 [--workers 2]

Contenders, taking turns after a warm-up round (min and median reported):
- 1 process, all threads   patchc.run(spec, model=..., tokenizer=...)
- 1 process, 1 thread      the same with torch.set_num_threads(1)
- N workers                patchc.run(..., workers=N): N processes with threads/N threads
                           each; includes starting the N-1 processes (imports, ~3 s)
Also prints how the plan divides (compiler/shard.py): each worker's share of the FLOPs, and
the FLOPs run twice (prerequisites both workers need). Checks the tables are identical.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch
from bench_common import build, first_run, spec, summary, timings

import patchc
from patchc.compiler.shard import shard
from patchc.runtime.adapters import adapter_for
from patchc.runtime.execute import Executor

SWEEPS = {
    "heads_all": "swap L*.H*.z from clean into corrupt  measure ld normalized  as t",
    "heads_last": "swap L*.H*.z @ last from clean into corrupt  measure ld normalized  as t",
    "resid_each": "swap L*.resid_pre @ each from clean into corrupt  measure ld normalized  "
                  "as t",
}
MODELS = {"gpt2-small": dict(n_layer=12, n_head=12, n_embd=768),
          "small": dict(n_layer=6, n_head=8, n_embd=256)}


def division(text: str, model, tok, workers: int) -> str:
    """Each worker's share of the plan's FLOPs and the FLOPs run on more than one."""
    from patchc.api import compile as compile_spec

    program = compile_spec(text)
    interp = Executor(program.checked, model, tok, adapter_for(model))
    ir, plan = interp.prepare(program.optimized)
    shards = shard(ir, plan, workers)
    total = sum(s.flops for s in plan.steps)
    loads = [sum(s.flops for s in sh.plan.steps) for sh in shards]
    shares = ", ".join(f"{x / total:.0%}" for x in loads)
    return (f"plan {total / 1e9:.1f} GFLOP in {plan.optimized.forwards} passes; worker "
            f"shares {shares}; run twice: {(sum(loads) - total) / total:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sweep", choices=list(SWEEPS), default="heads_all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", choices=list(MODELS), default="gpt2-small")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as d:
        model, tok = build(Path(d), **MODELS[args.model])
        text = spec(Path(d), SWEEPS[args.sweep])
        results: dict[str, pd.DataFrame] = {}

        def one(n_threads: int, name: str):
            def fn():
                saved = torch.get_num_threads()
                torch.set_num_threads(n_threads)
                try:
                    results[name] = first_run(text, model=model, tokenizer=tok)["t"]
                finally:
                    torch.set_num_threads(saved)
            return fn

        def sharded():
            results["workers"] = patchc.run(text, model=model, tokenizer=tok,
                                            workers=args.workers)["t"]

        cases = {f"1 process, {threads} threads": one(threads, "all"),
                 "1 process, 1 thread": one(1, "one"),
                 f"{args.workers} workers": sharded}
        times = timings(cases, args.repeats)
        print(f"model {args.model}, sweep {args.sweep}: {SWEEPS[args.sweep]}")
        print(division(text, model, tok, args.workers))
        print("\n| contender | min s | median s | speed-up of workers (min) |")
        print("|---|---|---|---|")
        best = summary(times[f"{args.workers} workers"])[0]
        for name, ts in times.items():
            lo, med = summary(ts)
            print(f"| {name} | {lo:.2f} | {med:.2f} | {lo / best:.2f}x |")
        # Workers compute with threads/N threads each: compare with the 1-thread process
        # (the thread count itself can move the last bit of a reduction).
        w, one = results["workers"], results["one"]
        num = w.select_dtypes("number").columns
        diff = (w[num] - one[num]).abs().max().max()
        print(f"\ntable identical to the 1-thread process: {w.equals(one)} (max |diff| "
              f"{diff:.2g}); to the {threads}-thread one: {w.equals(results['all'])}")


if __name__ == "__main__":
    main()
