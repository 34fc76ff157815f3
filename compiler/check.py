"""The checker: a parsed Spec + the model's shape -> CheckedSpec, or every error at once.

`check(spec)` reads the model's config (never its weights) and its tokenizer.json, then
checks the spec statement by statement. It never stops at the first error: each check that
fails is collected and checking goes on with whatever does not depend on it, so that one run
of `patchc check` lists every mistake, in line order (SpecErrors).

The work is split by concept:
  check_names.py    keywords, duplicate names, reference cycles
  check_context.py  shared state, diagnostics, name lookups with "did you mean"
  check_runs.py     prompts, token counts, baked interventions, aligned runs
  check_sites.py    site patterns, positions, captures, `where`, GQA warnings
  check_vectors.py  vector sizes and files
  check_metrics.py  metric expressions and answer tokens
  check_ops.py      operations
Error codes are listed in docs/errors.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pydantic import ValidationError

from . import ast as A
from . import device_map
from .check_circuits import check_circuit, check_evaluate, warn_circuit_sizes
from .check_context import Context, did_you_mean
from .check_dicts import check_dictionaries
from .check_limits import check_chains
from .check_metrics import check_decl, metric_refs
from .check_names import declare, find_cycle
from .check_outputs import check_output_names
from .check_ops import check_operation
from .check_runs import check_interventions, resolve_run, run_deps
from .check_vectors import VectorChecker, vector_deps
from .checked import CheckedSpec, Options
from .data import load_data
from .errors import CheckError, Source, Span, SpecErrors
from .modelspec import ModelSpec, load_model_spec
from .tokens import LightTokenizer, as_tokenizer, load_tokenizer


class _Auto:
    """The default of `check(tokenizer=...)`: read the model's tokenizer.json."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()

_DECL_KIND = {A.DataDecl: "data", A.RunDecl: "run", A.MetricDecl: "metric",
              A.VectorDecl: "vector", A.DictDecl: "dictionary"}


def check(spec: A.Spec, model: ModelSpec | None = None, tokenizer: Any = AUTO,
          dictionaries: dict[str, dict[str, Any]] | None = None) -> CheckedSpec:
    """Check a spec against a model. `model`: its ModelSpec (read from the spec's `model`
    statement when None). `tokenizer`: AUTO reads the model's tokenizer.json; None skips
    token-length checks; or anything with `encode(text)` (an HF tokenizer works).
    `dictionaries`: cfg.json contents by dictionary name, read instead of those folders
    (SAELens objects given to patchc.run).

    Raises SpecErrors holding every error, sorted by position."""
    ctx = Context(spec.source)
    stmts = spec.statements
    decl = _model_statement(ctx, stmts)
    if model is None and decl is not None:
        with ctx.catch(model_path_span(spec.source, decl)):  # (as a data file's errors point)
            model = load_model_spec(decl.model_id, decl.revision, ctx.base_dir)
    ctx.model = model
    ctx.model_id = decl.model_id if decl is not None else None
    if model is not None and model.inferred and decl is not None:
        ctx.warn("W210", f"model_type '{model.family}' is not in patchc's family table: its "
                 f"layout is inferred from the config ({model.norm}, {model.positional} "
                 f"positions, {'parallel' if model.parallel_attn else 'sequential'} blocks) "
                 "and checked on the loaded weights before anything runs",
                 model_path_span(spec.source, decl),
                 hint="a layout that does not hold is refused then (E401), with what differs")
    if tokenizer is AUTO:
        tokenizer = None
        if decl is not None:
            tokenizer = load_tokenizer(decl.model_id, decl.revision, ctx.base_dir)
            _tokenizer_fits(ctx, decl, tokenizer)
    ctx.tokenizer = as_tokenizer(tokenizer)

    options = _options(ctx, [s for s in stmts if isinstance(s, A.SetDecl)])
    _declare_all(ctx, stmts)
    # Dictionaries first: their latents are sites for everything below (ctx.model gains them).
    check_dictionaries(ctx, [s for s in stmts if isinstance(s, A.DictDecl) and _owns(ctx, s)],
                       dictionaries or {})
    for s in stmts:
        if isinstance(s, A.DataDecl) and _owns(ctx, s):
            with ctx.catch(s.span):
                ctx.data[s.name.value] = load_data(s, ctx.base_dir, ctx.source)
    runs = [s for s in stmts if isinstance(s, A.RunDecl) and _owns(ctx, s)]
    for r in runs:
        info = resolve_run(ctx, r)
        if info is not None:
            ctx.runs[r.name.value] = info
    if ctx.tokenizer is None and decl is not None and _no_tokenizer_files(ctx, decl):
        folder = os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(decl.model_id)))
        ctx.error("E472", f"the model folder {folder} has no tokenizer (no tokenizer.json, "
                  "tokenizer_config.json, vocab or sentencepiece file): prompts cannot be "
                  "turned into tokens", decl.span,
                  hint="save the tokenizer beside the weights: "
                  "tokenizer.save_pretrained(FOLDER)")
    elif ctx.tokenizer is None and runs and decl is not None and model is not None:
        # (no model: its error says why, and the tokenizer's absence is part of it)
        ctx.warn("W300", "no tokenizer.json could be read for this model: token counts, "
                 "positions and answer tokens were not checked", decl.span,
                 hint="check a local model directory that holds tokenizer.json")

    vectors = VectorChecker(ctx)
    for s in stmts:
        if isinstance(s, A.VectorDecl) and _owns(ctx, s):
            vectors.declared(s)
        elif isinstance(s, A.MetricDecl) and _owns(ctx, s):
            check_decl(ctx, s)
    for r in runs:
        check_interventions(ctx, r, vectors)
    circuits: dict[str, A.CircuitDecl] = {}
    for s in stmts:
        if isinstance(s, A.CircuitDecl):
            check_circuit(ctx, s, spec, circuits)
            circuits.setdefault(s.name.value, s)
    for op in spec.operations():
        if isinstance(op, A.Evaluate):
            check_evaluate(ctx, op, circuits, spec)
        else:
            check_operation(ctx, op, vectors)
    check_output_names(ctx, spec)
    if not _cycles(ctx, runs):
        check_chains(ctx, runs)

    if ctx.errors:
        raise SpecErrors(ctx.errors, ctx.warnings).with_source(spec.source)
    assert ctx.model is not None  # a missing model is an error above
    checked = CheckedSpec(spec, ctx.model, options, dict(ctx.data), dict(ctx.runs),
                          dict(ctx.metrics), dict(ctx.vectors), tuple(ctx.warnings),
                          dict(ctx.vector_dims), ctx.tokenizer, ctx.sites)
    if circuits:  # a size that keeps no row, or the rows of another: known from the counts
        warn_circuit_sizes(ctx, checked)
        checked = dataclasses.replace(checked, warnings=tuple(ctx.warnings))
    return checked


def _model_statement(ctx: Context, stmts: tuple[A.Statement, ...]) -> A.ModelDecl | None:
    """Exactly one `model` statement (E300, E301)."""
    models = [s for s in stmts if isinstance(s, A.ModelDecl)]
    if not models:
        ctx.error("E300", "the spec has no `model` statement", Span(1, 1, 1, 2),
                  hint='add one line, e.g. `model "gpt2"` or `model "path/to/model"`')
        return None
    for extra in models[1:]:
        ctx.error("E301", f"a spec has exactly one `model` statement; the first is on line "
                  f"{models[0].span.line}", Span(extra.span.line, extra.span.col,
                                                 extra.span.line, extra.span.col + 5))
    return models[0]


# The files any tokenizer transformers can load is saved as (fast, BPE, WordPiece,
# sentencepiece); a local model folder with weights and none of them has no tokenizer at
# all, and transformers 5 would then build an empty one (every prompt tokenizes to nothing).
# A folder of config.json alone is checked with a warning (W300): its shapes can be checked
# before any weight or tokenizer is downloaded.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def _no_tokenizer_files(ctx: Context, decl: A.ModelDecl) -> bool:
    folder = os.path.join(ctx.base_dir, os.path.expanduser(decl.model_id))
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    weights = any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)
    return weights and not names & set(_TOKENIZER_FILES)


def _tokenizer_fits(ctx: Context, decl: A.ModelDecl, tokenizer: LightTokenizer | None) -> None:
    """The model folder's tokenizer.json is readable and has no id past the model's
    vocabulary (the embedding has no row for it) (E215)."""
    if tokenizer is None:
        path = os.path.join(ctx.base_dir, os.path.expanduser(decl.model_id), "tokenizer.json")
        if os.path.isfile(path):
            ctx.error("E215", f"the model's tokenizer.json cannot be read: {path}",
                      model_path_span(ctx.source, decl),
                      hint="save the tokenizer again (tokenizer.save_pretrained)")
        return
    if ctx.model is None:
        return
    ids = tokenizer.tok.get_vocab(with_added_tokens=True).values()
    top = max(ids, default=-1)
    if top >= ctx.model.vocab_size:
        ctx.error("E215", f"the model's tokenizer has token ids up to {top}, but its config "
                  f"has vocab_size {ctx.model.vocab_size}", model_path_span(ctx.source, decl),
                  hint="use the tokenizer saved with these weights")


def _options(ctx: Context, sets: list[A.SetDecl]) -> Options:
    """`set NAME = VALUE` -> Options; each bad option is its own error (E302, E306, E308)."""
    fields = list(Options.model_fields)
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for s in sets:
        name, value = s.name.value, s.value
        if name not in fields:
            hint = did_you_mean(name, fields)
            ctx.error("E302", f"unknown option `{name}`; options are {', '.join(fields)}",
                      s.name.span, hint)
            continue
        if name in lines:
            ctx.error("E308", f"option `{name}` is already set on line {lines[name]}",
                      s.name.span)
            continue
        lines[name] = s.span.line
        if isinstance(value, bool):  # pydantic would read true as 1
            ctx.error("E306", f"invalid value for `{name}`: {str(value).lower()}", s.span)
            continue
        try:
            Options(**{name: value})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            ctx.error("E306", f"invalid value for `{name}`: {repr(value)[:60]} ({msg})", s.span)
            continue
        if name == "device_map":
            try:  # a map file is read now: a bad one fails before any weight loads
                device_map.resolve(value, ctx.base_dir)
            except ValueError as e:
                ctx.error("E353", str(e), s.span, "see `set device_map` in docs/scaling.md")
                continue
        values[name] = value
    return Options(**values)


def _owns(ctx: Context, s: Any) -> bool:
    """Is `s` the declaration that owns its name (not a rejected duplicate)?"""
    return ctx.owners.get(s.name.value) is s


def _declare_all(ctx: Context, stmts: tuple[A.Statement, ...]) -> None:
    """Names of declarations (one namespace) and of result tables (another)."""
    seen: dict[str, tuple[str, int]] = {}
    for s in stmts:
        kind = _DECL_KIND.get(type(s))
        if kind is None:
            continue
        ok = declare(ctx, s.name, kind, seen)  # type: ignore[union-attr]
        name = s.name.value  # type: ignore[union-attr]
        if ok:
            ctx.declared[name] = kind
            ctx.owners[name] = s
            if isinstance(s, A.MetricDecl):
                ctx.metrics[name] = s
            elif isinstance(s, A.VectorDecl):
                ctx.vectors[name] = s
    tables: dict[str, tuple[str, int]] = {}
    for op in (s for s in stmts if isinstance(s, A.OPERATIONS + (A.CircuitDecl,))):
        if isinstance(op, A.CircuitDecl):  # a circuit's table is named after it
            declare(ctx, op.name, "table", tables)
        elif op.clauses.name is not None:
            declare(ctx, op.clauses.name, "table", tables)
        else:
            tables.setdefault(A.table_name(op), ("table", op.span.line))


def _cycles(ctx: Context, runs: list[A.RunDecl]) -> bool:
    """Metrics that refer to themselves (E324); runs and vectors that read each other
    (E344): a run cannot read its own later value. True if there is a cycle."""
    metrics = ctx.metrics
    cycle = find_cycle(list(metrics), lambda n: [r for r in metric_refs(metrics[n].expr)
                                                 if r in metrics])
    found = bool(cycle)
    if cycle:
        first = metrics[cycle[0]]
        ctx.error("E324", f"metrics refer to each other in a cycle: {_chain(cycle)}",
                  first.name.span)
    decls: dict[tuple[str, str], Any] = {("run", r.name.value): r for r in runs}
    decls.update({("vector", n): v for n, v in ctx.vectors.items()})

    def deps(node: Any) -> list[tuple[str, str]]:
        d = decls[node]
        reads = run_deps(d) if node[0] == "run" else vector_deps(d.expr)
        return [x for x in reads if x in decls]

    cycle = find_cycle(list(decls), deps)
    if cycle:
        first = decls[cycle[0]]
        ctx.error("E344", "a run would read its own value: "
                  + _chain([f"{k} {n}" for k, n in cycle]), first.name.span,
                  hint="a run's baked interventions cannot depend on the run itself")
    return found or bool(cycle)


def _chain(names: list) -> str:
    """`a -> b -> a`; a cycle of thousands is named by its first and last few."""
    if len(names) <= 10:
        return " -> ".join(map(str, names))
    return (" -> ".join(map(str, names[:4])) + f" -> ... ({len(names) - 7} more) -> "
            + " -> ".join(map(str, names[-3:])))


def model_path_span(source: Source, decl: A.ModelDecl) -> Span:
    """The quoted path of a `model "..."` statement, where errors about the model's files
    point (the whole statement if its line holds no string)."""
    span = decl.span
    text = source.line_text(span.line)
    start = text.find('"', span.col - 1)
    end = text.find('"', start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        return span
    return Span(span.line, start + 1, span.line, end + 2)


__all__ = ["AUTO", "CheckError", "check", "model_path_span"]
