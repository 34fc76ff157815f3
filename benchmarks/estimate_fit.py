"""Fit the constants of `patchc check`'s time estimate (compiler/costs.py) to real runs.

    python benchmarks/estimate_fit.py [--skip NAME ...]

Runs every spec in examples/ and examples/language/ once (`patchc.run`, bundled models, the
default threads), and from each manifest's timings takes the overhead (everything that is not
a model pass) and the model passes' seconds. It prints, per spec, the lowered graph's nodes,
the plan's model passes and FLOPs beside those timings; then the least-squares fit (relative
error) of overhead = per_run + per_node * nodes + per_pass * passes, and the median FLOP rate
of the model passes. Copy the rounded figures into compiler/costs.py (OVERHEAD_*,
ASSUMED_FLOPS_PER_SECOND) and docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import patchc  # noqa: E402
from patchc.compiler.schedule import run_shapes, schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(spec: Path) -> dict:
    prog = patchc.compile(str(spec))
    plan = schedule(prog.optimized, prog.checked.model, run_shapes(prog.checked), None,
                    prog.checked.options.batch_size, 4)
    timings = patchc.run(str(spec)).manifest["timings"]
    return dict(spec=spec.name, nodes=prog.ir.g.number_of_nodes(),
                passes=plan.optimized.forwards, flops=plan.optimized.flops,
                overhead=timings["overhead"], model=timings["model"])


def fit(rows: list[dict]) -> tuple[np.ndarray, float]:
    """(per_run, per_node, per_pass) seconds, and the median model FLOP/s."""
    x = np.array([[1.0, r["nodes"], r["passes"]] for r in rows])
    y = np.array([r["overhead"] for r in rows])
    w = 1.0 / np.maximum(y, 0.01)  # relative error: a 10 ms run weighs like a 10 s one
    coef = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
    rate = float(np.median([r["flops"] / r["model"] for r in rows if r["model"] > 0]))
    return coef, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", action="append", default=[], help="skip specs with this in "
                    "their name")
    args = ap.parse_args()
    specs = sorted((ROOT / "examples").glob("*.patch")) + \
        sorted((ROOT / "examples" / "language").glob("*.patch"))
    rows = []
    for spec in specs:
        if any(s in spec.name for s in args.skip):
            continue
        rows.append(measure(spec))
        r = rows[-1]
        print(f"{r['spec']:30s} nodes {r['nodes']:6d} passes {r['passes']:3d} "
              f"flops {r['flops']:9.3g} overhead {r['overhead']:7.3f} s model "
              f"{r['model']:7.3f} s", flush=True)
    coef, rate = fit(rows)
    print(f"overhead = {coef[0]:.3g} s + {coef[1]:.3g} s/node + {coef[2]:.3g} s/pass; "
          f"model passes at {rate:.3g} FLOP/s (median)")


if __name__ == "__main__":
    main()
