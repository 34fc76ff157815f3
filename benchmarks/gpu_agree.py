"""Every bundled example run on a device against the same run on the CPU.

    python benchmarks/gpu_agree.py [--device cuda] [--dtype float32] [--only NAME ...]

Each spec of examples/*.patch runs twice in this process, `device="cpu"` and `device=DEVICE`
(the override of `set device`), with the model the spec names; every float column of every
table must agree within a tolerance relative to the column's scale (1e-4 in float32; in
bfloat16 the device run is compared with a float32 CPU run, 5e-2). Prints one line per spec
and exits 1 if one disagrees. On a machine without the device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import patchc  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def disagreement(a, b) -> float:
    """The largest |a - b| over the float columns of two runs' tables, each column's
    difference divided by max(1, its largest |value|); NaN where they disagree on NaN."""
    worst = 0.0
    for name in a:
        x, y = a[name], b[name]
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return math.inf
        for col in x.columns:
            if x[col].dtype.kind != "f":
                continue
            u, v = x[col].to_numpy(), y[col].to_numpy()
            if ((u != u) != (v != v)).any():
                return math.nan
            scale = max(1.0, float(abs(u[u == u]).max(initial=0.0)))
            diff = abs(u - v)
            worst = max(worst, float(diff[diff == diff].max(initial=0.0)) / scale)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--only", nargs="*", default=None, help="spec names (no .patch)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to compare")
        return 0
    tol = 1e-4 if args.dtype == "float32" else 5e-2
    specs = sorted(EXAMPLES.glob("*.patch"))
    if args.only:
        specs = [s for s in specs if s.stem in args.only]
    bad = 0
    os.chdir(EXAMPLES)  # the specs' relative paths
    for path in specs:
        start = time.perf_counter()
        cpu = patchc.run(str(path), device="cpu", dtype="float32")
        dev = patchc.run(str(path), device=args.device, dtype=args.dtype)
        worst = disagreement(cpu.tables, dev.tables)
        ok = worst <= tol
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {path.stem:28s} max rel diff {worst:.1e} "
              f"({len(cpu.tables)} tables, {time.perf_counter() - start:.1f} s)", flush=True)
    print(f"{len(specs) - bad} of {len(specs)} specs agree ({args.device}, {args.dtype})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
