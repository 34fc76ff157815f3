"""The JSON form of an IR graph (`patchc compile --emit json`): a pydantic model, because it
crosses a file/process boundary. AST fragments inside nodes (metric and vector expressions)
are written as tagged objects; spans are left out (they are for diagnostics, not plans).
A `compare` table's `pairs` (which estimate predicts which exact swap metric) are included:
without them the table's rows, which have no `values`, could not be computed."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from .errors import Span
from .ir import IRGraph


class NodeJson(BaseModel):
    id: str
    type: str
    fields: dict[str, Any]


class RowJson(BaseModel):
    key: dict[str, Any]
    values: dict[str, str]
    normalize: dict[str, list[str | None]]


class PairJson(BaseModel):
    key: dict[str, Any]
    estimate: str
    metric: str
    normalize: list[str | None] | None = None
    members: list[int] | None = None  # compact compare: the estimate's members it pairs


class SweepRowsJson(BaseModel):
    """The rows that are a sweep Forward's members (their keys: that node's `sweep`)."""

    forward: str
    count: int
    values: dict[str, str]
    normalize: dict[str, list[str | None]]


class TableJson(BaseModel):
    name: str
    op: str
    columns: list[str]
    rows: list[RowJson]
    pairs: list[PairJson] = []
    sweeps: list[SweepRowsJson] = []
    select: str | None = None
    unpatched: dict[str, list[str | None]] = {}


class IRJson(BaseModel):
    nodes: list[NodeJson]
    edges: list[tuple[str, str]]
    tables: list[TableJson]


def _plain(value: Any) -> Any:
    """Dataclasses become {"type": ..., field: ...}; tuples become lists; spans vanish."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if not isinstance(v, Span):
                out[f.name] = _plain(v)
        return out
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def ir_model(ir: IRGraph) -> IRJson:
    nodes = []
    for nid in sorted(ir.g.nodes, key=lambda n: (n[0], int(n[1:]))):
        node = ir.node(nid)
        fields = _plain(node)
        nodes.append(NodeJson(id=nid, type=fields.pop("type"), fields=fields))
    edges = sorted(ir.g.edges)
    tables = [
        TableJson(
            name=t.name, op=t.op, columns=list(t.columns),
            rows=[RowJson(key=dict(r.key), values=dict(r.values),
                          normalize={k: list(v) for k, v in r.normalize})
                  for r in t.rows],
            pairs=[PairJson(key=dict(p.key), estimate=p.estimate, metric=p.metric,
                            normalize=list(p.normalize) if p.normalize is not None else None,
                            members=list(p.members) if p.members is not None else None)
                   for p in t.pairs],
            sweeps=[SweepRowsJson(forward=b.forward, count=b.count, values=dict(b.values),
                                  normalize={k: list(v) for k, v in b.normalize})
                    for b in t.sweeps],
            select=t.select,
            unpatched={k: list(v) for k, v in t.unpatched},
        )
        for t in ir.tables
    ]
    return IRJson(nodes=nodes, edges=edges, tables=tables)


def ir_to_json(ir: IRGraph) -> str:
    return ir_model(ir).model_dump_json(indent=2)
