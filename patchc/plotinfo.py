"""What a table's plots need to know beyond its CSV, worked out once at run time and kept in
the manifest (`tables.NAME.plot`), so that `patchc plot DIR` redraws the same figures from
the folder alone:

  title         the operation as written, runs as `A → B`: `swap L*.H*.z clean → corrupt`
  columns       per measured column: its colour `scale` (patchc/plot_style.py); for a
                normalized one the runs that map to 0 and 1 (`zero`, `one`), or `ratio_to`
                for m / m_target, and each run's baseline mean (`baselines`); for a raw
                one of an operation on run B, the unpatched values of B and of the source
                run A (`unpatched`, as Results.unpatched gives them), and when it is
                signed the value that means "no effect" (`centre`: B's unpatched mean, and
                `centre_run`: B), or, when the plan left B unpatched out, `uncentred`: B
                (a heatmap's colours then span the data)
  measures      for `compare`: the measured columns its scatter plots (their normalization
                is under `columns` like any other)
  positions     for a table with a `pos` column: the run whose positions they are and a label
                per position: its token when the run has one prompt or every prompt has the
                same length and most positions hold the same token (a token that differs
                between prompts is example 0's, marked `*`); absent otherwise
  numeric_keys  sweep columns that are values on a scale (the coefficient of `steer` and
                `scale`), drawn as lines against the value
  key_labels    axis titles of sweep columns: those values, and captures (`L$j`: `layer $j`)
"""

from __future__ import annotations

import re
from typing import Any

from patchc.compiler import ast as A
from patchc.compiler.checked import CheckedSpec
from patchc.compiler.ir import Backward, Estimate, IRGraph, Metric, Table

_RUNS = re.compile(r" from (\S+) into (\S+)")


def describe_tables(ir: IRGraph, checked: CheckedSpec, tokenizer: Any,
                    values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{table name: plot info}` for every table of a run."""
    ops: dict[str, Any] = {A.table_name(s): s for s in checked.spec.statements
                           if isinstance(s, A.OPERATIONS)}
    ops.update({s.name.value: s for s in checked.spec.statements
                if isinstance(s, A.CircuitDecl)})
    return {t.name: describe(ir, t, ops.get(t.name), checked, tokenizer, values)
            for t in ir.tables}


def describe(ir: IRGraph, table: Table, op: Any, checked: CheckedSpec, tokenizer: Any,
             values: dict[str, Any]) -> dict[str, Any]:
    from patchc.baselines import table_baselines, table_unpatched

    info: dict[str, Any] = {"title": _title(table, op), "columns": {}}
    base = table_baselines(ir, table, values)  # the values printed and in the manifest
    unpatched = table_unpatched(ir, table, values)  # so are these
    for col in table.columns:
        row = next((dict(r.values) for r in [*table.rows, *table.sweeps]
                    if col in dict(r.values)), None)
        if row is not None:
            info["columns"][col] = _column(ir, row[col], base.get(col), table,
                                           unpatched.get(col))
        elif col in ("pearson", "spearman"):
            info["columns"][col] = {"scale": "correlation"}
    if table.pairs:  # compare: what the scatter's axes measure (the swap's own metric)
        only = (_measure_names(op, checked) or ["metric"])[0]  # the key names it if several
        for p in table.pairs:
            col = dict(p.key).get("metric", only)
            if col not in info["columns"]:  # table_baselines names a lone measure `normalized`
                b = base.get(col, base.get("normalized")) if p.normalize else None
                info["columns"][col] = _column(ir, p.metric, b, table, unpatched.get(col))
        info["measures"] = list(dict.fromkeys(dict(p.key).get("metric", only)
                                              for p in table.pairs))
    if table.op in ("circuit", "evaluate"):
        info.update(circuit_info(table, op, checked))
    captures = _capture_labels(info["title"])
    if captures:
        info["key_labels"] = captures
    if table.op in ("steer", "scale"):
        info["numeric_keys"] = ["scale"]
        info["key_labels"] = {**captures, "scale": "steering coefficient"
                              if table.op == "steer" else "scale factor"}
    if any(k == "pos" for r in table.rows for k, _ in r.key) or \
            any(b.space.pos_keys[0] is not None for b in table.sweeps):
        run = _target_run(ir, table, op)
        if run in checked.runs and tokenizer is not None:
            labels = position_labels(tokenizer, list(checked.runs[run].texts),
                                     checked.tokenizer)
            if labels is not None:
                info["positions"] = {"run": run, "tokens": labels}
    return info


_CAPTURE = re.compile(r"(?<![\w$])([LHE])\$(\w+)")
_INDEX_NAMES = {"L": "layer", "H": "head", "E": "expert"}


def _capture_labels(title: str) -> dict[str, str]:
    """Axis titles for the sweep columns that captures bind: `L$j` -> `layer $j` (the
    column alone, `j`, says nothing of what it counts)."""
    return {name: f"{_INDEX_NAMES[kind]} ${name}" for kind, name in _CAPTURE.findall(title)}


def circuit_info(table: Table, op: Any, checked: CheckedSpec) -> dict[str, Any]:
    """A circuit's sizes, metric and model shape (its drawings and files); an evaluation's
    metric (its curve's legend)."""
    if table.op == "evaluate":
        return {"metric": table.columns[2]}
    from patchc.compiler.lower_circuits import size_of

    model = checked.model
    return {"metric": table.columns[-1],
            "sizes": [size_of(k, table.n_rows())[0] for k in op.sizes],
            "graph": {"n_layers": model.n_layers, "n_heads": model.n_heads,
                      "parallel_attn_mlp": model.parallel_attn, "d_model": model.d_model},
            # where each dictionary's latents stand in a drawing: its host site's layer
            "hosts": {d.name: host_level(d.host.kind, d.host.layer, model.n_layers)
                      for d in model.dictionaries}}


def host_level(kind: str, layer: int | None, n_layers: int) -> float:
    """The drawing level (circuit_graph.Component.level) of latents hosted at a site: the
    residual stream before, between or after a block's sub-blocks, or its MLP."""
    if layer is None:
        return 2 * n_layers + 0.5
    offset = {"resid_pre": 0.5, "resid_mid": 1.5, "attn.out": 1.5}.get(
        kind, 2.25 if kind.startswith("mlp") else 2.5)
    return 2 * layer + offset


def _measure_names(op: Any, checked: CheckedSpec) -> list[str]:
    """The column names of an operation's `measure` clause (as lowering names them)."""
    from patchc.compiler.lower_exprs import metric_parts

    measures = getattr(getattr(op, "clauses", None), "measures", ())
    return [metric_parts(m.expr, checked.metrics)[0] for m in measures]


def _title(table: Table, op: Any) -> str:
    if op is None:
        return f"{table.op} ({table.name})"
    from patchc.compiler import printer

    if isinstance(op, A.CircuitDecl):
        return printer.statement(op)

    try:
        lines = printer.statement(op).splitlines()
    except (AssertionError, AttributeError, TypeError):  # a statement the printer lacks
        return f"{table.op} ({table.name})"
    # The head and its continuation lines (indented deeper than the clauses): a long site
    # list wraps onto them, and a title cut at the first line ends in a comma.
    head = " ".join([lines[0]] + [ln.strip() for ln in lines[1:] if ln.startswith(" " * 8)])
    if " -> " in head:  # edges: `swap * -> * corrupt → clean` would read as a third arrow
        return head
    return _RUNS.sub(r" \1 → \2", head)


# Operations on a target run B whose raw measure equals B's own unpatched value where the
# operation changes nothing (a swap of an identical activation, a zero steering coefficient).
_ON_TARGET = ("swap", "ablate", "attribute", "backpatch", "steer", "scale", "trace")


def _column(ir: IRGraph, nid: str, baselines: dict[str, Any] | None, table: Table,
            unpatched: dict[str, Any] | None) -> dict[str, Any]:
    """A column's colour scale; for a normalized one (`baselines` from
    tables.table_baselines) the runs that map to 0 and 1 and their values; for a raw signed
    one of an operation on B, B's unpatched value as the centre (`unpatched` from
    tables.table_unpatched; module docstring)."""
    if baselines is None:
        out: dict[str, Any] = {"scale": _node_scale(ir, nid)}
        if unpatched:  # any scale: the title says them
            out["unpatched"] = unpatched
        if out["scale"] == "signed" and table.op in _ON_TARGET:
            out.update(_no_effect(ir, nid, unpatched or {}))
        return out
    zero, one = baselines["0"], baselines["1"]
    out = {"scale": "signed", "baselines": {one["run"]: one["value"]}}
    if zero["run"] is None:  # m / m_target: 0 is zero, 1 (no effect) the target's value
        out["ratio_to"], out["scale"] = one["run"], "ratio"
    else:
        out["zero"], out["one"] = zero["run"], one["run"]
        out["baselines"][zero["run"]] = zero["value"]
    return out


def _no_effect(ir: IRGraph, nid: str, unpatched: dict[str, Any]) -> dict[str, Any]:
    """Where a raw measure of run B shows no effect: `centre` = B's unpatched mean, which
    the plan measures beside every raw column (Table.unpatched), and `centre_run` = B.
    When the plan left B's out (it would have cost a model pass), `uncentred` names B: a
    heatmap then spans the data on a sequential scale (centred on 0 the values would all
    sit on one side, one colour); bars and lines keep 0."""
    target = unpatched.get("target")
    if target is None:
        run = _measured_run(ir, ir.node(nid))
        return {"uncentred": run} if run is not None else {}
    return {"centre": target["value"], "centre_run": target["run"]}


def _measured_run(ir: IRGraph, node: Any) -> str | None:
    """The run a Metric (or an attribution Estimate's gradient metric) measures."""
    if isinstance(node, Estimate):
        back = next((ir.node(i) for i in node.inputs if isinstance(ir.node(i), Backward)),
                    None)
        node = ir.node(back.metric) if back is not None else None
    if isinstance(node, Metric):
        return ir.node(node.forward).run  # type: ignore[union-attr]
    return None


def _node_scale(ir: IRGraph, nid: str) -> str:
    node = ir.node(nid)
    if isinstance(node, Estimate):
        if node.method == "dla":
            return "signed"  # a contribution: either sign
        # attribution estimates what the swap would measure: the metric's own scale
        back = next((ir.node(i) for i in node.inputs if isinstance(ir.node(i), Backward)), None)
        return _node_scale(ir, back.metric) if back is not None else "signed"
    if isinstance(node, Metric):
        return metric_scale(node.expr)
    return "signed"


def metric_scale(expr: Any) -> str:
    """The colour scale of a metric expression (MRef already inlined)."""
    if isinstance(expr, A.MCall):
        return {"prob": "probability", "rank": "rank"}.get(expr.fn, "level")
    if isinstance(expr, A.MGenerate):
        return "probability"  # a fraction of examples
    if isinstance(expr, (A.MKL, A.MLoss)):
        return "nonneg"
    if getattr(expr, "op", None) in ("==", "!=", "<", "<=", ">", ">="):
        return "probability"  # a comparison: 0/1 per example, a fraction in the table
    return "signed"


def _target_run(ir: IRGraph, table: Table, op: Any) -> str | None:
    target = getattr(op, "target", None) or getattr(op, "run", None)
    if target is not None:
        return getattr(target, "value", target)
    for row in [*table.rows, *table.sweeps]:
        for _, nid in row.values:
            node = ir.node(nid)
            if isinstance(node, Metric):
                return ir.node(node.forward).run
    return None


def position_labels(tokenizer: Any, texts: list[str], checked_tok: Any = None
                    ) -> list[str] | None:
    """A label per token position of a run's prompts (see the module docstring), or None
    when the prompts do not line up. `checked_tok`: what check tokenized with (its ids are
    reused when it wrapped `tokenizer`, compiler/tokens.shared)."""
    from patchc.compiler.tokens import shared

    if not texts:
        return None
    ids = shared(checked_tok, tokenizer).encode_many(texts)
    if len({len(r) for r in ids}) != 1:
        return None
    first = [tokenizer.decode([i]) for i in ids[0]]
    same = [all(r[p] == ids[0][p] for r in ids) for p in range(len(ids[0]))]
    if len(ids) > 1 and sum(same) * 2 < len(same):
        return None
    return [tok if s else tok.strip() + "*" for tok, s in zip(first, same)]
