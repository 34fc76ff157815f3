"""The lowering state: `Lowerer` holds the IR graph being built and the caches that make
shared things (a run's base Forward, its baked Writes, a Read many rows use) one node, plus
the small types the per-operation lowering shares (Target, Exp, row keys, `where` filters).

Dependencies point one way: lower.py (the entry point) -> lower_ops.py / lower_observe.py
(one function per statement) -> this module -> lower_exprs.py. The one thing the state needs
from above, how a run's `with ...` interventions become Writes, is handed to it as a
function (`bake_writes`) by lower.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from . import ast as A
from . import printer
from .checked import CheckedSpec, Options
from .dictionaries import dict_width, is_dict_kind
from .errors import NO_SPAN, PlanError
from .ir import (
    Backward,
    Forward,
    IRGraph,
    Metric,
    Positions,
    Read,
    Row,
    Site,
    Table,
    Vector,
    Write,
)
from .lower_exprs import inline_vector, kl_runs, metric_parts, vmeans
from .modelspec import ModelSpec
from .resolve import Expansions, positions
from .sites import SITE_KINDS

Key = tuple[tuple[str, Any], ...]
LAST = Positions("last")


@dataclass(frozen=True, slots=True)
class Target:
    """One site an experiment writes: where, and the subspace (vector names) it is limited to."""

    site: Site
    pos: Positions
    subspace: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Exp:
    """One experiment of a sweep: its row key and the sites it intervenes on jointly."""

    key: Key
    targets: tuple[Target, ...]


_COMPARE = {">": lambda a, b: a > b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
            "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


class Lowerer:
    """Lowering state: the graph being built and caches that make shared things one node."""

    def __init__(self, checked: CheckedSpec,
                 bake_writes: Callable[[Lowerer, A.RunDecl], tuple[tuple[str, ...], int]],
                 compact: bool = True) -> None:
        self.checked = checked
        self._bake_writes = bake_writes  # lower_ops.baked_writes, injected by lower.py
        self.model: ModelSpec = checked.model
        self.options: Options = checked.options
        self.ir = IRGraph()
        self.run_decls = {s.name.value: s for s in checked.spec.statements
                          if isinstance(s, A.RunDecl)}
        self._base: dict[str, str] = {}
        self._bare: dict[str, str] = {}
        self.baked: dict[str, tuple[str, ...]] = {}  # run -> its baked Write ids
        self.samples: dict[str, int] = {}
        self._busy: list[str] = []
        self._cache: dict[tuple[Any, ...], str] = {}
        self.n_experiments = 0
        self.compact = compact  # compact sweeps where lower_sweep.compact_form allows
        self.row_tables: set[str] = set()  # tables lowered per experiment all the same
        self.circuits: dict[str, Any] = {}  # circuit name -> lower_circuits.Circuit
        self.spaces: dict[int, Any] = {}  # id(statement) -> (it, its ir_sweep.Space)
        # The patterns' matches, as check expanded them when it did (resolve.Expansions).
        self.sites: Expansions = checked.sites if checked.sites is not None else Expansions()

    # -- runs and forwards ----------------------------------------------------------------
    def base(self, run: str) -> str:
        """The run's plain forward (its baked interventions, no operation's writes)."""
        if run not in self._base:
            writes = self.bake(run)
            self._base[run] = self.ir.add(Forward(run, writes, None, self.samples[run]), writes)
        return self._base[run]

    def bake(self, run: str) -> tuple[str, ...]:
        """The Write ids of the run's `with ...` interventions (made once, then shared)."""
        if run in self.baked:
            return self.baked[run]
        decl = self.run_decls.get(run)
        if decl is None:
            raise PlanError("E514", f"unknown run {run}")
        if run in self._busy:
            chain = " -> ".join(self._busy + [run])
            raise PlanError("E510", f"runs read from each other in a cycle: {chain}",
                            decl.span)
        self._busy.append(run)
        self.baked[run], self.samples[run] = self._bake_writes(self, decl)
        self._busy.pop()
        return self.baked[run]

    def bare(self, run: str) -> str:
        """The run with no interventions at all (what `std(SITE)` of a noised run reads)."""
        if not self.run_decls[run].interventions:
            return self.base(run)
        if run not in self._bare:
            self._bare[run] = self.ir.add(Forward(run))
        return self._bare[run]

    def forward(self, run: str, writes: list[str],
                sparse: tuple[tuple[str, ...], str | None] = ((), None)) -> str:
        """A new experiment Forward of `run`: its baked writes, then `writes`. `sparse`: its
        (latent Reads, same_as) when a sparse latent sweep may skip it (lower_latents.py)."""
        all_writes = self.bake(run) + tuple(writes)
        reads, same_as = sparse
        node = Forward(run, all_writes, self.n_experiments, self.samples[run], sparse=reads,
                       same_as=same_as)
        self.n_experiments += 1
        return self.ir.add(node, all_writes + reads + ((same_as,) if same_as else ()))

    # -- cached nodes ---------------------------------------------------------------------
    def _cached(self, key: tuple[Any, ...], make: Any) -> str:
        got = self._cache.get(key)  # (one lookup: a key holds whole nodes, slow to hash)
        if got is None:
            got = self._cache[key] = make()
        return got

    def read(self, forward: str, site: Site, pos: Positions, stat: str | None = None) -> str:
        node = Read(forward, site, pos, stat)
        return self._cached(("read", node), lambda: self.ir.add(node, (forward,)))

    def write(self, t: Target, mode: str, operands: tuple[str, ...] = (), scale: float = 1.0,
              seed: int | None = None, gate: tuple[str, int, int] | None = None) -> str:
        """A Write at `t`; a subspace target turns replace/zero into project/remove and adds
        the spanning Vectors after the operands (ir.Write). `gate` = (Select id, row, top):
        the write applies only when that row is not in the ranking's first `top`."""
        vecs = self.subspace(t.subspace, self.site_dim(t.site))
        if vecs:
            if mode in ("noise", "freeze_ln"):
                raise PlanError("E516", f"{mode} cannot be restricted to a subspace")
            mode = {"replace": "project", "zero": "remove"}.get(mode, mode)
        inputs = operands + vecs
        if gate is None:
            return self.ir.add(Write(t.site, t.pos, mode, inputs, scale, seed), inputs)
        sel, row, top = gate
        node = Write(t.site, t.pos, mode, inputs, scale, seed, gate=sel, rows=(row,), top=top)
        return self.ir.add(node, inputs + (sel,))

    def vector(self, expr: A.VExpr, dim: int) -> str:
        """The Vector of `expr` in a site space of `dim` features (one node per name, dim)."""
        name = expr.name if isinstance(expr, A.VRef) else printer.vexpr(expr)

        def make() -> str:
            body = inline_vector(expr, self.checked.vectors)
            reads = []
            for term in vmeans(body):
                run = term.of.run
                matches = self.sites.expand(term.of.site, self.model)
                if len(matches) != 1 or len(matches[0].sites) != 1:
                    raise PlanError("E517", "mean(...) of a vector needs one site, not a "
                                    "pattern", term.span)
                pos = self.positions(term.of.site.pos, run)[0][0]
                reads.append(self.read(self.base(run), matches[0].sites[0], pos))
            return self.ir.add(Vector(name, body, dim, tuple(reads)), reads)

        return self._cached(("vector", name, dim), make)

    def subspace(self, names: tuple[str, ...], dim: int) -> tuple[str, ...]:
        return tuple(self.vector(A.VRef(n, NO_SPAN), dim) for n in names)

    def metric(self, forward: str, run: str, expr: A.MExpr, at: Positions | None = None,
               lens: Site | None = None) -> str:
        """The Metric of a measured expression on `forward` (a Forward of `run`); `at`
        overrides its position; with `lens`, it decodes that site's value (read at the
        position) instead of the forward's logits."""
        name, body, pos = metric_parts(expr, self.checked.metrics)
        if isinstance(pos, A.PosEach) and at is None:
            raise PlanError("E518", "a metric is evaluated at one position, not `@ each`",
                            pos.span)
        p = at if at is not None else LAST if pos is None else self.positions(pos, run)[0][0]
        runs = kl_runs(body)
        if len(runs) > 1:
            raise PlanError("E519", "one metric may compare with one run in kl(...)",
                            expr.span)
        ref = self.base(runs[0]) if runs else None
        decoded = self.read(forward, lens, p) if lens is not None else None
        node = Metric(forward, name, body, p, ref, decoded)
        deps = (forward,) + tuple(r for r in (ref, decoded) if r)
        key = ("metric", forward, name, printer.mexpr(body), p, ref, decoded)
        return self._cached(key, lambda: self.ir.add(node, deps))

    def backward(self, metric: str, wrt: tuple[str, ...], rules: str) -> str:
        node = Backward(metric, wrt, rules)
        return self._cached(("backward", node), lambda: self.ir.add(node, (metric,) + wrt))

    # -- sites, positions, sweeps ---------------------------------------------------------
    def positions(self, pos: A.Pos | None, run: str) -> list[tuple[Positions, int | None]]:
        info = self.checked.runs.get(run)
        if info is not None and info.n_tokens is None and isinstance(pos, A.PosEach):
            # Prompts of different lengths: sweep every position of the longest; a shorter
            # prompt sits out the positions it lacks (docs/language.md, "Positions").
            return positions(pos, info.max_tokens)
        return positions(pos, info.n_tokens if info else None)

    def site_dim(self, site: Site) -> int:
        if site.features is not None:
            return site.features[1] - site.features[0]
        if is_dict_kind(site.kind):
            return dict_width(self.model, site.kind)
        dim = SITE_KINDS[site.kind].dim
        return self.model.n_ctx if dim == "n_ctx" else self.model.dim_of(dim)

    def _item(self, item: A.SiteItem, run: str) -> list[tuple[Key, tuple[Target, ...]]]:
        if isinstance(item, A.SiteRef):
            return [(m.key + ((("pos", i),) if i is not None else ()),
                     tuple(Target(s, p, item.subspace) for s in m.sites))
                    for m in self.sites.expand(item, self.model)
                    for p, i in self.positions(item.pos, run)]
        # A group is one experiment; a group-level `@ each` still sweeps positions jointly.
        members = [(m, m.pos if m.pos is not None else item.pos) for m in item.members]
        each = [p for _, p in members if isinstance(p, A.PosEach)]
        out = []
        for p_each, i in self.positions(each[0], run) if each else [(None, None)]:
            targets: list[Target] = []
            for member, mpos in members:
                p = p_each if isinstance(mpos, A.PosEach) else self.positions(mpos, run)[0][0]
                targets += [Target(s, p, member.subspace)
                            for m in self.sites.expand(member, self.model) for s in m.sites]
            out.append(((("pos", i),) if i is not None else (), tuple(dict.fromkeys(targets))))
        return out

    def expand(self, items: tuple[A.SiteItem, ...], run: str) -> list[Exp]:
        """Every experiment of a list of site items (before `where`)."""
        out = []
        for item in items:
            label = (("site", printer.site_item(item)),) if len(items) > 1 else ()
            out += [Exp(label + key, targets) for key, targets in self._item(item, run)]
        return out

    def joint(self, items: tuple[A.SiteItem, ...], run: str) -> tuple[Target, ...]:
        """Every site of every item, for an intervention baked into a run (never a sweep)."""
        return tuple(dict.fromkeys(t for e in self.expand(items, run) for t in e.targets))

    def where(self, conds: tuple[A.Cond, ...], exps: list[Exp]) -> list[Exp]:
        check_where(conds, [e.key for e in exps])
        return [e for e in exps if keep(conds, e.key)]

    # -- tables ---------------------------------------------------------------------------
    def measures(self, op: A.Operation) -> list[tuple[str, A.Measure]]:
        """(column name, measure) of an operation's `measure` clause."""
        return [(m.name.value if m.name is not None else
                 metric_parts(m.expr, self.checked.metrics)[0], m) for m in op.clauses.measures]

    def row(self, key: Key, forward: str, op: A.Operation, target: str,
            source: str | None) -> Row:
        """A row whose measured columns are Metrics of `forward` (a Forward of `target`)."""
        values, norm = [], []
        for col, m in self.measures(op):
            values.append((col, self.metric(forward, target, m.expr)))
            if m.normalized:
                norm.append((col, self.norm_refs(m, target, source)))
        return Row(key, tuple(values), tuple(norm))

    def norm_refs(self, m: A.Measure, target: str, source: str | None) -> tuple[str, str | None]:
        """(metric on the target's base Forward, on the source's, or None without source);
        `normalized between R1 and R2`: on R1's and R2's base Forwards (0 and 1)."""
        if m.between is not None:
            target, source = m.between[0].value, m.between[1].value
        t = self.metric(self.base(target), target, m.expr)
        s = self.metric(self.base(source), source, m.expr) if source else None
        return t, s

    def table(self, op: A.Operation, rows: list[Row], columns: tuple[str, ...] | None = None,
              **extra: Any) -> None:
        if columns is None:
            sweep = dict.fromkeys(c for r in rows for c, _ in r.key)
            columns = tuple(sweep) + tuple(dict.fromkeys(c for c, _ in self.measures(op)))
        table = Table(A.table_name(op), A.op_keyword(op), columns, tuple(rows), op.span,
                      **extra)
        if table.n_rows():
            table = dataclasses.replace(table, unpatched=self.unpatched(op))
        self.ir.tables.append(table)

    def unpatched(self, op: A.Operation) -> tuple[tuple[str, tuple[str | None, str | None]], ...]:
        """Per raw column of an intervention: its metric on the target run's base Forward
        (the value "no effect" sits at) and on the source run's (Table.unpatched). A plain
        forward's metric costs trimmed logits when the plan runs that forward anyway; the
        drop_baselines pass leaves out one that would cost a model pass. Metrics that
        generate text or need every position's logits (loss) are not measured."""
        runs = intervention_runs(op)
        if runs is None:
            return ()
        target, source = runs
        out = []
        for col, m in self.measures(op):
            body = metric_parts(m.expr, self.checked.metrics)[1]
            if m.normalized or any(isinstance(e, _NOT_BASELINE) for e in A.metric_nodes(body)):
                continue
            t = self.metric(self.base(target), target, m.expr)
            s = self.metric(self.base(source), source, m.expr) if source else None
            out.append((col, (t, s)))
        return tuple(out)


# Metrics not measured for Table.unpatched: generation (token by token) and loss (every
# position's logits) would cost far more than a trimmed unembedding.
_NOT_BASELINE = (A.MLoss,) + A.GENERATING


def intervention_runs(op: A.Operation) -> tuple[str, str | None] | None:
    """(target run, source run or None) of an operation that intervenes on a target run;
    None for the others (dla, lens, read, measure, evaluate: nothing to compare with). The
    source is the run the operation copies from, as `normalized` takes it (an ablation's
    mean or resample run); none when it is the target itself."""
    if isinstance(op, (A.Swap, A.Trace, A.Attribute, A.Compare)):
        source: str | None = op.source.value
    elif isinstance(op, A.Ablate):
        source = op.how.run if op.how.kind != "zero" else None
    elif isinstance(op, A.Backpatch):
        source = op.source.value if op.source is not None else None
    elif isinstance(op, (A.Steer, A.Scale)):
        source = None
    else:
        return None
    target = op.target.value
    return target, source if source != target else None


def check_where(conds: tuple[A.Cond, ...], keys: list[Key]) -> None:
    """Every column a `where` names must be bound by some experiment of the sweep."""
    bound = dict.fromkeys(c for key in keys for c, _ in key)
    for c in conds:
        for name in (c.left, c.right):
            if isinstance(name, str) and name not in bound:
                raise PlanError("E511", f"where: no sweep column ${name} (columns: "
                                f"{', '.join(bound) or 'none'})", c.span)


def keep(conds: tuple[A.Cond, ...], key: Key) -> bool:
    """Does a row key satisfy the `where` conditions? A condition on a column that this
    experiment does not bind (another site item of the op binds it) does not filter it."""
    values = dict(key)
    for c in conds:
        if c.left not in values or isinstance(c.right, str) and c.right not in values:
            continue
        right = values[c.right] if isinstance(c.right, str) else c.right
        if not _COMPARE[c.op](values[c.left], right):
            return False
    return True
