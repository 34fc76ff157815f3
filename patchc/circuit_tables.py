"""The tables of circuits (docs/circuits.md): a circuit's ranking and an evaluation's
faithfulness curve with its areas.

- `circuit NAME = top K of TABLE` -> table NAME: every row of TABLE, largest |effect| first,
  with its value (as TABLE shows it), `effect` (the value minus the value with no
  intervention, runtime/circuits.py) and `rank` (1 = largest |effect|). The circuit of size
  K is the rows with rank <= K.
- `evaluate` -> one row per size: the rows kept (`nodes` or `edges`), `fraction` of the
  table, each metric, its `faithfulness`, and the table's areas under the curve, `cpr` and
  `cmd` (compiler/lower_circuits.areas), the same on every row.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from patchc.compiler.ir import Table
from patchc.compiler.lower_circuits import areas


def ranked(table: Table, df: pd.DataFrame, values: dict[str, Any]) -> pd.DataFrame:
    """A circuit's table: its rows with effect and rank, sorted by rank."""
    ranking = values[table.select]  # runtime.circuits.Ranking
    df = df.copy()
    df["effect"] = list(ranking.effects)
    df["rank"] = list(ranking.ranks)
    return df.sort_values("rank", kind="stable").reset_index(drop=True)


def with_areas(table: Table, df: pd.DataFrame) -> pd.DataFrame:
    """An evaluation's table with cpr and cmd for each faithfulness column."""
    df = df.copy()
    for col in [c for c in table.columns if c.startswith("faithfulness")]:
        suffix = col[len("faithfulness"):]
        points = list(zip(df["fraction"].astype(float), df[col].astype(float)))
        cpr, cmd = areas(points)
        df["cpr" + suffix] = cpr
        df["cmd" + suffix] = cmd
    return df
