"""Diagnostics: the one error hierarchy of patchc and how a diagnostic is printed.

Every user-facing error carries a Span from the parser, so it prints as

    spec.patch:3:7: error[E201]: model has 12 layers (L0..L11); got L12
      3 | swap L12.H3.z from clean into corrupt
        |      ^^^^^^^^

The codes are listed in docs/errors.md. `patchc.PatchcError` re-exports the root class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class Span:
    """A region of the spec text. Lines and columns are 1-based; `end_col` is exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def point(line: int, col: int) -> "Span":
        return Span(line, col, line, col + 1)

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.line, self.col, other.end_line, other.end_col)


NO_SPAN = Span(1, 1, 1, 1)


@dataclass(frozen=True, slots=True)
class Source:
    """The text of a spec and where it came from (for printing diagnostics)."""

    text: str
    filename: str = "<spec>"
    base_dir: str = "."

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 1 <= line <= len(lines) else ""


class PatchcError(Exception):
    """Root of every error patchc reports to a user. Has `code`, `line`, `col`, `span`."""

    kind = "error"

    def __init__(
        self,
        code: str,
        message: str,
        span: Span | None = None,
        source: Source | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.span = span or NO_SPAN
        self.source = source
        self.hint = hint

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def col(self) -> int:
        return self.span.col

    @property
    def errors(self) -> list["PatchcError"]:
        """All diagnostics this error stands for (one, unless it is a collection)."""
        return [self]

    def with_source(self, source: Source) -> "PatchcError":
        if self.source is None:
            self.source = source
        return self

    def render(self) -> str:
        return render_diagnostic(
            self.code, self.message, self.span, self.source, self.hint, self.kind
        )

    def __str__(self) -> str:
        return self.render()


class ParseError(PatchcError):
    """The text is not a well-formed spec."""


class CheckError(PatchcError):
    """The spec is well-formed but wrong: unknown names, sites the model lacks, bad data."""


class PlanError(PatchcError):
    """The checked spec cannot be planned (e.g. a cycle, a budget that nothing fits)."""


class RuntimeInterventionError(PatchcError):
    """Something failed while running the plan on a model."""


class Warning_(PatchcError):
    """A diagnostic that does not stop compilation (printed with `warning[...]`)."""

    kind = "warning"


class SpecErrors(PatchcError):
    """Several diagnostics collected from one spec; behaves like its first error."""

    def __init__(self, errors: Iterable[PatchcError]) -> None:
        errs = sorted(errors, key=lambda e: (e.span.line, e.span.col))
        if not errs:
            raise ValueError("SpecErrors needs at least one error")
        first = errs[0]
        super().__init__(first.code, first.message, first.span, first.source, first.hint)
        self._errors = errs

    @property
    def errors(self) -> list[PatchcError]:
        return list(self._errors)

    def with_source(self, source: Source) -> "PatchcError":
        for e in self._errors:
            e.with_source(source)
        return super().with_source(source)

    def render(self) -> str:
        return "\n".join(e.render() for e in self._errors)


def render_diagnostic(
    code: str,
    message: str,
    span: Span,
    source: Source | None,
    hint: str | None = None,
    kind: str = "error",
) -> str:
    """Format one diagnostic: location header, the source line and a caret under the span."""
    filename = source.filename if source else "<spec>"
    out = [f"{filename}:{span.line}:{span.col}: {kind}[{code}]: {message}"]
    if source is not None:
        text = source.line_text(span.line)
        if text or span.line == 1:
            gutter = str(span.line)
            # A span over several lines is underlined to the end of its first line.
            end = span.end_col if span.end_line == span.line else len(text) + 1
            width = max(1, end - span.col)
            out.append(f" {gutter} | {text}")
            out.append(f" {' ' * len(gutter)} | {' ' * (span.col - 1)}{'^' * width}")
    if hint:
        out.append(f"   = hint: {hint}")
    return "\n".join(out)
