"""`compare` and `ig` over compact index sets (issue 17): run time on the bundled IOI model,
and what `check` / `compile --emit plan` of a compare cost on a GPT-2-small shape.

    python benchmarks/compare_ig.py [--repeats 3] [--skip-compile] [--skip-run] [--wide]

- run: `patchc.run` of each spec with the loaded model (examples/models/ioi-gpt2, the 16
  prompts of examples/data/ioi.jsonl), one thread, timed in rounds after a warm-up round
  (the cases taking turns); min and spread (max - min) of the wall time, min CPU time:
    compare  compare atp against swap on L*.resid_pre @ each from clean into corrupt
    ig       attribute L*.attn.out @ each from clean into corrupt using ig(steps=8)
- compile: `patchc check` and `patchc compile --emit plan` in fresh processes (GNU time:
  wall, CPU, peak RSS) of a compare over every head's z, MLP output and residual stream at every
  position (2,688 experiments) and of `L*.resid_pre @ each` (192), on the GPT-2-small-shaped
  config of benchmarks/scale.py (no weights), 8 prompts of 16 tokens.

`--wide`: also ig on bench_common's 6-layer random GPT-2 with GPT-2's vocabulary (where
unembedding every position of every row costs more than the layers).

To compare with another revision, run it with that revision's packages first on PYTHONPATH
(the subprocesses inherit it). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_common import build, spec, timings  # noqa: E402
from scale import gpt2_small_config, measure  # noqa: E402

import patchc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "compare": "compare atp against swap on L*.resid_pre @ each from clean into corrupt "
               "measure ld as c",
    "ig": "attribute L*.attn.out @ each from clean into corrupt using ig(steps=8) "
          "measure ld as g",
}
COMPILES = {
    "z, mlp.out, resid_pre @ each (2,688)":
        "compare atp, relp against swap on L*.H*.z @ each, L*.mlp.out @ each, "
        "L*.resid_pre @ each from clean into corrupt measure ld as c",
    "resid_pre @ each (192)":
        "compare atp against swap on L*.resid_pre @ each from clean into corrupt "
        "measure ld as c",
}


def ioi_spec(body: str) -> str:
    return (f'model "{ROOT / "examples/models/ioi-gpt2"}"\n'
            f'data ioi = "{ROOT / "examples/data/ioi.jsonl"}"\n'
            "run clean = ioi.clean\nrun corrupt = ioi.corrupt\n"
            "metric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
            f"{body}\n")


def _cpu(fn, into: list[float]) -> None:
    """Run fn, adding its CPU seconds (this process) to `into` (the wall time of a shared
    machine also counts waiting for a core)."""
    start = time.process_time()
    fn()
    into.append(time.process_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--wide", action="store_true", help="also ig on benchmarks/bench_common's "
                    "random GPT-2 (6 layers, d_model 256, vocab 50257)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.skip_run:
        run_times(args.repeats)
    if args.wide:
        wide_times(args.repeats)
    if not args.skip_compile:
        compile_times(args.repeats)


def run_times(repeats: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ROOT / "examples/models/ioi-gpt2"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    cases = {name: (lambda body=body: patchc.run(ioi_spec(body), model=model, tokenizer=tok))
             for name, body in RUNS.items()}
    cpu = {name: [] for name in cases}
    timed = {name: (lambda fn=fn, name=name: _cpu(fn, cpu[name])) for name, fn in cases.items()}
    times = timings(timed, repeats)
    print(f"patchc from {Path(patchc.__file__).parent}\n")
    print("| IOI model, 1 thread | wall s (min) | spread | CPU s (min) |\n|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {max(ts) - min(ts):.3f} | {min(cpu[name]):.3f} |")


def wide_times(repeats: int) -> None:
    """ig where the unembedding is large: `attribute L*.attn.out @ each ... ig(steps=2)` on
    the 6-layer random GPT-2 of bench_common (8 prompts of 16 tokens), CPU seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build(Path(tmp) / "m")
        text = spec(Path(tmp) / "m", "attribute L*.attn.out @ each from clean into corrupt "
                    "using ig(steps=2) measure ld as g")
        cpu: list[float] = []
        times = timings({"ig": lambda: _cpu(lambda: patchc.run(text, model=model,
                                                                 tokenizer=tok), cpu)}, repeats)
    print(f"\n| 6-layer GPT-2, vocab 50257, 1 thread | wall s (min) | spread | CPU s (min) |\n"
          f"|---|---|---|---|\n| ig(steps=2), attn.out @ each | {min(times['ig']):.2f} | "
          f"{max(times['ig']) - min(times['ig']):.2f} | {min(cpu):.2f} |")


def compile_times(repeats: int) -> None:
    print("\n| GPT-2-small shape | command | wall s (min) | spread | CPU s (min) | "
          "peak RSS MB |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gpt2-small"
        gpt2_small_config(cfg)
        for label, body in COMPILES.items():
            file = Path(tmp) / "c.patch"
            file.write_text(spec(cfg, body))
            for cmd in (["check"], ["compile", "--emit", "plan"]):
                got = [measure([*cmd, str(file)]) for _ in range(repeats)]
                walls = [w for w, _, _, _ in got]
                cpu = min(c for _, c, _, _ in got)
                rss = min(r for _, _, r, _ in got)
                print(f"| {label} | {' '.join(cmd)} | {min(walls):.2f} | "
                      f"{max(walls) - min(walls):.2f} | {cpu:.2f} | {rss / 1e6:.0f} |")


if __name__ == "__main__":
    main()
