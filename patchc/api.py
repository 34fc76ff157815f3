"""The Python API: `patchc.compile(path_or_source) -> Program` and `patchc.run(...) -> Results`.

A Program is a spec that parsed, checked against the model's shape and lowered to IR; it
knows its result tables and how many rows (experiments) each will have. `compile` loads no
weights and never imports torch; `run` (patchc/runner.py, execution.py) does both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from patchc.compiler import ast as A
from patchc.compiler.check import check
from patchc.compiler.checked import CheckedSpec
from patchc.compiler.errors import PatchcError
from patchc.compiler.ir import IRGraph
from patchc.compiler.lower import lower
from patchc.compiler.modelspec import ModelSpec
from patchc.compiler.parse import looks_like_path, parse, parse_file
from patchc.compiler.pipeline import optimize

if TYPE_CHECKING:
    from patchc.results import Results


class PatchcWarning(UserWarning):
    """A patchc warning (W###) raised through Python's warnings by `run`; the diagnostic
    itself is in `Results.warnings`."""


@dataclass(frozen=True)
class Program:
    """A compiled spec: its AST, what checking learned, and the IR (unoptimized and
    optimized)."""

    spec: A.Spec
    checked: CheckedSpec
    ir: IRGraph
    optimized: IRGraph

    @property
    def tables(self) -> list[str]:
        return [t.name for t in self.ir.tables]

    @property
    def experiments(self) -> dict[str, int]:
        """Rows each result table will have, by table name."""
        return {t.name: len(t.rows) for t in self.ir.tables}

    @property
    def warnings(self) -> list[PatchcError]:
        return list(self.checked.warnings)


def load_spec(path_or_source: str | os.PathLike[str]) -> A.Spec:
    """Parse a spec given as a file path or as spec text.

    A one-line string that ends in `.patch`, names something on disk or has no whitespace
    is a path (`looks_like_path`); anything else is spec text, whose relative paths resolve
    against the working directory.
    """
    if isinstance(path_or_source, os.PathLike):
        return parse_file(path_or_source)
    text = str(path_or_source)
    if looks_like_path(text):
        return parse_file(text)
    return parse(text, "<spec>", os.getcwd())


def compile(  # noqa: A001 - the public name (docs/language.md §12)
    path_or_source: str | os.PathLike[str], model_spec: ModelSpec | None = None
) -> Program:
    """Parse, check and lower a spec. Raises PatchcError (often SpecErrors, holding every
    diagnostic) for anything wrong with it. `model_spec` skips reading the model's config."""
    spec = load_spec(path_or_source)
    checked = check(spec, model_spec)
    try:
        ir = lower(checked)
        optimized = optimize(ir)
    except PatchcError as e:
        raise e.with_source(spec.source) from None
    return Program(spec, checked, ir, optimized)


def run(
    path_or_source: str | os.PathLike[str],
    model: Any = None,
    tokenizer: Any = None,
    naive: bool = False,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | str = 1,
    saes: dict[str, Any] | None = None,
    **overrides: Any,
) -> "Results | None":
    """Compile and execute a spec; returns Results (`results["NAME"]` is a DataFrame).

    `model`/`tokenizer`: an already loaded HF causal LM and its tokenizer (notebook use);
    otherwise the spec's `model` is loaded. `overrides` replace `set` options (dtype,
    device, seed, batch_size, memory, device_map). `trust_remote_code` is never read from
    a spec. `naive=True` runs the reference interpreter (one forward per experiment).
    `workers=N` shards the plan over N processes (this one and N-1 it starts);
    `workers="torchrun"` uses the processes torchrun started, and returns Results on rank 0
    only (None elsewhere). See docs/scaling.md. `saes={"s1": sae}`: SAELens `SAE` objects
    (or transcoders) that stand in for the folders of the spec's `sae`/`transcoder`
    declarations of those names (their cfg and weights are used; the folder is not read).
    """
    from patchc.runner import execute

    import warnings

    spec = load_spec(path_or_source)
    results = execute(spec, model=model, tokenizer=tokenizer, naive=naive,
                      trust_remote_code=trust_remote_code, progress=progress,
                      overrides=overrides, workers=workers, saes=saes)
    for w in results.warnings if results is not None else []:
        warnings.warn(w.render(), PatchcWarning, stacklevel=2)
    return results
