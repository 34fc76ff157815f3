"""The numbers and figures of docs/circuits.md, from a result folder of
examples/ioi_circuit.patch:

    patchc run examples/ioi_circuit.patch --out out/ioi_circuit
    python tools/circuit_figures.py out/ioi_circuit [--img docs/img]

Prints, for each estimate (eap, eap_ig, relp), the Pearson and Spearman r of its effects with
the exact path-patching effects over every edge (the tables' `effect` columns: estimate minus
the clean run's metric), and the cpr/cmd of each method's circuits. With --img it writes
`circuit_methods.png` (every method's faithfulness curve on one plot) and
`circuit_scatter.png` (each estimate against the exact effect).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

METHODS = ("eap", "eap_ig", "relp")


def effects(folder: Path, name: str) -> pd.Series:
    """A circuit table's effect per edge, indexed by (sender, receiver)."""
    df = pd.read_csv(folder / f"c_{name}.csv")
    return df.set_index(["sender", "receiver"])["effect"]


def correlations(folder: Path) -> dict[str, tuple[float, float, int]]:
    exact = effects(folder, "exact")
    out = {}
    for m in METHODS:
        est = effects(folder, m).reindex(exact.index)
        # Spearman: Pearson of the ranks (pandas would need scipy for method="spearman")
        out[m] = (float(exact.corr(est)), float(exact.rank().corr(est.rank())), len(est))
    return out


def curves(folder: Path) -> dict[str, pd.DataFrame]:
    return {m: pd.read_csv(folder / f"faith_{m}.csv") for m in ("exact",) + METHODS}


def draw(folder: Path, img: Path) -> None:
    from patchc import plot_style as S

    img.mkdir(parents=True, exist_ok=True)
    fig = S.new_figure(6.4, 4.4)
    ax = fig.subplots()
    for m, df in curves(folder).items():
        d = df.sort_values("fraction")
        ax.plot(d["fraction"], d["faithfulness"], marker="o", ms=3,
                label=f"{m}: cpr {d['cpr'].iloc[0]:.3f}, cmd {d['cmd'].iloc[0]:.3f}")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("fraction of the 479 edges kept (log scale)")
    ax.set_ylabel("faithfulness (0 = empty circuit, 1 = model)")
    ax.set_title("IOI, bundled GPT-2: circuits of each method's top edges", fontsize="medium")
    ax.legend(loc="upper left", fontsize="small")
    fig.savefig(img / "circuit_methods.png", dpi=130, bbox_inches="tight", pad_inches=0.1)

    exact = effects(folder, "exact")
    r = correlations(folder)
    fig = S.new_figure(11.0, 3.8)
    axes = fig.subplots(1, len(METHODS))
    lim = max(abs(exact).max(), *(abs(effects(folder, m)).max() for m in METHODS)) * 1.05
    for ax, m in zip(axes, METHODS):
        est = effects(folder, m).reindex(exact.index)
        ax.scatter(exact, est, s=8, alpha=0.6)
        ax.axline((0, 0), slope=1, color="grey", lw=0.8, ls="--")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{m}: Pearson r {r[m][0]:.3f}", fontsize="medium")
        ax.set_xlabel("exact effect on ld (path patching)")
    axes[0].set_ylabel("estimated effect on ld")
    fig.savefig(img / "circuit_scatter.png", dpi=130, bbox_inches="tight", pad_inches=0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--img", type=Path)
    args = ap.parse_args()
    for m, (p, s, n) in correlations(args.folder).items():
        print(f"{m:7s} vs exact over {n} edges: Pearson r {p:.3f}, Spearman {s:.3f}")
    for m, df in curves(args.folder).items():
        d = df.sort_values("fraction")
        pts = ", ".join(f"{int(k)}: {f:.3f}" for k, f in zip(d["edges"], d["faithfulness"])
                        if not math.isnan(f))
        print(f"{m:7s} cpr {d['cpr'].iloc[0]:.3f}  cmd {d['cmd'].iloc[0]:.3f}   {pts}")
    if args.img:
        draw(args.folder, args.img)


if __name__ == "__main__":
    main()
