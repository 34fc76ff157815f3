"""CPU threads: one, two, torch's default (one per physical core) and patchc's default
(runtime/threads.py), on two runs:

    python benchmarks/threads.py [--repeats 3]

- ioi_heads   examples/ioi_heads.patch (the bundled 4-layer GPT-2, d_model 128)
- bench_heads `swap L*.H*.z from clean into corrupt` on the random GPT-2 of bench_common
              (6 layers, d_model 256, vocab 50257), 8 prompts of 16 tokens
The contenders take turns within each round after a warm-up round (so load from other
processes hits them alike). Prints a markdown table: min and median seconds of patchc.run,
the model already loaded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_common import build, spec, summary, timings

import patchc
from patchc.runtime.loading import load
from patchc.runtime.threads import _CORES, default_threads

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ioi = (ROOT / "examples/ioi_heads.patch").read_text()
    ioi = ioi.replace('"models/ioi-gpt2"', f'"{ROOT}/examples/models/ioi-gpt2"')
    ioi = ioi.replace('"data/ioi.jsonl"', f'"{ROOT}/examples/data/ioi.jsonl"')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt2"
        model, tok = build(path)
        small = load(f"{ROOT}/examples/models/ioi-gpt2", None,
                     patchc.compile(ioi).checked.options)
        cases = {"ioi_heads": (ioi, small.model, small.tokenizer, 128),
                 "bench_heads": (spec(path, "swap L*.H*.z from clean into corrupt\n"
                                      "    measure ld normalized\n    as t"), model, tok, 256)}
        print(f"torch's default: {_CORES} threads; load average "
              f"{__import__('os').getloadavg()[0]:.1f}")
        print("| run | 1 thread | 2 threads | torch default | patchc default |")
        print("|---|---|---|---|---|")
        for name, (text, m, t, d) in cases.items():
            choice = default_threads(d)
            variants = {"1": 1, "2": 2, "torch": _CORES, "patchc": choice}
            runs = {k: (lambda n=n, s=text, m=m, t=t: patchc.run(s, model=m, tokenizer=t,
                                                                  threads=n))
                    for k, n in variants.items()}
            got = timings(runs, args.repeats)
            cells = [f"{summary(got[k])[0]:.2f} / {summary(got[k])[1]:.2f}" for k in variants]
            print(f"| {name} | " + " | ".join(cells[:3]) + f" | {cells[3]} ({choice}) |")
    torch.set_num_threads(_CORES)


if __name__ == "__main__":
    main()
