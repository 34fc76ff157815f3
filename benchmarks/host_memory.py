"""What runtime/host_memory.py's allocator thresholds change on the CPU.

    python benchmarks/host_memory.py [--repeats 3] [--rows 16 32 48 64 128]

Two parts, each run in fresh processes with glibc's defaults (`PATCHC_SYSTEM_MALLOC=1`)
and with patchc's thresholds, taking turns `--repeats` times; one thread; CPU time, the
minimum over the rounds (and the median of each process's own timings):

- forward: the bundled IOI model (examples/models/ioi-gpt2: 4 layers, d_model 128) on
  random token ids of 14 positions, per batch size of `--rows`: a plain no-grad forward;
- patchc: `patchc.run` of E1, E2, E4, E5 and E6 of benchmarks/peers.py on the same model
  and its 16 prompts, with the loaded model (compile reuse on: the spec runs 10 times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "ioi-gpt2"


def forward_child(rows: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from patchc.runtime.host_memory import keep_freed_memory

    keep_freed_memory()  # (a no-op under PATCHC_SYSTEM_MALLOC=1)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    out = {}
    for n in rows:
        ids = torch.randint(0, model.config.vocab_size, (n, 14))
        mask = torch.ones_like(ids)
        times = []
        with torch.no_grad():
            for i in range(23):
                start = time.process_time()
                model.transformer(ids, attention_mask=mask)
                if i >= 3:
                    times.append(time.process_time() - start)
        out[str(n)] = [min(times), statistics.median(times)]
    return out


def patchc_child(exps: list[str]) -> dict:
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peers

    import patchc

    torch.set_num_threads(1)
    task, path, tok, _ = peers.setup("ioi", Path(tempfile.mkdtemp()), "cpu", torch.float32)
    tool = peers.Patchc(task, path, tok, ROOT / "examples/data/ioi.jsonl", "float32")
    out = {}
    for exp in exps:
        text = tool.text(exp)
        times = []
        for i in range(12):
            start = time.process_time()
            patchc.run(text, model=task.model, tokenizer=tok)
            if i >= 2:
                times.append(time.process_time() - start)
        out[exp] = [min(times), statistics.median(times)]
    return out


def child(part: str, system: bool, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATCHC_SYSTEM_MALLOC": "1" if system else "0"}
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import host_memory as h; print(json.dumps(h.{part}_child({args!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(title: str, rounds: dict[bool, list[dict]], keys: list[str]) -> str:
    lines = [f"| {title} | glibc defaults: min (median) ms | patchc's thresholds | ratio |",
             "|---|---|---|---|"]
    for k in keys:
        cells = []
        for system in (True, False):
            lo = min(r[k][0] for r in rounds[system])
            med = statistics.median(r[k][1] for r in rounds[system])
            cells.append((lo, med))
        ratio = cells[0][0] / cells[1][0]
        lines.append(f"| {k} | {1000 * cells[0][0]:.1f} ({1000 * cells[0][1]:.1f}) | "
                     f"{1000 * cells[1][0]:.1f} ({1000 * cells[1][1]:.1f}) | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 32, 48, 64, 128])
    ap.add_argument("--exps", nargs="+", default=["E1", "E2", "E4", "E5", "E6"])
    args = ap.parse_args()
    fwd: dict[bool, list[dict]] = {True: [], False: []}
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.repeats):
        for system in (True, False):
            fwd[system].append(child("forward", system, args.rows))
            runs[system].append(child("patchc", system, args.exps))
    print(table("forward, rows x 14 tokens", fwd, [str(n) for n in args.rows]))
    print()
    print(table("patchc.run", runs, args.exps))


if __name__ == "__main__":
    main()
