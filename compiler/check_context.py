"""The state of one `check`: what is declared, what has been resolved, and the diagnostics
collected so far.

check.py and the check_*.py helpers share one Context. Diagnostics are collected, never
raised one by one, so that a spec with five mistakes reports five errors; `catch()` turns a
CheckError raised by a helper (resolve.py raises on the first problem of one site) into one
collected diagnostic and lets checking go on with the next statement or site.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from . import ast as A
from .checked import DataTable, RunInfo
from .dictionaries import DeclarationFailed
from .errors import NO_SPAN, CheckError, PatchcError, Source, Span, Warning_
from .modelspec import ModelSpec
from .resolve import Expansions
from .tokens import TokenizerLike

# What each declaration kind is called in messages (`... cannot name a run`).
KIND_WORD = {"data": "data table", "run": "run", "metric": "metric", "vector": "vector",
             "dictionary": "dictionary", "table": "result table"}


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A `did you mean X?` hint for a misspelt name, or None if nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


@dataclass
class Context:
    source: Source
    model: ModelSpec | None = None
    model_id: str | None = None  # as the `model` statement names it
    tokenizer: TokenizerLike | None = None
    # name -> kind ("data", "run", "metric", "vector") of every declaration, resolved or not
    declared: dict[str, str] = field(default_factory=dict)
    owners: dict[str, object] = field(default_factory=dict)  # name -> the statement owning it
    data: dict[str, DataTable] = field(default_factory=dict)
    runs: dict[str, RunInfo] = field(default_factory=dict)
    metrics: dict[str, A.MetricDecl] = field(default_factory=dict)
    vectors: dict[str, A.VectorDecl] = field(default_factory=dict)
    vector_dims: dict[str, int] = field(default_factory=dict)
    errors: list[PatchcError] = field(default_factory=list)
    warnings: list[PatchcError] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # keys of checks done once per spec
    # The site patterns' matches as check expanded them (lowering reuses them).
    sites: Expansions = field(default_factory=Expansions)
    _warned: set[str] = field(default_factory=set)

    @property
    def base_dir(self) -> str:
        return self.source.base_dir

    # -- diagnostics -----------------------------------------------------------------------
    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.errors.append(CheckError(code, message, span, self.source, hint))

    def warn(self, code: str, message: str, span: Span, hint: str | None = None,
             once: str | None = None) -> None:
        """A warning; with `once`, only the first warning with that key is kept."""
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        self.warnings.append(Warning_(code, message, span, self.source, hint))

    @contextmanager
    def catch(self, span: Span | None = None) -> Iterator[None]:
        """Collect a CheckError raised inside (located at `span` if it has no location)."""
        try:
            yield
        except DeclarationFailed:
            pass  # reported at the dictionary's declaration
        except CheckError as e:
            if span is not None and e.span == NO_SPAN:
                e = CheckError(e.code, e.message, span, self.source, e.hint)
            self.errors.append(e.with_source(self.source))

    # -- references ------------------------------------------------------------------------
    def _lookup(self, kind: str, name: str, span: Span) -> bool:
        """Is `name` a declared `kind`? Reports E309-E313 if it is not. False also when it is
        declared but could not be resolved (its own error was reported already)."""
        found = self.declared.get(name)
        if found == kind:
            return True
        code = {"run": "E309", "data": "E310", "metric": "E312", "vector": "E313"}[kind]
        if found is not None:
            hint = f"{name} is a {KIND_WORD[found]}, declared with `{found} {name} = ...`"
        else:
            known = [n for n, k in self.declared.items() if k == kind]
            hint = did_you_mean(name, known) or (
                f"declared {KIND_WORD[kind]}s: {', '.join(known)}" if known else
                f"declare it first: `{kind} {name} = ...`")
        self.error(code, f"unknown {KIND_WORD[kind]} `{name}`", span, hint)
        return False

    def run(self, name: str, span: Span) -> RunInfo | None:
        """The RunInfo of a referenced run, or None (an error is reported if undeclared)."""
        return self.runs.get(name) if self._lookup("run", name, span) else None

    def has_run(self, name: str, span: Span) -> bool:
        return self._lookup("run", name, span)

    def metric(self, name: str, span: Span) -> A.MetricDecl | None:
        return self.metrics.get(name) if self._lookup("metric", name, span) else None

    def vector(self, name: str, span: Span) -> A.VectorDecl | None:
        return self.vectors.get(name) if self._lookup("vector", name, span) else None

    def column(self, ref: A.ColumnRef) -> list | None:
        """The values of `data.column`, or None after reporting E310/E311."""
        s = ref.span
        data_span = Span(s.line, s.col, s.line, s.col + len(ref.data))
        if not self._lookup("data", ref.data, data_span):
            return None
        table = self.data.get(ref.data)
        if table is None:
            return None  # the data statement failed; it has its own error
        if ref.column not in table.columns:
            cols = ", ".join(table.columns)
            hint = did_you_mean(ref.column, table.columns) or f"its columns are {cols}"
            col_span = Span(s.line, s.col + len(ref.data) + 1, s.end_line, s.end_col)
            self.error("E311", f"data `{ref.data}` has no column `{ref.column}`", col_span,
                       hint)
            return None
        return [row[ref.column] for row in table.rows]
