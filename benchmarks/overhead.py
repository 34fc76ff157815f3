"""Overhead of a large sweep: how much of a run is not model passes.

    python benchmarks/overhead.py [--repeats 2] [--threads 1]

30,000 experiments: `swap L*.mlp.post[*] @ last from clean into corrupt` on the random GPT-2
of bench_common with 6 layers and d_mlp 5000 (6 x 5000 neurons), 8 prompts of 16 tokens,
fp32, plus the same sweep through `attribute ... using atp` (30,000 estimates from two
forwards and one backward, so nearly all of it is bookkeeping). For each, the manifest's
timings (patchc/execution.py Clock): plan (lower, optimize, schedule), model (inside model
passes), overhead (plan + execution outside model passes + result assembly) and its share
of the run (the load excluded). Prints a markdown table: min and median over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import build, first_run, spec


SWEEPS = {
    "swap": "swap L*.mlp.post[*] @ last from clean into corrupt\n    measure ld normalized\n"
            "    as t",
    "atp": "attribute L*.mlp.post[*] @ last from clean into corrupt using atp\n"
           "    measure ld normalized\n    as t",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=list(SWEEPS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt2"
        model, tok = build(path, n_inner=5000)
        print("| sweep | experiments | wall s | model s | plan s | overhead s | overhead share |")
        print("|---|---|---|---|---|---|---|")
        for name, body in SWEEPS.items():
            if args.only and name != args.only:
                continue
            text = spec(path, body, f"set threads = {args.threads}\n")
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                res = first_run(text, model=model, tokenizer=tok)
                wall = time.perf_counter() - start
                runs.append((wall, res.manifest["timings"], len(res["t"])))
            rows = runs[0][2]

            def stat(key: str, runs: list = runs) -> str:
                xs = [r[1][key] if key != "wall" else r[0] for r in runs]
                return f"{min(xs):.2f} / {statistics.median(xs):.2f}"

            share = [r[1]["overhead_share"] for r in runs]
            print(f"| {name} | {rows} | {stat('wall')} | {stat('model')} | {stat('plan')} | "
                  f"{stat('overhead')} | {min(share):.1%} / {statistics.median(share):.1%} |")


if __name__ == "__main__":
    main()
