"""Diagnostics: the one error hierarchy of patchc and how a diagnostic is printed.

Every user-facing error carries a Span from the parser, so it prints as

    spec.patch:3:7: error[E201]: model has 12 layers (L0..L11); got L12
      3 | swap L12.H3.z from clean into corrupt
        |      ^^^^^^^^

The codes are listed in docs/errors.md. `patchc.PatchcError` re-exports the root class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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


# A diagnostic without a place in the spec (a missing file, a command-line flag): printed as
# `FILE: error[...]` with no line, column or source excerpt. Real spans are never empty.
NO_SPAN = Span(1, 1, 1, 1)


@dataclass(frozen=True, slots=True)
class Source:
    """The text of a spec and where it came from (for printing diagnostics)."""

    text: str
    filename: str = "<spec>"
    base_dir: str = "."

    def line_text(self, line: int) -> str:
        """Line `line` (1-based) as the parser counts lines: only `\\n` ends one."""
        lines = _lines(self.text)
        return lines[line - 1] if 1 <= line <= len(lines) else ""

    def last_position(self) -> tuple[int, int]:
        """(line, col) just past the last character that is not a line break or blank."""
        lines = split_lines(self.text.rstrip())
        return len(lines), len(lines[-1]) + 1


@lru_cache(maxsize=4)
def _lines(text: str) -> tuple[str, ...]:
    """split_lines, once per text: a spec with many errors renders each against it."""
    return tuple(split_lines(text))


def split_lines(text: str) -> list[str]:
    """The lines of `text` as Lark counts them: split at `\\n` only (a form feed, NEL or
    U+2028 inside a comment does not start a line; `str.splitlines()` would say it does).
    A `\\r` before the `\\n` is dropped. Every line number in patchc is counted this way."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


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
    """Several diagnostics collected from one spec; behaves like its first error. The
    warnings found beside them are rendered with them, in spec order."""

    def __init__(self, errors: Iterable[PatchcError],
                 warnings: Iterable[PatchcError] = ()) -> None:
        errs = sorted(errors, key=lambda e: (e.span.line, e.span.col))
        if not errs:
            raise ValueError("SpecErrors needs at least one error")
        first = errs[0]
        super().__init__(first.code, first.message, first.span, first.source, first.hint)
        self._errors = errs
        self._warnings = list(warnings)

    @property
    def errors(self) -> list[PatchcError]:
        return list(self._errors)

    def with_source(self, source: Source) -> "PatchcError":
        for e in self._errors + self._warnings:
            e.with_source(source)
        return super().with_source(source)

    def render(self) -> str:
        both = sorted(self._errors + self._warnings, key=lambda e: (e.span.line, e.span.col))
        return "\n".join(e.render() for e in both)


def render_diagnostic(
    code: str,
    message: str,
    span: Span,
    source: Source | None,
    hint: str | None = None,
    kind: str = "error",
) -> str:
    """Format one diagnostic: location header, the source line and a caret under the span.
    A diagnostic at NO_SPAN has no place in the spec and prints `FILE: error[...]` alone."""
    filename = source.filename if source else "<spec>"
    if span == NO_SPAN:  # about no spec at all (a result folder, say): named as patchc's own
        who = source.filename if source else "patchc"
        return _with_hint(f"{who}: {kind}[{code}]: {_clip(message)}", hint)
    out = [f"{filename}:{span.line}:{span.col}: {kind}[{code}]: {_clip(message)}"]
    if source is not None:
        text = source.line_text(span.line)
        if text.strip() or span.line == 1:
            # A span over several lines is underlined to the end of its first line.
            end = span.end_col if span.end_line == span.line else len(text) + 1
            shown, col, width = _excerpt(text, span.col, max(1, end - span.col))
            gutter = str(span.line)
            out.append(f" {gutter} | {shown}")
            out.append(f" {' ' * len(gutter)} | {' ' * (col - 1)}{'^' * width}")
    return _with_hint("\n".join(out), hint)


def _with_hint(text: str, hint: str | None) -> str:
    return f"{text}\n   = hint: {_clip(hint)}" if hint else text


# How much of a source line and of a message a diagnostic shows: a 1 MB line or a message
# naming thousands of things is cut to a window around the caret / its start.
EXCERPT_WIDTH = 100
MESSAGE_WIDTH = 400


def _clip(message: str) -> str:
    message = _printable(message, keep_newlines=True)
    if len(message) <= MESSAGE_WIDTH:
        return message
    return f"{message[:MESSAGE_WIDTH]}... ({len(message) - MESSAGE_WIDTH} more characters)"


def _printable(text: str, keep_newlines: bool = False) -> str:
    """Control and separator characters (a form feed, NEL, U+2028, a lone surrogate) would
    break the line or the terminal's encoding: each becomes one U+FFFD, so that the caret's
    column stays right."""
    keep = "\t\n" if keep_newlines else "\t"
    return "".join(c if (c.isprintable() or c in keep) and not 0xD800 <= ord(c) <= 0xDFFF
                   else "\ufffd" for c in text)


def _excerpt(text: str, col: int, width: int) -> tuple[str, int, int]:
    """The part of `text` to show around columns col..col+width, the caret's column in that
    part, and the caret's width (both clipped to the window)."""
    width = min(width, EXCERPT_WIDTH)
    if len(text) <= EXCERPT_WIDTH:
        return _printable(text), col, width
    start = max(0, min(col - 1 - EXCERPT_WIDTH // 3, len(text) - EXCERPT_WIDTH))
    window = text[start:start + EXCERPT_WIDTH]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + EXCERPT_WIDTH < len(text) else ""
    return prefix + _printable(window) + suffix, col - start + len(prefix), width
