"""The IR: a networkx DiGraph of typed, frozen nodes; edges are data dependencies.

Node kinds (docs/architecture.md, "The IR"):
  Forward   one model run over one run's inputs, with a set of Writes applied
  Read      a site's value at some positions, taken from a Forward (edge Forward -> Read)
  Write     replaces/edits a site's value inside a Forward (edge Write -> Forward); its value
            comes from Reads and Vectors (edges Read -> Write, Vector -> Write)
  Vector    a direction in a site's space (edges from the Reads it is computed from)
  Metric    a scalar per example from a Forward's logits (edge Forward -> Metric)
  Backward  gradients (or LRP coefficients) of a Metric w.r.t. Reads of its Forward
  Estimate  a gradient estimate of a swap for one site (edges from Reads and a Backward)

Graph ids are strings (`f0`, `r3`, ...); the node object lives in the `node` attribute.
Tables (what each operation reports) live in `graph.graph["tables"]`. The unoptimized graph
from lower.py has one Forward per experiment; passes in compiler/passes/ rewrite it.

Additions made for lower.py (existing fields unchanged):
  - `Read.stat`: `"std"` makes the Read a scalar statistic (noise(std=3*std(SITE))).
  - `Write.inputs`: inputs past a mode's operands span a subspace the write is restricted to
    (`project`/`remove` are `replace`/`zero` so restricted); see Write.
  - `Estimate.inputs`: one (A read, B read) pair per site of the experiment (an `all(...)`
    group has several), then the Backward; for `dla`: site reads, the scale read, the Metric.
    `Estimate.edges`: a compact edge Estimate's ir_edges.EdgeSet (its inputs: ir_edges.py).
  - `Pair` and `Table.pairs`: which estimate pairs with which exact swap metric (`compare`).
  - verify() (ir_verify.py) also checks the ids in `Row.normalize` and `Table.pairs`.
  - `Table.unpatched`: per raw column of an intervention, the Metrics of its target (and
    source) run's base Forward: the no-effect value a plot centres on (lowerer.table).

Additions made for the optimizer (compiler/passes/; all optional, defaults keep the meaning
of the unoptimized graph, so the naive interpreter can still run an optimized graph):
  - `Forward.twin`: a Forward of the same run whose writes are a prefix of this one's, all at
    layers before `start_layer` (edge twin -> Forward). It is computed in full first.
  - `Forward.start_layer` / `Forward.start`: the forward skips layers < start_layer and
    starts from `start`, a Read of the twin's `resid_pre` at start_layer (edge Read ->
    Forward). The skipped blocks are stubbed at run time; the model's own forward runs.
  - `Forward.narrow`: in a causal model, positions before the earliest position the forward
    writes, reads or measures are the twin's: the runtime reuses the twin's keys/values for
    them and computes only the later positions.
  - `Forward.group`: forwards with the same group id are stacked along the batch dimension
    (the schedule splits a group into chunks under the memory budget).
  - `Forward.logit_positions` / `Forward.logit_tokens`: unembed only at these positions (None:
    every position; (): none at all), and when logit_tokens, only the token ids the metrics
    name (all metrics on the forward are `logit(...)` arithmetic).
  - `Forward.live_from`: dead_positions: the forward's own reads and writes all lie below this
    layer, so at the top of the model only `logit_positions` are live: the runtime computes
    the last block's MLP at those positions only (None: every position everywhere).
  - verify() (ir_verify.py) checks that `start` is a Read of `twin` and that a twin is a
    plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, TypeVar, Union

import networkx as nx

from .errors import Span
from .ir_select import Select  # noqa: F401 - re-exported: the IR's node kinds are one namespace

# ---------------------------------------------------------------------------------------------
# Concrete sites and positions (patterns already expanded against the ModelSpec)


@dataclass(frozen=True, slots=True)
class Site:
    """One concrete activation: `L3.H2.z`, `L0.mlp.post[5:6]`, `embed`."""

    kind: str
    layer: int | None = None
    head: int | None = None
    features: tuple[int, int] | None = None  # half-open slice of the feature axis

    def __str__(self) -> str:
        parts = []
        if self.kind.startswith("dict:"):  # a dictionary's latents `s1[3]`, its error `s1.err`
            parts.append(self.kind[len("dict:"):])
        elif self.kind.startswith("expert."):  # L3.E5.out
            parts += [f"L{self.layer}", f"E{self.head}", self.kind.split(".", 1)[1]]
        else:
            if self.layer is not None:
                parts.append(f"L{self.layer}")
            if self.head is not None:
                parts.append(f"H{self.head}")
            parts.append(self.kind)
        text = ".".join(parts)
        if self.features is not None:
            lo, hi = self.features
            text += f"[{lo}]" if hi == lo + 1 else f"[{lo}:{hi}]"
        return text


@dataclass(frozen=True, slots=True)
class Positions:
    """Which token positions: `all`, `last`, `index` (lo), `range` (lo..hi inclusive),
    `column` (a per-example position from data column `column` = (data, col)), `set`
    (`values`, jointly) or `span` (per example, from column `column` to column `end`,
    inclusive)."""

    kind: str = "all"
    lo: int = 0
    hi: int = 0
    column: tuple[str, str] | None = None
    values: tuple[int, ...] = ()
    end: tuple[str, str] | None = None

    def __str__(self) -> str:
        if self.kind == "all":
            return "*"
        if self.kind == "last":
            return "last"
        if self.kind == "index":
            return str(self.lo)
        if self.kind == "range":
            return f"{self.lo}..{self.hi}"
        if self.kind == "set":
            return "{" + ", ".join(map(str, self.values)) + "}"
        assert self.column is not None
        if self.kind == "span":
            assert self.end is not None
            return ".".join(self.column) + ".." + ".".join(self.end)
        return ".".join(self.column)


ALL_POSITIONS = Positions()

# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True, slots=True)
class Forward:
    """A forward pass of `run` (a `run` declaration) with Writes (the graph's in-edges from
    Write nodes, listed in `writes` in application order). `experiment` distinguishes the
    forwards of different experiments before dedupe; None for a run's plain forward."""

    run: str
    writes: tuple[str, ...] = ()
    experiment: int | None = None
    samples: int = 1  # noise(..., samples=N) repeats each example N times
    # Set by the optimizer passes (see the module docstring):
    twin: str | None = None  # share_prefix: the unpatched forward this one reuses
    start_layer: int = 0  # share_prefix: layers below this one are not recomputed
    start: str | None = None  # share_prefix: Read of the twin's resid_pre(start_layer)
    narrow: bool = False  # narrow_positions: compute only positions after the first written
    group: int | None = None  # batch: forwards stacked along the batch dimension
    logit_positions: tuple[Positions, ...] | None = None  # trim_logits: None = all positions
    logit_tokens: bool = False  # trim_logits: only the token ids the metrics name
    live_from: int | None = None  # dead_positions: no own read or write from this layer on
    # A compact sweep (compiler/ir_sweep.py): this Forward stands for many experiments, the
    # run's writes then one member write each; `inputs` are the Reads/Vectors they use.
    sweep: Any = None  # ir_sweep.SweepSpec
    inputs: tuple[str, ...] = ()
    # Sparse latent sweeps (lower_latents.py): equal to `same_as` when the latents its writes
    # touch are zero in every `sparse` Read; the plan interpreter then skips it.
    sparse: tuple[str, ...] = ()
    same_as: str | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """`site` at `pos` in `forward`. With `stat="std"` the Read is instead one scalar: the
    standard deviation of those values over examples, positions and features (the `std(SITE)`
    of `noise(..., std=3*std(SITE))`, read from the run's forward without interventions)."""

    forward: str
    site: Site
    pos: Positions = ALL_POSITIONS
    stat: str | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """Edits `site` at `pos` in the Forward it feeds. `mode` says how the new value is made
    from the current value a_B and the inputs (the `inputs` Read/Vector ids):

      replace    a_B := input[0]                     (swap, backpatch)
      mean       a_B := mean over examples of input[0]  (ablate with mean(A))
      resample   a_B := input[0] of a random other example, seeded by `seed`
      zero       a_B := 0
      add        a_B := a_B + scale * input[0]       (steer; input is a Vector)
      mul        a_B := scale * a_B                   (scale)
      project    a_B := a_B + P(input[0] - a_B), P the projector onto span(inputs[1:])
      remove     a_B := a_B - P a_B                   (ablate on a subspace)
      noise      a_B := a_B + N(0, std^2), std = scale * (input[0] if given, else 1), drawn
                 with `seed` (the same draws in every Forward the Write feeds)
      freeze_ln  the normalizer whose scale is `site` uses input[0] (run A's cached scale)

    A Read of the whole site feeding a write on a feature slice gives that slice (latents).

    Subspaces (`SITE [v, w]`): a mode takes its operands first (replace/mean/resample/add: 1;
    zero/mul: 0; project: 1; remove: 0); any further inputs are Vectors spanning a subspace,
    and the write then changes only the component in it: a_B := a_B + P(new - a_B), with
    `new` what the mode would write. `project` is `replace` so restricted and `remove` is
    `zero` so restricted (lower.py emits those two names); noise and freeze_ln take none.

    Edges (compiler/lower_edges.py): `site` is a receiver's input (`q.in`, `mlp.in`, ...) and
    `senders` the sender sites patched into it: a_B := a_B + sum_i (new_i - cur_i), with new_i
    by mode (`edge`: input of run A; `edge_mean`: its mean over A's examples; `edge_zero`: 0)
    and cur_i the sender's value in this forward. `inputs` are the new_i operands (none for
    edge_zero), then the cur_i of the senders not in `live`, as Reads of the unpatched run;
    the senders in `live` (indices) may be changed by another write of the same forward, so
    the runtime reads them in the forward itself.
    """

    site: Site
    pos: Positions
    mode: str
    inputs: tuple[str, ...] = ()
    scale: float = 1.0
    seed: int | None = None
    senders: tuple[Site, ...] = ()
    live: tuple[int, ...] = ()
    # A circuit's complement (`evaluate`): with `gate` (a Select id), what the write patches
    # belongs to table rows `rows` (an edge write: one row per sender), and only what is
    # not among the first `top` rows of that ranking is patched (runtime/circuits.py).
    gate: str | None = None
    rows: tuple[int, ...] = ()
    top: int = 0


@dataclass(frozen=True, slots=True)
class Vector:
    """A direction, from a vector declaration or inline expression (`expr`, with every
    reference to another vector inlined), in the space of `dim` features. `inputs` are the
    Reads its `mean(...)` terms use, in the order a left-to-right walk of `expr` meets them;
    `name` is the declared name, or the printed expression for an inline one."""

    name: str
    expr: Any  # ast.VExpr
    dim: int
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Metric:
    """A scalar per example from `forward`'s logits at `pos`. With `lens` (a Read of a
    residual-shaped site of `forward` at `pos`), the logits are instead that value decoded
    through the model's final norm and unembedding (`lens` statements)."""

    forward: str
    name: str
    expr: Any  # ast.MExpr with MRef already inlined
    pos: Positions = Positions("last")
    reference: str | None = None  # for kl(RUN): the Forward whose distribution is compared
    lens: str | None = None


@dataclass(frozen=True, slots=True)
class Backward:
    """Gradients of `metric` w.r.t. the Reads `wrt` of the same Forward, with `rules`:
    `grad` (plain autograd), `lrp` (RelP rules), `lrp_ah` (RelP with the attention rule)."""

    metric: str
    wrt: tuple[str, ...]
    rules: str = "grad"


@dataclass(frozen=True, slots=True)
class Estimate:
    """Estimated effect of swapping `site` from run A into run B: method atp/relp/ig/dla.

    atp/relp/ig inputs: one (Read of A, Read of B) pair per site of the experiment (one for
    a plain site; an `all(...)` group gives several, estimated jointly), then the Backward.
    `site`/`pos` are the first pair's. The value is an estimate of what the swap would
    measure, m_B + sum (a_A - a_B) * g, so it normalizes like the swap's own metric:
    (e - m_B) / (m_A - m_B). `ig` interpolates a_B -> a_A in `steps`
    steps at run time (the Backward names the metric and rules to differentiate).
    dla inputs: the site Read(s) of B, the Read of `ln_final.scale` on B (all positions),
    and the Metric whose direction the contribution is projected on.

    Compact (atp/relp/ig with `space`, compiler/lower_estimates.py): one Estimate for every
    member of an ir_sweep.Space (one site and position each, estimated on its own); inputs
    are one (A, B) pair of Reads per whole site of the space (every feature, at the space's
    one position or at all positions), then the Backward; the value is [members, examples].
    `site`/`pos` are the first member site's and the Reads' positions."""

    method: str
    site: Site
    pos: Positions
    inputs: tuple[str, ...]
    steps: int = 0  # ig interpolation steps
    # Compact estimates: the ir_sweep.Space of the members this node estimates (None: one).
    space: Any = None
    # A compact edge Estimate (compiler/ir_edges.py): the ir_edges.EdgeSet of every edge it
    # scores; its value is then [members, examples]. None: one experiment, value [examples].
    edges: Any = None


Node = Union[Forward, Read, Write, Vector, Metric, Backward, Estimate, Select]
ID_PREFIX = {Forward: "f", Read: "r", Write: "w", Vector: "v", Metric: "m", Backward: "b",
           Estimate: "e", Select: "s"}

# ---------------------------------------------------------------------------------------------
# Tables: what each operation reports


@dataclass(frozen=True, slots=True)
class Row:
    """One experiment: its sweep-variable values and the Metric (or Estimate) ids that give
    each measured column. `normalize` maps a column to (target-metric id, source-metric id)."""

    key: tuple[tuple[str, Any], ...]
    values: tuple[tuple[str, str], ...]
    normalize: tuple[tuple[str, tuple[str, str | None]], ...] = ()


@dataclass(frozen=True, slots=True)
class Pair:
    """`compare`: one estimate and the exact swap metric it predicts. `key` is the key of the
    table row the pair feeds (its `site_kind`, `method`, and `metric` when there are several
    measures); the runtime correlates (estimate, metric) over every pair of a row into the
    row's `pearson` and `spearman`. `normalize` is the (target, source) metric ids of a
    `normalized` measure, else None. A compact `compare` (compiler/lower_compare.py) pairs
    many at once: `estimate` is a compact Estimate and `members` the (start, stop) of its
    members that `metric` measures exactly: a sweep Forward's Metric ([members, examples]),
    or one experiment's ([examples], stop = start + 1)."""

    key: tuple[tuple[str, Any], ...]
    estimate: str
    metric: str
    normalize: tuple[str, str | None] | None = None
    members: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Table:
    """One operation's result. `compare` tables have rows with no `values` (the runtime
    computes `pearson`/`spearman` from `pairs`); every other table has `pairs == ()`."""

    name: str
    op: str  # the statement keyword
    columns: tuple[str, ...]  # sweep-variable columns, then measured columns
    rows: tuple[Row, ...]
    span: Span = field(compare=False, default=Span(1, 1, 1, 1))
    pairs: tuple[Pair, ...] = ()
    select: str | None = None  # a circuit's table: the Select that ranks its rows
    sweeps: tuple[Any, ...] = ()  # ir_sweep.SweepRows: rows that are a sweep's members
    # An intervention's raw (not normalized) columns: (column, (Metric of the target run's
    # base Forward, of the source run's or None)), the values "no effect" sits at. Either
    # may be None once the drop_baselines pass left out one that would cost a model pass.
    unpatched: tuple[tuple[str, tuple[str | None, str | None]], ...] = ()

    def n_rows(self) -> int:
        """Rows of the table: its Rows and every sweep member."""
        return len(self.rows) + sum(s.count for s in self.sweeps)


# ---------------------------------------------------------------------------------------------
# The graph


N = TypeVar("N")


class IRGraph:
    """A thin wrapper over nx.DiGraph that assigns ids and keeps node objects typed."""

    def __init__(self, graph: nx.DiGraph | None = None) -> None:
        self.g: nx.DiGraph = graph if graph is not None else nx.DiGraph(tables=[])
        self._counts: dict[str, int] = {}
        for nid in self.g.nodes:
            p, n = nid[0], int(nid[1:])
            self._counts[p] = max(self._counts.get(p, 0), n + 1)

    def add(self, node: Node, deps: tuple[str, ...] | list[str] = ()) -> str:
        """Add `node`, with edges from each id in `deps` to it; returns its id."""
        prefix = ID_PREFIX[type(node)]
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        nid = f"{prefix}{n}"
        self.g.add_node(nid, node=node)
        for d in deps:
            self.g.add_edge(d, nid)
        return nid

    def node(self, nid: str) -> Node:
        return self.g.nodes[nid]["node"]

    def of_type(self, cls: type[N]) -> Iterator[tuple[str, N]]:
        for nid, data in self.g.nodes(data=True):
            if isinstance(data["node"], cls):
                yield nid, data["node"]

    @property
    def tables(self) -> list[Table]:
        return self.g.graph["tables"]

    def copy(self) -> "IRGraph":
        return IRGraph(self.g.copy())

    def count(self, cls: type) -> int:
        return sum(1 for _ in self.of_type(cls))
