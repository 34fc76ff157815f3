"""E5's differentiated pass with and without the fused GELU backward (runtime/activations.py).

    python benchmarks/grad_pass.py [--model ioi|gpt2-small|tiny] [--repeats 30]

One thread, CPU time (time.process_time), the cases taking turns in every round after two
warm-up rounds; min, median and the spread (median / min - 1) of `--repeats` rounds:

- patchc pass     the one forward+backward of `patchc.run(E5)` (estimates.gradients: the
                  corrupt run's reads, a zero leaf at each of the 3 x layers sites, trimmed
                  logits, autograd.grad to the leaves), fused backward on / off;
- patchc run      the whole `patchc.run(E5)`, fused backward on / off;
- plain pass      the same pass in plain torch (benchmarks/peer_tools.HookLoop's hooks, a
                  zero leaf at each site, autograd.grad), weights frozen, the model's GELU
                  as it is / with the fused backward.

"off" replaces the context patchc enters around the pass with a no-op (what the runtime
did before the fused backward); everything else is the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from peer_tools import KINDS, HookLoop
from peers import Patchc, setup, write_data

import patchc
from patchc.runtime import estimates, execute
from patchc.runtime.activations import fused_backwards


def plain_pass(loop: HookLoop) -> None:
    """The corrupt run's forward with a zero added at every site, and its gradients."""
    t = loop.t
    zeros: dict = {}

    def leaf(site):
        def fn(act):
            zeros[site] = torch.zeros_like(act, requires_grad=True)
            return act + zeros[site]
        return fn
    sites = [(k, layer) for k in KINDS for layer in range(t.n_layers)]
    with torch.enable_grad():
        m_b = loop._run(t.corrupt, [(k, layer, leaf((k, layer))) for k, layer in sites])
        torch.autograd.grad(m_b.sum(), [zeros[s] for s in sites])


def main(argv: list[str] | None = None) -> dict:
    """Prints the table; returns the seconds per round by case (`times`) and the max abs
    difference of E5's estimates with the fused backward on and off (`diff`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["ioi", "gpt2-small", "tiny"], default="ioi")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    task, path, tok, rows = setup(args.model, tmp, "cpu", torch.float32)
    data = write_data(rows, tmp)
    text = Patchc(task, path, tok, data, "float32").text("E5")
    loop = HookLoop(task)
    model = task.model
    on, off = estimates.fused_backwards, (lambda m: contextlib.nullcontext(0))
    spent: list[float] = []
    inner = execute.gradients

    def timed(*a, **k):  # the pass inside patchc.run
        t0 = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.process_time() - t0)

    got: dict[str, torch.Tensor] = {}

    def run(name: str, swap) -> Callable[[], float]:
        def fn() -> float:
            estimates.fused_backwards = swap
            spent.clear()
            res = patchc.run(text, model=model, tokenizer=tok)
            got[name] = torch.tensor(res["t"]["ld"].to_numpy())
            return spent[0]
        return fn

    def plain(fused: bool) -> Callable[[], float]:
        def fn() -> float:
            t0 = time.process_time()
            with fused_backwards(model) if fused else contextlib.nullcontext(), \
                    estimates.frozen(model):
                plain_pass(loop)
            return time.process_time() - t0
        return fn

    cases = {"on": run("on", on), "off": run("off", off), "plain": plain(False),
             "plain fused": plain(True)}
    out: dict[str, list[float]] = {f"{k} {w}": [] for k in cases for w in ("pass", "run")}
    execute.gradients = timed
    try:
        for r in range(args.repeats + 2):
            for name, fn in cases.items():
                t0 = time.process_time()
                inside = fn()
                if r >= 2:
                    out[f"{name} pass"].append(inside)
                    out[f"{name} run"].append(time.process_time() - t0)
    finally:
        execute.gradients, estimates.fused_backwards = inner, on
    diff = (got["on"] - got["off"]).abs().max().item()
    print(f"{args.model}: E5's differentiated pass, CPU ms, 1 thread, {args.repeats} rounds; "
          f"E5's estimates on vs off: max abs diff {diff:.1e}")
    print("| case | min | median | spread |\n|---|---|---|---|")
    for name, xs in out.items():
        if name.startswith("plain") and name.endswith("run"):
            continue
        xs = sorted(xs)
        mid = xs[len(xs) // 2]
        print(f"| {name} | {1e3 * xs[0]:.2f} | {1e3 * mid:.2f} | {mid / xs[0] - 1:.0%} |")
    return {"times": out, "diff": diff}


if __name__ == "__main__":
    main()
