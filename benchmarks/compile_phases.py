"""The compiler's share of a `patchc.run`: parse, check, lower, optimize, schedule, per run.

    python benchmarks/compile_phases.py [--model ioi|gpt2-small|tiny] [--repeats 30]
                                        [--only E5 ...]

Each experiment of benchmarks/peers.py is compiled as `patchc.run` compiles it with a loaded
model: the spec text parsed, checked against the model's own ModelSpec and tokenizer,
lowered, optimized and scheduled for the run's token counts (no memory budget). One thread,
CPU time (time.process_time) of each phase, three warm-up runs, then the minimum and the
median over `--repeats` runs, in milliseconds. Compare two trees by running this script
under each, in turns (other processes on the machine move the figures by 10-30%).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from peers import BODIES, Patchc, setup, write_data

from patchc.api import load_spec
from patchc.compiler.check import check
from patchc.compiler.lower import lower
from patchc.compiler.pipeline import optimize
from patchc.compiler.schedule import run_shapes, schedule
from patchc.runtime.adapters import adapter_for

PHASES = ("parse", "check", "lower", "optimize", "schedule", "total")


def phases(text: str, model_spec: Any, tokenizer: Any) -> dict[str, float]:
    """CPU seconds of each phase of compiling `text` once (and their total)."""
    out: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.process_time()
        value = fn()
        out[name] = time.process_time() - start
        return value

    spec = timed("parse", lambda: load_spec(text))
    checked = timed("check", lambda: check(spec, model_spec, tokenizer=tokenizer))
    ir = timed("lower", lambda: lower(checked))
    opt = timed("optimize", lambda: optimize(ir))
    shapes = run_shapes(checked)  # (what the runtime measures from its batches)
    timed("schedule", lambda: schedule(opt, checked.model, shapes))
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Prints one row per experiment; returns the seconds of every timed run, by experiment
    and phase."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["ioi", "gpt2-small", "tiny"], default="ioi")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--only", action="append", choices=list(BODIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    task, path, tok, rows = setup(args.model, tmp, "cpu", torch.float32)
    data = write_data(rows, tmp)
    bench = Patchc(task, path, tok, data, "float32")
    model_spec = adapter_for(task.model).spec()
    print(f"{args.model}, CPU ms per run, min / median of {args.repeats} (1 thread)")
    print("| experiment | " + " | ".join(PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    report: dict[str, dict[str, list[float]]] = {}
    for exp in args.only or list(BODIES):
        text = bench.text(exp)
        runs = [phases(text, model_spec, tok) for _ in range(args.repeats + 3)][3:]
        times = report[exp] = {p: sorted(r[p] for r in runs) for p in PHASES}
        cells = [f"{1e3 * v[0]:.2f} / {1e3 * v[len(v) // 2]:.2f}" for v in times.values()]
        print(f"| {exp} | " + " | ".join(cells) + " |")
    return report


if __name__ == "__main__":
    main()
