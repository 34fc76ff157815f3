"""`patchc verify DIR`: rerun the spec recorded in DIR/manifest.json and compare tables.

The manifest pins the model by a hash of its weights: a rerun on different weights fails
before any table is compared. Each table passes when every numeric cell is within
`atol + rtol * |recorded|` of the rerun (NaN matches NaN) and the non-numeric cells are equal.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from patchc.compiler.errors import PatchcError


@dataclass
class TableCheck:
    name: str
    max_abs_diff: float
    ok: bool
    note: str = ""


@dataclass
class Verification:
    weights_ok: bool
    tables: list[TableCheck]

    @property
    def ok(self) -> bool:
        return self.weights_ok and all(t.ok for t in self.tables)


def compare_frames(old: pd.DataFrame, new: pd.DataFrame, atol: float, rtol: float
                   ) -> tuple[float, bool, str]:
    if list(old.columns) != list(new.columns) or len(old) != len(new):
        return math.inf, False, (f"shape differs: {len(old)}x{list(old.columns)} vs "
                                 f"{len(new)}x{list(new.columns)}")
    worst, ok = 0.0, True
    for col in old.columns:
        a, b = old[col], new[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            for x, y in zip(a.astype(float), b.astype(float)):
                if math.isnan(x) and math.isnan(y):
                    continue
                d = abs(x - y)
                worst = max(worst, d)
                if not d <= atol + rtol * abs(x):
                    ok = False
        elif [str(v) for v in a] != [str(v) for v in b]:
            return worst, False, f"column {col} differs"
    return worst, ok, ""


def verify_dir(out_dir: str | Path, atol: float = 1e-5, rtol: float = 1e-4,
               spec_dir: str | None = None, **run_kwargs) -> Verification:
    from patchc.compiler.parse import parse
    from patchc.manifest import read_manifest
    from patchc.runner import execute

    d = Path(out_dir)
    manifest = read_manifest(d)
    base = Path(spec_dir) if spec_dir else Path(manifest["spec_file"]).parent
    if not base.is_dir():
        raise PatchcError("E603", f"the spec's folder {base} is not here; relative paths in "
                          "the spec resolve against it", hint="pass --spec-dir")
    spec = parse(manifest["spec_text"], manifest["spec_file"], str(base))
    overrides = {k: manifest["options"][k] for k in ("dtype", "device", "seed", "batch_size")
                 if manifest["options"].get(k) is not None}
    results = execute(spec, overrides=overrides, **run_kwargs)
    weights_ok = results.manifest["weights_sha256"] == manifest["weights_sha256"]
    checks = []
    for name in manifest["tables"]:
        csv = d / f"{name}.csv"
        if not csv.is_file():
            checks.append(TableCheck(name, math.inf, False, "recorded CSV missing"))
            continue
        if name not in results.tables:
            checks.append(TableCheck(name, math.inf, False, "the rerun has no such table"))
            continue
        old = pd.read_csv(csv)
        new = pd.read_csv(io.StringIO(results[name].to_csv(index=False)))
        worst, ok, note = compare_frames(old, new, atol, rtol)
        checks.append(TableCheck(name, worst, ok, note))
    return Verification(weights_ok, checks)
