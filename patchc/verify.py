"""`patchc verify DIR`: check every recorded hash, rerun the spec recorded in
DIR/manifest.json, and compare every output file.

In order, so that the first FAIL says what changed:
1. the spec text against `spec_sha256`, and its `model` line against `model_id`;
2. each input file the spec reads (data, vectors, device map) against its recorded sha256;
3. the rerun's weights and tokenizer hashes against the recorded ones;
4. every output: the files the rerun writes, the files the manifest lists (its `files` and
   `tables`) and the files present in DIR must be the same set, and each must match. CSVs
   cell by cell, safetensors tensor by tensor: numbers pass when |recorded - rerun| <=
   atol + rtol * |recorded| (inf equals inf of its sign; NaN matches NaN at the same place);
   other cells and files must be equal. PNGs are drawn from the CSVs and are not compared.

The default tolerance is exact (atol = rtol = 0): on the same machine, software, options and
thread count (the rerun uses the recorded `threads`) a rerun is deterministic, bit for bit,
and the CSVs round-trip float64 exactly. Comparing across machines (another BLAS, another
GPU) needs a tolerance given with --atol/--rtol.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from patchc.compiler.errors import PatchcError
from patchc.outputs import MANIFEST, Folder


@dataclass
class Check:
    what: str  # "spec", "input FILE", "weights", "tokenizer", "NAME.csv", ...
    ok: bool
    detail: str = ""


@dataclass
class Verification:
    atol: float
    rtol: float
    checks: list[Check] = field(default_factory=list)
    echo: Callable[[str], None] | None = None  # called with each check's line as it is made

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def add(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, ok, detail))
        if self.echo is not None:
            self.echo(line(self.checks[-1]))


def line(c: Check) -> str:
    return f"{'ok  ' if c.ok else 'FAIL'} {c.what}: {c.detail}"


def tolerance_line(atol: float, rtol: float) -> str:
    exact = " (exact)" if atol == 0 and rtol == 0 else ""
    return (f"tolerance: |recorded - rerun| <= atol + rtol * |recorded|, atol = {atol:g}, "
            f"rtol = {rtol:g}{exact}; NaN matches NaN, inf matches inf")


def verdict(v: Verification) -> str:
    first = v.first_failure
    return ("verified" if v.ok else
            f"verification FAILED: first difference: {first.what}" if first else
            "verification FAILED: nothing was compared")


def _close(x: float, y: float, atol: float, rtol: float) -> bool:
    if x == y or (math.isnan(x) and math.isnan(y)):
        return True  # equal, both the same inf, or NaN at the same place
    return abs(x - y) <= atol + rtol * abs(x)  # False for NaN/inf against anything else


def compare_frames(old: pd.DataFrame, new: pd.DataFrame, atol: float, rtol: float
                   ) -> tuple[bool, str]:
    """Whether two tables match under the tolerance; the detail names the first difference
    and the largest numeric one."""
    if list(old.columns) != list(new.columns) or len(old) != len(new):
        return False, (f"shape differs: recorded {len(old)} rows {list(old.columns)}, "
                       f"rerun {len(new)} rows {list(new.columns)}")
    worst, bad, first, texts, nans = 0.0, 0, "", 0, 0
    for col in old.columns:
        a, b = old[col], new[col]
        numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)
        for i, (x, y) in enumerate(zip(a, b)):
            if numeric:
                x, y = float(x), float(y)
                ok = _close(x, y, atol, rtol)
                if not (math.isnan(x) or math.isnan(y)) and x != y:
                    worst = max(worst, abs(x - y))
                nans += not ok and (math.isnan(x) != math.isnan(y))
            else:
                ok = str(x) == str(y)
                texts += not ok
            if not ok:
                bad += 1
                first = first or f"row {i} column {col}: recorded {x!r}, rerun {y!r}"
    if bad:
        # (a text cell has no |diff|: a recorded number edited into a word is one of these)
        numbers = f"max |diff| = {worst:.3g}" if bad > texts + nans else ""
        words = f"{texts} of them text or not a number" if texts else ""
        missing = f"{nans} of them NaN on one side only" if nans else ""
        return False, f"{bad} cell(s) differ, first at {first}; " + \
            "; ".join(x for x in (numbers, words, missing) if x)
    return True, f"{len(old)} rows, max |diff| = {worst:.3g}"


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a table of no columns (its measures are all text(N))
        return pd.DataFrame()


def _compare_csv(old: Path, new: Path, atol: float, rtol: float) -> tuple[bool, str]:
    try:
        recorded = _read_csv(old)
    except (ValueError, UnicodeDecodeError, OSError) as e:  # empty, malformed, unreadable
        return False, f"the recorded CSV cannot be read: {str(e).splitlines()[0]}"
    return compare_frames(recorded, _read_csv(new), atol, rtol)


def _compare_safetensors(old: Path, new: Path, atol: float, rtol: float
                         ) -> tuple[bool, str]:
    from safetensors.torch import load_file

    try:
        recorded = load_file(str(old))
    except Exception as e:  # noqa: BLE001 - any corruption of the recorded file is a FAIL
        return False, f"the recorded file cannot be read: {str(e).splitlines()[0]}"
    rerun = load_file(str(new))
    if sorted(recorded) != sorted(rerun):
        return False, f"tensors differ: recorded {sorted(recorded)}, rerun {sorted(rerun)}"
    for key in sorted(recorded):
        a, b = recorded[key].double(), rerun[key].double()
        if a.shape != b.shape:
            return False, f"{key}: shape {tuple(a.shape)} recorded, {tuple(b.shape)} rerun"
        same = (a == b) | (a.isnan() & b.isnan()) | ((a - b).abs() <= atol + rtol * a.abs())
        if not bool(same.all()):
            n = int((~same).sum())
            return False, f"{key}: {n} value(s) differ"
    return True, f"{len(recorded)} tensor(s)"


def _compare_file(old: Path, new: Path, atol: float, rtol: float) -> tuple[bool, str]:
    if old.name.endswith(".csv"):
        return _compare_csv(old, new, atol, rtol)
    if old.name.endswith(".safetensors"):
        return _compare_safetensors(old, new, atol, rtol)
    same = old.read_bytes() == new.read_bytes()
    return same, "identical" if same else "contents differ"


def _listed(manifest: Any) -> set[str]:
    """Files the manifest accounts for (besides manifest.json and the PNGs)."""
    return {f for f in manifest.files if not f.endswith(".png")} | \
        {f"{t}.csv" for t in manifest.tables}


def verify_dir(out_dir: str | Path, atol: float = 0.0, rtol: float = 0.0,
               spec_dir: str | None = None, echo: Callable[[str], None] | None = None,
               **run_kwargs) -> Verification:
    """Verify a result folder (see the module docstring); `echo` gets each check's line as
    it is made, so the hash checks show even when the rerun then fails."""
    from patchc.compiler.parse import parse
    from patchc.manifest import hash_inputs, load_manifest, sha256_text, spec_files
    from patchc.runner import execute

    d = Path(out_dir)
    m = load_manifest(d)
    v = Verification(atol, rtol, echo=echo)
    ok = sha256_text(m.spec_text) == m.spec_sha256
    v.add("spec", ok, "spec_text matches spec_sha256" if ok else
          "spec_text does not match spec_sha256: the recorded spec was edited")
    on_disk = Path(m.spec_file)
    if ok and on_disk.is_file():  # (what is rerun is the recorded text; say if they parted)
        try:
            edited = sha256_text(on_disk.read_text("utf-8")) != m.spec_sha256
        except (OSError, UnicodeDecodeError):
            edited = True
        if edited:
            v.add("spec file", True, f"{on_disk} has changed since the run; the recorded "
                  "spec_text is what is rerun")
    base = Path(spec_dir) if spec_dir else Path(m.spec_dir)
    if not base.is_dir() and spec_dir:
        raise PatchcError("E603", f"--spec-dir {base} is not a folder here",
                          hint="pass the folder the spec was run from (its relative paths "
                               "resolve against it)")
    if not base.is_dir():
        raise PatchcError("E603", f"the spec's folder {base} is not here; relative paths in "
                          "the spec resolve against it", hint="pass --spec-dir FOLDER")
    spec = parse(m.spec_text, m.spec_file, str(base))
    model_line = next((s.model_id for s in spec.statements if hasattr(s, "model_id")), None)
    v.add("model", model_line == m.model_id, f"model_id {m.model_id!r}" if
          model_line == m.model_id else f"model_id {m.model_id!r} but the recorded spec's "
          f"model line is {model_line!r}")
    now = hash_inputs(spec_files(spec, m.options.get("device_map")), str(base))
    for name in sorted(set(now) | set(m.inputs)):
        old, new = m.inputs.get(name), now.get(name)
        detail = ("unchanged" if old == new else
                  "not recorded in the manifest" if old is None else
                  "recorded but the spec does not read it" if new is None else
                  "missing now" if new == "missing" else
                  f"changed since the run (sha256 {old[:12]}... recorded, {new[:12]}... now)")
        v.add(f"input {name}", old == new, detail)
    overrides = {k: m.options[k] for k in ("dtype", "device", "seed", "batch_size")
                 if m.options.get(k) is not None}
    run_kwargs.setdefault("naive", m.interpreter == "naive")
    results = _rerun(execute, spec, overrides, m.threads, run_kwargs)
    for what in ("weights", "tokenizer"):
        old, new = getattr(m, f"{what}_sha256"), results.manifest[f"{what}_sha256"]
        v.add(what, old == new, "sha256 matches" if old == new else
              f"sha256 differs: {old[:12]}... recorded, {new[:12]}... in the rerun")
    for name in sorted(set(m.tables) | set(results.tables)):
        if name in m.tables and name in results.tables:
            rec = {k: m.tables[name].get(k) for k in ("rows", "columns", "keys")}
            new = {k: results.manifest["tables"][name].get(k) for k in rec}
            if rec != new:
                v.add(f"table {name}", False, f"manifest entry {rec} differs from the "
                      f"rerun's {new}")
                continue
            # What the figures are drawn from (titles, scales, baselines): as the rerun's
            where = _differs(m.tables[name], results.manifest["tables"][name], v.atol, v.rtol,
                             skip=("seconds",))
            if where:
                v.add(f"table {name}", False, f"the manifest's description of it differs "
                      f"from the rerun's at {where}")
        elif name in results.tables:
            v.add(f"table {name}", False, "the rerun makes this table; the manifest does not "
                  "list it")
    _compare_outputs(v, d, m, results)
    return v


def _differs(a: Any, b: Any, atol: float, rtol: float, skip: tuple[str, ...] = (),
             at: str = "") -> str | None:
    """Where two JSON values first differ (numbers within the tolerance; None: alike)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in skip:
                continue
            if k not in a or k not in b:
                return f"{at}.{k}".lstrip(".")
            got = _differs(a[k], b[k], atol, rtol, at=f"{at}.{k}")
            if got:
                return got
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return at.lstrip(".") or "(list length)"
        return next((w for i, (x, y) in enumerate(zip(a, b))
                     if (w := _differs(x, y, atol, rtol, at=f"{at}[{i}]"))), None)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return None if _close(float(a), float(b), atol, rtol) else at.lstrip(".")
    return None if a == b else at.lstrip(".")


def _rerun(execute: Any, spec: Any, overrides: dict, threads: int, run_kwargs: dict) -> Any:
    """The rerun, on as many threads as the run had: torch splits float sums over its
    threads, so another count changes the last bits of a result."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return execute(spec, overrides=overrides, **run_kwargs)
    finally:
        torch.set_num_threads(before)


def _compare_outputs(v: Verification, d: Path, m: Any, results: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="patchc-verify-") as tmp:
        rerun = Folder(Path(tmp))
        results.write_files(rerun)
        produced = set(rerun.names)
        present = {p.name for p in d.iterdir() if p.is_file() and p.name != MANIFEST
                   and not p.name.endswith(".png") and not p.name.startswith(".")}
        listed = _listed(m)
        for name in sorted(produced | present | listed):
            if name in m.beside and name not in produced | listed:
                v.add(name, True, "not part of the result: a file of yours it was written "
                      "beside (--force)")
            elif name not in produced:
                v.add(name, False, "the rerun writes no such file")
            elif name not in present:
                v.add(name, False, "listed in the manifest but missing" if name in listed
                      else "missing from the result folder")
            else:
                ok, detail = _compare_file(d / name, rerun.dir / name, v.atol, v.rtol)
                if name not in listed:
                    ok, detail = False, f"not listed in the manifest ({detail})"
                v.add(name, ok, detail)


def render(v: Verification) -> str:
    """The report `patchc verify` prints: the tolerance, one line per check, the verdict."""
    return "\n".join([tolerance_line(v.atol, v.rtol), *map(line, v.checks), verdict(v)])
