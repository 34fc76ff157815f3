"""The attention figure of a `read` of patterns (at every position): one panel per head,
query tokens down, key tokens across, each axis labelled with the prompt's tokens (example 0
of the run, padding removed). One colour scale, 0 to 1, for every panel: the probabilities
are comparable. Keys a causal model cannot attend to (after the query) are left blank.

`patchc run --out DIR` draws NAME.png next to NAME.safetensors; `patchc plot DIR` redraws it
from those files alone (the tokens are in the safetensors metadata).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

# Past this many tokens, label every k-th one: labels that overlap cannot be read.
MAX_LABELS = 40


def _natural(site: str) -> list:
    """`L0.H2.pattern` before `L0.H10.pattern`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", site)]


def _ticks(tokens: list[str], n: int) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(n / MAX_LABELS))
    idx = list(range(0, n, step))
    return idx, [tokens[i] if i < len(tokens) else str(i) for i in idx]


def _mask_future(grid: torch.Tensor, query: list[int] | None) -> torch.Tensor:
    """A causal model's keys after the query are exactly 0: blank them (NaN), so the
    triangle that can attend stands apart from weak attention, which is as dark."""
    rows = torch.tensor(query if query is not None else range(grid.shape[0]))[:grid.shape[0]]
    future = torch.arange(grid.shape[1])[None, :] > rows[:, None]
    if bool(future.any()) and bool((grid[future] == 0).all()):
        return grid.masked_fill(future, float("nan"))
    return grid


def plot_patterns(name: str, patterns: dict[str, torch.Tensor], tokens: list[str],
                  out_dir: Path, example: int = 0,
                  positions: dict[str, list[int]] | None = None) -> list[Path]:
    """NAME.png: every `...pattern` tensor of a read, example `example`; [] when the read
    has no pattern. `positions`: the query positions of each site in example 0 (a read at
    some positions); without them only patterns read at every position are drawn."""
    positions = positions or {}
    from patchc.plot_style import new_figure, text, token_text

    tokens = [text(token_text(t)) for t in tokens]  # `$` is not mathtext; missing glyphs

    # The query axis is labelled with the tokens at the read's positions: known for a read
    # at every position, or from `positions`.
    heads = {k: patterns[k] for k in sorted(patterns, key=_natural)
             if k.endswith("pattern") and patterns[k].dim() == 3
             and (k in positions or patterns[k].shape[1] == patterns[k].shape[2])}
    if not heads:
        return []
    n = len(heads)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    size = max(3.0, min(6.0, 0.28 * len(tokens) + 1.5))
    # A read at a few query positions gets short panels, not stretched cells.
    n_query = max(t.shape[1] for t in heads.values())
    # (the rotated key tokens below take ~1.2 in of it: a one-query panel of 1.8 in was a
    # sliver, its colour bar a few pixels)
    short = n_query < len(tokens)
    height = max(2.8, min(size, 0.3 * n_query + 2.4)) if short else size
    fig = new_figure(size * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for k, (ax, (site, t)) in enumerate(zip(axes.flat, heads.items())):
        grid = t[example].float()
        keep = ~torch.isnan(grid).all(1)  # query rows past a short prompt's end
        grid = grid[keep] if not bool(keep.all()) else grid
        grid = grid[:, : len(tokens)] if tokens else grid  # key slots past its end
        grid = _mask_future(grid, positions.get(site))
        image = ax.imshow(grid.numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest",
                          aspect="equal" if grid.shape[0] == grid.shape[1] else "auto")
        query = positions.get(site, list(range(grid.shape[0])))[: grid.shape[0]]
        labels = [tokens[p] if p < len(tokens) else str(p) for p in query]
        step = max(1, math.ceil(len(labels) / MAX_LABELS))
        ax.set_yticks(range(0, len(labels), step), labels[::step])
        ax.set_xticks(*_ticks(tokens, grid.shape[1]), rotation=90)
        ax.set_title(site, fontsize=10)
        if k % cols == 0:
            ax.set_ylabel("query token")
        ax.set_xlabel("key token")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), shrink=0.8, aspect=8 if short else 20,
                     label="attention probability")
    fig.suptitle(f"{name}: attention patterns (read), example {example}")
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return [path]


def plot_read_dir(name: str, out_dir: Path) -> list[Path]:
    """Redraw a read's attention figure from DIR/NAME.safetensors."""
    from safetensors import safe_open

    path = out_dir / f"{name}.safetensors"
    if not path.is_file():
        return []
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    tokens = json.loads(meta.get("tokens", "[]"))
    positions = json.loads(meta.get("positions", "{}"))
    return plot_patterns(name, tensors, tokens[0] if tokens else [], out_dir,
                         positions=positions)
