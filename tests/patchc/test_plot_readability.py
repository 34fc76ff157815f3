"""What the bundled examples' plots got wrong when looked at, each fixed and pinned here on
the Figure's structure (never pixels): titles cut at a wrapped site list, `* -> * A → B`
with three arrows, capture columns named only `j`, missing cells that looked like "no
effect", every other receiver of an edge table unnamed, one-cell heatmap panels per edge,
and circuit graphs coloured the other way round from the heatmaps of the same table."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from patchc.circuit_graph import _hex
from patchc.compiler.parse import parse
from patchc.plot_circuit import effect_colormap
from patchc.plotinfo import _capture_labels, _title
from patchc.plots import figure

pytestmark = pytest.mark.filterwarnings("error")

HEAD = ('model "m"\ndata d = "d.jsonl"\nrun clean = d.x\nrun corrupt = d.y\n'
        "metric ld = logit(d.t) - logit(d.u)\n")


def _op(text: str):
    return parse(HEAD + text, "<t>", ".").statements[-1]


def _draw(fig) -> None:
    fig.savefig(io.BytesIO(), format="png")


def test_a_title_keeps_the_whole_site_list_and_edges_keep_from_into():
    op = _op("compare atp, relp, ig(steps=8) against swap on L*.H*.z @ last, "
             "L*.mlp.out @ each, L*.resid_pre @ each from clean into corrupt\n"
             "    measure ld normalized\n    as agreement\n")
    title = _title(SimpleNamespace(op="compare", name="agreement"), op)
    assert title == ("compare atp, relp, ig(steps=8) against swap on L*.H*.z @ last, "
                     "L*.mlp.out @ each, L*.resid_pre @ each clean → corrupt")
    edges = _op("swap * -> * from corrupt into clean  measure ld  as edges\n")
    assert _title(SimpleNamespace(op="swap", name="edges"), edges) == \
        "swap * -> * from corrupt into clean"


def test_capture_columns_are_named_by_the_index_they_bind():
    labels = _capture_labels("backpatch L$j.resid_post -> L$i.resid_post @ last in q")
    assert labels == {"j": "layer $j", "i": "layer $i"}
    assert _capture_labels("swap L$l.H$h.z clean → corrupt") == {"l": "layer $l",
                                                                 "h": "head $h"}
    df = pd.DataFrame([{"j": j, "i": i, "solved": (i + j) / 6} for j in range(1, 4)
                       for i in range(j)])
    fig = figure("bp", df, ["j", "i"], {"columns": {"solved": {"scale": "probability"}},
                                        "key_labels": labels})
    _draw(fig)
    ax = fig.axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == (r"layer \$j", r"layer \$i")  # `$`: text


def _edges(n_senders: int, n_receivers: int) -> pd.DataFrame:
    # an edge exists only from an earlier sender: the rest of the grid is missing
    return pd.DataFrame([{"sender": f"S{s}", "receiver": f"R{r}", "ld": 7.0 + (r - s) / 10}
                         for s in range(n_senders) for r in range(n_receivers) if r >= s])


def test_missing_cells_are_hatched_and_every_receiver_is_named():
    info = {"columns": {"ld": {"scale": "signed", "centre": 7.0, "centre_run": "clean"}}}
    fig = figure("edges", _edges(11, 58), ["sender", "receiver"], info)
    _draw(fig)
    ax = fig.axes[0]
    assert ax.patch.get_hatch() == "////"  # shows through where a cell is NaN
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"R{r}" for r in range(58)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"S{s}" for s in range(11)]
    full = figure("heads", pd.DataFrame([{"layer": a, "head": b, "ld": a - b}
                                         for a in range(2) for b in range(2)]),
                  ["layer", "head"], info)
    assert full.axes[0].patch.get_hatch() is None  # nothing missing, nothing hatched


def test_a_position_axis_without_tokens_says_position():
    df = pd.DataFrame([{"layer": a, "pos": p, "ld": a * p} for a in range(2) for p in range(5)])
    fig = figure("resid", df, ["layer", "pos"], {"columns": {"ld": {"scale": "signed"}}})
    assert fig.axes[0].get_xlabel() == "position"


def _inside(fig) -> None:
    """Every text of the figure lies within it and the axes keep a usable height."""
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 \
        and drawn.y1 <= h + 0.01
    assert all(ax.get_position().height * h > 1.0 for ax in fig.axes)


def test_site_items_of_one_edge_each_are_bars_not_one_cell_panels():
    sites = ["embed -> L0.H3.k @ 9", "embed -> L0.H3.v @ 9", "L0.H3.out -> logits @ last"]
    df = pd.DataFrame([{"site": s, "sender": s.split(" ->")[0], "receiver": s.split("> ")[1],
                        "ld": v} for s, v in zip(sites, [0.0, 0.91, 0.02])])
    info = {"columns": {"ld": {"scale": "signed", "zero": "clean", "one": "corrupt"}}}
    fig = figure("s2_end", df, ["site", "sender", "receiver"], info)
    _draw(fig)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert not ax.images
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    # names this long read across: horizontal bars, the first item on top
    assert [b.get_width() for b in bars] == pytest.approx([0.0, 0.91, 0.02])
    assert [t.get_text() for t in ax.get_yticklabels()] == sites
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    _inside(fig)


def test_circuit_graphs_colour_a_raised_metric_red_as_the_heatmaps_do():
    cmap = effect_colormap()
    r, _, b, _ = cmap(1.0)  # the largest positive effect
    assert r > 0.3 > b
    r, _, b, _ = cmap(0.0)  # the most negative
    assert b > 0.3 > r
    red, blue = _hex(1.0), _hex(-1.0)  # the DOT's edge colours, the same way round
    assert int(red[1:3], 16) > int(red[5:7], 16) and int(blue[5:7], 16) > int(blue[1:3], 16)


def test_a_grouped_bar_legend_sits_under_the_axes_not_on_the_bars():
    df = pd.DataFrame([{"site": s, "layer": i, "ld": 5.0 * (s == "mlp") * (i == 0) - i / 4}
                       for s in ("attn", "mlp", "embed") for i in range(4)])
    fig = figure("blocks", df, ["site", "layer"], {"columns": {"ld": {"scale": "signed"}}})
    _draw(fig)
    (ax,) = fig.axes
    (legend,) = fig.legends
    renderer = fig.canvas.get_renderer()
    box, axes = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y1 <= axes.y0  # wholly below the axes (and its x label)


def test_attention_keys_after_the_query_are_blank_only_when_the_model_never_attends_there():
    import torch

    from patchc.plot_attention import _mask_future

    causal = torch.tril(torch.full((4, 4), 0.25))
    shown = _mask_future(causal, None)
    assert torch.isnan(shown).sum() == 6 and not torch.isnan(shown.tril()).any()
    last = _mask_future(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), [1])  # query at position 1
    assert torch.isnan(last).tolist() == [[False, False, True, True]]
    full = torch.full((3, 3), 1 / 3)  # a bidirectional pattern: nothing is masked
    assert torch.equal(_mask_future(full, None), full)


def test_a_circuit_of_dictionary_latents_draws_every_node_in_its_own_place():
    from patchc.circuit_graph import circuit_graph
    from patchc.plot_circuit import PER_ROW, layout_figure

    nodes = ["s1.err @ last", "t0.err @ last"] + [f"s1[{i}] @ last" for i in range(18)]
    df = pd.DataFrame({"node": nodes, "ld": 0.0, "effect": [1.0 - i / 20 for i in range(20)],
                       "rank": range(1, 21)})
    g = circuit_graph(df, 20, "ld", 4, 4)
    fig = layout_figure(g, "circuit by_exact: top 20")
    _draw(fig)
    ax = fig.axes[0]
    boxes = {t.get_text(): t.get_position() for t in ax.texts}
    assert set(boxes) == {n.split(" @ ")[0] for n in nodes}
    assert len(set(boxes.values())) == 20  # no two nodes on one spot
    assert len({y for _, y in boxes.values()}) == -(-20 // PER_ROW)  # rows of PER_ROW


def test_site_items_over_512_features_are_a_heatmap_row_each_and_error_terms_a_number():
    rows = [{"site": "t0.err @ last", "feature": np.nan, "ld": 0.24}]
    rows += [{"site": s, "feature": f, "ld": -0.68 + (f == 101) * 0.3}
             for s in ("t0[*] @ last", "s1[*] @ last") for f in range(512)]
    info = {"title": "swap t0[*] @ last, t0.err @ last, s1[*] @ last clean → corrupt",
            "columns": {"ld": {"scale": "signed", "centre": -0.68, "centre_run": "corrupt"}}}
    fig = figure("exact_nodes", pd.DataFrame(rows), ["site", "feature"], info)
    _draw(fig)
    ax = fig.axes[0]
    (im,) = ax.images
    assert im.get_array().shape == (2, 512)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["s1[*] @ last", "t0[*] @ last"]
    assert ax.get_title().endswith("t0.err @ last: ld = 0.24")


def test_a_flat_fraction_against_a_coefficient_is_drawn_on_its_whole_range():
    df = pd.DataFrame({"scale": [1.0, 2.0, 4.0], "positive": [1.0, 1.0, 1.0]})
    info = {"numeric_keys": ["scale"], "columns": {"positive": {"scale": "probability"}}}
    fig = figure("toward_positive", df, ["scale"], info)
    _draw(fig)
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= 0 and hi >= 1
    spread = pd.DataFrame({"scale": [1.0, 2.0, 4.0], "positive": [0.2, 0.5, 0.9]})
    lo, hi = figure("t", spread, ["scale"], info).axes[0].get_ylim()
    assert lo > 0.1  # a real spread keeps matplotlib's own limits


def test_a_title_never_breaks_an_edge_at_its_arrow():
    from patchc.plot_style import wrap

    lines = wrap("swap embed -> L0.H3.k @ 9, embed -> L0.H3.v @ 9, L0.H3.out -> L0.mlp.in @ "
                 "last, L0.mlp.out -> logits @ last from corrupt into clean", 42)
    assert len(lines) > 1
    assert not any(line.startswith("->") or line.endswith("->") for line in lines)
    assert "L0.H3.out -> L0.mlp.in @ last," in " | ".join(lines)
