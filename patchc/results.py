"""Results: the tidy tables of a run (built by patchc/tables.py), per-example values, and the
manifest; saving them. `text(N)` columns are strings: they are in the per-example output
only. `Results.per_example(name)` has the raw per-example values, `activations(name)` the
tensors of a `read`, `baselines(name)` the
values a normalized table maps to 0 and 1, `unpatched(name)` the values of a raw column on
the intervention's runs as they are, `pairs(name)` the estimate/exact points of a
`compare` table. In Jupyter a Results shows as HTML tables; `Results.plot(name)` gives a
Figure. `save(dir)` writes the result folder (patchc/outputs.py, staged and moved into place
at once): `NAME.csv` per table, `NAME.examples.csv` (one row per experiment and example),
`NAME.safetensors` per `read`, `NAME.pairs.csv` per `compare`, any file of
`Results.outputs`, and `manifest.json`.

A normalized column whose two baselines are equal is NaN, and `Results.warnings` holds the
W470 that names the table and both values.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from patchc.compiler.errors import PatchcError
from patchc.compiler.ir import IRGraph, Table
from patchc.compiler.ir_sweep import members, split
from patchc.baselines import table_baselines, table_unpatched, unpatched_left_out
from patchc.tables import build_table, compare_points, example_mean, per_example_table


class Results:
    """Tables by name (`results["heads"]` is a DataFrame), per-example values, manifest."""

    def __init__(self, ir: IRGraph, values: dict[str, Any],
                 manifest: "dict[str, Any] | Callable[[Results], dict[str, Any]]",
                 tokens: dict[str, list[list[str]]] | None = None,
                 warnings: list[PatchcError] | None = None) -> None:
        """`manifest`: the manifest, or a function of these Results that makes it when it
        is first asked for (a run's manifest: what a run that saves nothing and never looks
        at it does not need to assemble; patchc/execution.py)."""
        # Warnings of the whole run: check's, the runner's, and the tables' own (W470).
        self.warnings: list[PatchcError] = list(warnings or [])
        self.tables: dict[str, pd.DataFrame] = {t.name: build_table(t, values, self.warnings)
                                                for t in ir.tables}
        self._ir = ir
        self._values = values
        self._manifest = manifest
        # Output files besides the tables' own: file name -> a function writing it at the
        # path it is given (e.g. `lambda p: save_file(tensors, str(p))`). They are staged
        # and moved into place with the rest, listed in the manifest, compared by verify.
        self.outputs: dict[str, Callable[[Path], None]] = {}
        self._tokens: dict[str, list[list[str]]] = dict(tokens or {})
        self._positions: dict[str, dict[str, list[int]]] = {}  # read -> site -> positions

    @property
    def manifest(self) -> dict[str, Any]:
        """The run's manifest (a dict; saved as manifest.json)."""
        if callable(self._manifest):
            self._manifest = self._manifest(self)
        return self._manifest

    @manifest.setter
    def manifest(self, value: dict[str, Any]) -> None:
        self._manifest = value

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; tables: {', '.join(self.tables)}")
        return self.tables[name]

    def __iter__(self):
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def __repr__(self) -> str:
        return f"Results({', '.join(f'{k}: {len(v)} rows' for k, v in self.tables.items())})"

    def _repr_html_(self) -> str:
        """Jupyter: each table as an HTML table under its name (long tables: head and tail,
        as pandas shows them), with the baselines of its normalized columns and the
        unpatched values of its raw ones."""
        import html

        from patchc.plot_style import unpatched_label, value_label

        parts = []
        for name, df in self.tables.items():
            parts.append(f"<h4>{html.escape(name)} <small>({len(df)} rows)</small></h4>")
            parts.append(df.to_html(index=False, max_rows=20, notebook=True))
            info = self.manifest.get("tables", {}).get(name, {}).get("plot", {})
            for col, cinfo in info.get("columns", {}).items():  # what 0 and 1 mean
                if cinfo.get("baselines") and col in df.columns:
                    label = value_label(col, cinfo).replace("\n", " ")
                    parts.append(f"<p><small>{html.escape(label)}</small></p>")
            for col, u in self.unpatched(name).items():
                label = f"{col} unpatched: {unpatched_label(col, u)}"
                parts.append(f"<p><small>{html.escape(label)}</small></p>")
        return "\n".join(parts) or "<p>Results: no tables</p>"

    def pairs(self, name: str) -> pd.DataFrame:
        """A `compare` table's points: one row per (site, method[, metric]) with the estimate
        and the exact swap's value (normalized as the table is); empty for other tables."""
        table = self._table(name)
        nids = [n for p in table.pairs for n in (p.estimate, p.metric) if p.members is None]
        nids += [n for p in table.pairs for n in p.normalize or () if n]
        means = {nid: example_mean(self._values[nid]) for nid in dict.fromkeys(nids)}
        records, order = [], []
        items: dict[int, int] = {}  # a compact pair's item (its estimate's space), in order
        for p, est, exact in compare_points(table, self._values, means):
            node = self._ir.node(p.estimate)
            if p.members is None:
                sites = [(node.site, node.pos)]  # type: ignore[union-attr]
                order.append((len(order), 0))
            else:  # a compact pair: its members' sites and positions
                space = node.space  # type: ignore[union-attr]
                s_idx, p_idx, _ = split(space, members(space)[p.members[0]:p.members[1]])
                sites = [(space.sites[i], space.positions[j])
                         for i, j in zip(s_idx.tolist(), p_idx.tolist())]
                item = items.setdefault(id(space), len(items))
                order += [(item, j) for j in range(*p.members)]
            for (site, pos), e, x in zip(sites, est.tolist(), exact.tolist()):
                label = str(site) + ("" if str(pos) == "*" else f" @ {pos}")
                records.append({**dict(p.key), "site": label, "estimate": e, "exact": x})
        # Experiment by experiment (then measure and method), as the per-experiment pairs are
        records = [records[i] for i in sorted(range(len(records)), key=order.__getitem__)]
        return pd.DataFrame.from_records(records)

    def plot(self, name: str, column: str | None = None):
        """A matplotlib Figure of table `name` (of `column`, default its first measured
        one), as `patchc run --out` draws it; a one-row table as a small annotated table.
        A circuit: its largest size drawn as a graph (`column`: the size, e.g. "20"); an
        evaluation: its faithfulness curve."""
        from patchc.plots import figure

        table = self._table(name)
        entry = self.manifest.get("tables", {}).get(name, {})
        if table.op == "lens":  # the lens figure `patchc run --out` writes
            from patchc.plot_lens import lens_figures, lens_scales

            figs = lens_figures(name, self.tables[name], list(entry.get("keys", [])),
                                entry.get("tokens"), entry.get("baselines"),
                                positions=(entry.get("plot") or {}).get("positions") or {},
                                scales=lens_scales(entry.get("plot")))
            chosen = [f for col, _, f in figs if column in (None, col)]
            if not chosen:
                raise KeyError(f"table {name!r} has no measured column {column!r}")
            return chosen[0]
        if table.op in ("circuit", "evaluate"):  # the circuit's drawing, the curve
            from patchc.plot_circuit import circuit_figure, curve_figure

            info = entry.get("plot") or {}
            if table.op == "evaluate":
                return curve_figure(name, self.tables[name], info)
            return circuit_figure(name, self.tables[name], info, column)
        pairs = self.pairs(name)
        return figure(name, self.tables[name], list(entry.get("keys", [])),
                      entry.get("plot"), pairs if not pairs.empty else None, column)

    def _table(self, name: str) -> Table:
        table = next((t for t in self._ir.tables if t.name == name), None)
        if table is None:
            raise KeyError(f"no table {name!r}; tables: {', '.join(self.tables)}")
        return table

    def per_example(self, name: str) -> pd.DataFrame:
        return per_example_table(self._table(name), self._values)

    def baselines(self, name: str) -> dict[str, Any]:
        """What 0 and 1 mean in each normalized column of table `name` (table_baselines)."""
        return table_baselines(self._ir, self._table(name), self._values)

    def unpatched(self, name: str) -> dict[str, Any]:
        """Each raw column of intervention table `name` measured on its target run (and
        source run) unpatched: `{"ld": {"target": {"run": "corrupt", "value": -0.68},
        "source": {"run": "clean", "value": 7.12}}}` (tables.table_unpatched)."""
        return table_unpatched(self._ir, self._table(name), self._values)

    def left_out(self, name: str) -> dict[str, str]:
        """The raw columns of intervention table `name` whose unpatched value on the target
        run was left out (a model pass of its own), each with that run."""
        return unpatched_left_out(self._ir, self._table(name), self._values)

    def activations(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of `read ... as NAME`, by concrete site (runtime/reading.py says
        their layout)."""
        table = self._table(name)
        if table.op != "read":
            raise KeyError(f"table {name!r} is not a `read`")
        return {dict(row.key)["site"]: self._values[row.values[0][1]] for row in table.rows}

    def tokens(self, name: str) -> list[list[str]]:
        """The tokens of each example of the run a `read` or `lens` table looked at."""
        return self._tokens.get(name, [])

    def write_files(self, folder) -> None:
        """Write every output file of the run (not the manifest) into a folder
        (patchc/outputs.Folder: a run's staging folder, or verify's rerun folder): per
        table NAME.csv, NAME.examples.csv, NAME.safetensors for a `read`, NAME.pairs.csv
        for a `compare`; then each of `self.outputs`."""
        for name, df in self.tables.items():
            folder.write_text(f"{name}.csv", df.to_csv(index=False))
            examples = self.per_example(name)
            if not examples.empty:
                folder.write_text(f"{name}.examples.csv", examples.to_csv(index=False))
            if self._table(name).op == "read":
                self._write_tensors(folder.path(f"{name}.safetensors"), name)
            pairs = self.pairs(name)  # compare: the points of its scatter plot
            if not pairs.empty:
                folder.write_text(f"{name}.pairs.csv", pairs.to_csv(index=False))
            if self._table(name).op == "circuit":  # NAME_K.dot and .json per size
                from patchc.circuit_graph import circuit_files

                info = self.manifest.get("tables", {}).get(name, {}).get("plot", {})
                try:
                    files = circuit_files(name, df, info)
                except Exception as e:  # noqa: BLE001 - a drawing must never cost the tables
                    print(f"patchc: warning: no graph files for circuit {name}: "
                          f"{type(e).__name__}: {e}", file=sys.stderr)
                    files = {}
                for file, text in files.items():
                    folder.write_text(file, text)
        for name, write in self.outputs.items():
            write(folder.path(name))

    def save(self, out_dir: str | os.PathLike[str], force: bool = False,
             plots: bool = False) -> list[Path]:
        """Write the result folder out_dir (write_files, manifest.json, and the PNGs with
        `plots`), all at once: see patchc/outputs.py. Refuses a folder that holds other
        files unless `force`."""
        from patchc.outputs import save_result

        return save_result(self, out_dir, force=force, plots=plots)

    def _write_tensors(self, path: Path, name: str) -> None:
        """NAME.safetensors: one tensor per site; the metadata holds each example's tokens
        and each site's positions in the first example (JSON), for plots drawn from the
        folder alone."""
        from safetensors.torch import save_file

        meta = {"tokens": json.dumps(self.tokens(name)),
                "positions": json.dumps(self._positions.get(name, {}))}
        tensors = {k: v.contiguous() for k, v in self.activations(name).items()}
        save_file(tensors, str(path), metadata=meta)
