"""Peak memory of a sweep against the memory budget it was given (`set memory`).

    python benchmarks/memory.py [--budgets 100MB 150MB 300MB none] [--sweep heads_all]

Random GPT-2 of the issue (6 layers, 8 heads, d_model 256, vocab 50257; 71 MB of fp32
weights), 8 prompts of 16 tokens. Each budget is measured in a fresh process: load, one small
warm-up spec, then the sweep under `set memory = BUDGET` while a thread samples the resident
set size every millisecond. The run's memory is weights + (peak RSS - RSS before the run);
it must stay under the budget. `none` plans under half the free memory (the default).
Prints a markdown table with the plan's passes and estimated peak beside the measured one.

`--sweep ioi_neurons`: the bundled IOI model (examples/models/ioi-gpt2: 4 layers, 512 MLP
neurons, 3.4 MB of weights) on its 16 prompts of 14 tokens, `swap L*.mlp.post[*] @ each`:
28,672 experiments as compact sweeps (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_common import PeakRSS, build, spec
from sweep import SWEEPS

import patchc
from patchc.compiler.costs import parse_bytes
from patchc.runtime.adapters import adapter_for
from patchc.runtime.execute import Executor


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def ioi_spec(body: str, settings: str = "") -> str:
    return (f'model "{EXAMPLES}/models/ioi-gpt2"\n{settings}'
            f'data ioi = "{EXAMPLES}/data/ioi.jsonl"\nrun clean = ioi.clean\n'
            "run corrupt = ioi.corrupt\nmetric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
            f"{body}\n")


IOI_SWEEPS = {"ioi_neurons": "swap L*.mlp.post[*] @ each from clean into corrupt\n"
                             "    measure ld normalized\n    as t"}


def measure(sweep: str, budget: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        settings = f'set memory = "{budget}"\n' if budget != "none" else ""
        small = "swap L0.H0.z @ last from clean into corrupt measure ld as t"
        if sweep in IOI_SWEEPS:
            import transformers as tf

            model = tf.AutoModelForCausalLM.from_pretrained(EXAMPLES / "models/ioi-gpt2").eval()
            tok = tf.AutoTokenizer.from_pretrained(EXAMPLES / "models/ioi-gpt2")
            warm, text = ioi_spec(small), ioi_spec(IOI_SWEEPS[sweep], settings)
        else:
            model, tok = build(path)
            warm, text = spec(path, small), spec(path, SWEEPS[sweep], settings)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        patchc.run(warm, model=model, tokenizer=tok)  # warm-up: imports, allocator, kernels
        prog = patchc.compile(text)
        ex = Executor(prog.checked, model, tok, adapter_for(model))
        _, plan = ex.prepare(prog.optimized)
        with PeakRSS() as rss:
            patchc.run(text, model=model, tokenizer=tok)
    return {"budget": plan.budget_bytes, "weights": weights, "delta": rss.delta,
            "passes": plan.optimized.forwards, "planned_peak": plan.optimized.peak_bytes,
            "rows": max(s.rows for s in plan.forward_steps())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", nargs="+", default=["100MB", "150MB", "300MB", "none"])
    ap.add_argument("--sweep", choices=list(SWEEPS) + list(IOI_SWEEPS), default="heads_all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.threads)))
        return
    print(f"sweep {args.sweep}, {args.threads} thread(s); memory = weights + peak RSS delta\n")
    print("| budget | passes | largest pass (rows) | planned peak | measured peak | "
          "measured / budget | within budget |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for budget in args.budgets:
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--child", args.sweep, budget], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["weights"] + r["delta"]
        fits = budget == "none" or total <= parse_bytes(budget)
        ok &= fits
        shown = budget if budget != "none" else f"none ({r['budget'] / 1e9:.1f} GB)"
        ratio = f"{total / parse_bytes(budget):.3f}" if budget != "none" else "-"
        print(f"| {shown} | {r['passes']} | {r['rows']} | {r['planned_peak'] / 1e6:.0f} MB | "
              f"{total / 1e6:.1f} MB | {ratio} | {'yes' if fits else 'NO'} |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
