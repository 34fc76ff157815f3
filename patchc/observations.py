"""What the statements of §11 add to a run's Results and manifest once its tables are built:
each table's operation, the baselines of its normalized columns, the unpatched values of its
raw columns, and for a `read` or `lens` the tokens of the run it looked at and the positions
each site holds (plot axes)."""

from __future__ import annotations

from typing import Any

from patchc.compiler import ast as A
from patchc.compiler.checked import CheckedSpec
from patchc.results import Results


def observe(results: Results, spec: A.Spec, checked: CheckedSpec, tokenizer: Any) -> None:
    """The tokens of the run a `read` or `lens` looked at (plot axes) and the positions each
    site of a `read` holds, on Results (their manifest entries: observe_manifest)."""
    from patchc.compiler.tokens import shared

    tokens = shared(checked.tokenizer, tokenizer)
    names = set(results.tables)
    for op in spec.operations():
        name = A.table_name(op)
        if name not in names:
            continue
        if isinstance(op, (A.ReadSites, A.Lens)):
            texts = list(checked.runs[op.target.value].texts)
            # Each token as text (a BPE tokenizer's "ĠMary" reads " Mary"): axis labels.
            results._tokens[name] = [[tokenizer.decode([i]) for i in ids]
                                     for ids in tokens.encode_many(texts)]
        if isinstance(op, A.ReadSites):
            results._positions[name] = read_positions(results, name, checked, op)


def observe_manifest(manifest: dict[str, Any], results: Results, spec: A.Spec) -> None:
    """What the statements of §11 add to the manifest: each table's operation, the
    baselines of its normalized columns (printed with it, labelled in its plot), the
    unpatched values of its raw columns (printed; a plot centres on the target's), and
    the tokens of the run a `read` or `lens` looked at (observe put them on Results)."""
    for decl in spec.statements:  # a circuit's table: its drawings and files
        if isinstance(decl, A.CircuitDecl) and decl.name.value in manifest["tables"]:
            manifest["tables"][decl.name.value]["op"] = "circuit"
    for op in spec.operations():
        name = A.table_name(op)
        info = manifest["tables"].get(name)
        if info is None:
            continue
        info["op"] = A.op_keyword(op)
        baselines = results.baselines(name)
        if baselines:
            info["baselines"] = baselines
        unpatched = results.unpatched(name)
        if unpatched:
            info["unpatched"] = unpatched
        if isinstance(op, (A.ReadSites, A.Lens)):
            info["tokens"] = results._tokens[name][0]  # plot labels (example 0)


def read_positions(results: Results, name: str, checked: CheckedSpec, op: A.ReadSites
                    ) -> dict[str, list[int]]:
    """Which token positions each site of a `read` holds, for its first example (the
    query axis of an attention figure)."""
    n0 = len(results.tokens(name)[0])
    info = checked.runs[op.target.value]
    row0 = checked.data[info.data].rows[0] if info.data else {}
    out = {}
    for row in results._table(name).rows:
        pos = results._ir.node(row.values[0][1]).pos  # type: ignore[union-attr]
        if pos.kind == "all":
            picked = list(range(n0))
        elif pos.kind == "last":
            picked = [n0 - 1]
        elif pos.kind in ("index", "range"):
            picked = list(range(pos.lo, (pos.hi if pos.kind == "range" else pos.lo) + 1))
        elif pos.kind == "set":
            picked = list(pos.values)
        elif pos.kind == "column":
            picked = [int(row0[pos.column[1]])]  # type: ignore[index]
        else:  # span
            picked = list(range(int(row0[pos.column[1]]),  # type: ignore[index]
                                int(row0[pos.end[1]]) + 1))  # type: ignore[index]
        out[dict(row.key)["site"]] = picked
    return out
