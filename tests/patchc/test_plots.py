"""Plots: which chart a table gets and how it is labelled, asserted on the Figure's structure
(axes, tick labels, colormap, colour limits, titles), never on pixels. Every test draws its
figures to PNG bytes with warnings turned into errors: a plot never warns."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from patchc.plots import figure, figures, plot_table

pytestmark = pytest.mark.filterwarnings("error")

SWAP = {"title": "swap L*.H*.z clean → corrupt",
        "columns": {"ld": {"scale": "signed", "zero": "corrupt", "one": "clean",
                           "baselines": {"corrupt": -0.68, "clean": 7.12}}}}


def _draw(fig) -> None:
    fig.savefig(io.BytesIO(), format="png")


def _images(fig) -> list:
    return [im for ax in fig.axes for im in ax.images]


def _heads(scale_col: str = "ld") -> pd.DataFrame:
    return pd.DataFrame([{"layer": lyr, "head": h, scale_col: (lyr - h) / 10}
                         for lyr in range(3) for h in range(4)])


def test_layer_by_head_heatmap_is_diverging_at_zero_and_says_what_it_measures():
    (suffix, fig), = figures("heads", _heads(), ["layer", "head"], SWAP)
    _draw(fig)
    assert suffix == ""
    (im,) = _images(fig)
    assert im.get_cmap().name == "RdBu_r"
    lo, hi = im.get_clim()
    assert lo == -hi and hi == pytest.approx(0.3)
    ax = im.axes
    assert ax.get_title() == ("swap L*.H*.z clean → corrupt\n"
                              "ld normalized: 0 = corrupt, 1 = clean")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    colorbar = " ".join(im.colorbar.ax.get_ylabel().split())  # (wrapped to the colorbar)
    assert "0 = corrupt (-0.68), 1 = clean (7.12)" in colorbar


@pytest.mark.parametrize("scale,cmap,shift,low", [
    ("probability", "viridis", 0.8, 0.0),  # 0.5..1.0: from 0
    ("rank", "viridis_r", 0.8, 0.0), ("level", "viridis", 0.8, 0.5),
    ("probability", "viridis", 3.0, 2.7),  # 2.7..3.2: all within 20% of the top
    ("rank", "viridis_r", 3.0, 2.7), ("level", "viridis", 0.4, 0.1)])
def test_probabilities_and_ranks_are_sequential(scale, cmap, shift, low):
    df = _heads()
    df["ld"] = df["ld"] + shift  # shift - 0.3 .. shift + 0.2: all positive
    info = {"columns": {"ld": {"scale": scale}}}
    fig = figure("heads", df, ["layer", "head"], info)
    _draw(fig)
    (im,) = _images(fig)
    assert im.get_cmap().name == cmap
    assert im.get_clim() == (pytest.approx(low), pytest.approx(shift + 0.2))


def test_a_sequential_scale_with_negative_values_falls_back_to_diverging():
    fig = figure("h", _heads(), ["layer", "head"], {"columns": {"ld": {"scale": "probability"}}})
    (im,) = _images(fig)
    assert im.get_cmap().name == "RdBu_r"


def _positions(n: int, tokens: list[str] | None) -> tuple[pd.DataFrame, dict]:
    df = pd.DataFrame([{"layer": lyr, "pos": p, "ld": math.sin(p + lyr)}
                       for lyr in range(2) for p in range(n)])
    info = {"columns": {"ld": {"scale": "signed"}}}
    if tokens is not None:
        info["positions"] = {"run": "corrupt", "tokens": tokens}
    return df, info


def test_position_axis_shows_the_prompt_tokens_across():
    tokens = ["When", " Mary*", " and", " $5", " 東", "\n"]
    df, info = _positions(6, tokens)
    fig = figure("resid", df, ["pos", "layer"], info)  # pos first: still drawn across
    _draw(fig)
    ax = _images(fig)[0].axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # `$` escaped (never mathtext), a glyph the font lacks spelled out, whitespace shown.
    assert labels[:4] == ["When", "Mary*", "and", r"\$5"]
    assert labels[4] in ("東", "\\u6771") and labels[5] == "\\n"
    assert ax.get_xlabel() == "position (corrupt tokens; * varies across prompts)"
    assert ax.get_ylabel() == "layer"


def test_a_512_wide_position_axis_is_thinned_not_smeared():
    df, info = _positions(512, [f"t{i}" for i in range(512)])
    fig = figure("resid", df, ["layer", "pos"], info)
    _draw(fig)
    ax = _images(fig)[0].axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 10 <= len(labels) <= 40
    assert labels[:2] == ["0", "13"]  # too long for tokens: every 13th position number
    assert ax.get_xlabel() == "position"


def test_dollar_signs_in_titles_and_names_are_text():
    df = _heads("cost $x")  # an unmatched `$` would make mathtext raise
    info = {"title": "steer L1.resid_post in $run by 2 * v", "columns": {}}
    fig = figure("h$", df, ["layer", "head"], info)
    _draw(fig)
    title = _images(fig)[0].axes.get_title()
    assert title.startswith(r"steer L1.resid_post in \$run")


def test_a_one_row_table_writes_no_png_but_plots_as_a_table(tmp_path):
    df = pd.DataFrame([{"ld": 0.93, "ld_se": 0.04, "ld_frac": 0.5}])
    assert figures("circuit", df, [], SWAP) == []
    assert plot_table("circuit", df, [], tmp_path, SWAP) == []
    fig = figure("circuit", df, [], SWAP)
    _draw(fig)
    (ax,) = fig.axes
    (table,) = ax.tables
    cells = {c.get_text().get_text() for c in table.get_celld().values()}
    assert {"ld", "ld_frac", "0.93 ± 0.04", "0.5"} <= cells
    assert "0 = corrupt (-0.68), 1 = clean (7.12)" in ax.get_title()


def test_three_sweep_variables_are_faceted_on_one_colour_scale():
    df = pd.DataFrame([{"layer": lyr, "head": h, "pos": p, "ld": lyr * 0.5 - h * 0.1 + p}
                       for lyr in range(3) for h in range(4) for p in range(6)])
    fig = figure("heads_pos", df, ["layer", "head", "pos"], SWAP)
    _draw(fig)
    images = _images(fig)
    assert len(images) == 3  # one panel per layer (its fewest values; pos stays an axis)
    assert {im.get_clim() for im in images} == {(-6.0, 6.0)}
    assert [im.axes.get_title() for im in images] == ["layer 0", "layer 1", "layer 2"]
    assert fig.get_supxlabel() == "position" and fig.get_supylabel() == "head"
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    assert fig.get_suptitle().startswith("swap L*.H*.z clean → corrupt")


def test_site_items_get_one_panel_each():
    rows = [{"site": s, "layer": i, "pos": p, "ld": (i - p) / 4 * (1 if s == "a" else -1)}
            for s in ("a", "b") for i in range(3) for p in range(4)]
    df = pd.DataFrame(rows)
    fig = figure("blocks", df, ["site", "layer", "pos"], SWAP)
    _draw(fig)
    assert [im.axes.get_title() for im in _images(fig)] == ["a", "b"]
    assert len({im.get_clim() for im in _images(fig)}) == 1
    four = pd.DataFrame([{**r, "head": 0} for r in rows] + [{**r, "head": 1} for r in rows])
    assert figures("t", four, ["site", "layer", "pos", "head"]) == []


def test_site_items_over_one_index_are_grouped_bars_and_a_layerless_site_stands_first():
    # dla embed @ last, L*.attn.out @ last, L*.mlp.out @ last: embed has no layer.
    df = pd.DataFrame([{"site": "embed @ last", "layer": math.nan, "ld": -0.5}]
                      + [{"site": s, "layer": float(i), "ld": i + (s == "mlp")}
                         for s in ("attn", "mlp") for i in range(3)])
    fig = figure("blocks", df, ["site", "layer"], {"title": "dla", "columns": {}})
    _draw(fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-", "0", "1", "2"]
    (legend,) = fig.legends  # under the axes, off the bars
    assert [t.get_text() for t in legend.get_texts()] == ["embedding: embed @ last", "attn",
                                                          "mlp"]
    heights = [[b.get_height() for b in c] for c in ax.containers]
    assert heights == [[-0.5], [0, 1, 2], [1, 2, 3]]
    assert [round(b.get_x() + b.get_width() / 2) for b in ax.containers[2]] == [1, 2, 3]


def test_numeric_sweeps_are_lines_against_the_coefficient_with_error_bars():
    df = pd.DataFrame([{"site": s, "scale": c, "ld": c * (1 if s == "x" else 2),
                        "ld_se": 0.1} for s in ("x", "y") for c in (-1, 0, 0.5, 2)])
    info = {"title": "scale ... by {-1, 0, 0.5, 2}", "numeric_keys": ["scale"],
            "columns": {"ld": {"scale": "signed"}}}
    found = figures("gain", df, ["site", "scale"], info)
    assert [s for s, _ in found] == [""]  # ld_se is the error bar, not a plot of its own
    fig = found[0][1]
    _draw(fig)
    (ax,) = fig.axes
    lines = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(lines) == 2
    assert list(lines[0].lines[0].get_xdata()) == [-1, 0, 0.5, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["\u22121", "0", "0.5", "2"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x", "y"]
    assert ax.get_xlabel() == "scale"


def test_one_variable_bars_carry_standard_errors_when_the_table_has_them():
    df = pd.DataFrame([{"layer": i, "ld": i - 1.5, "ld_se": 0.2 * i} for i in range(4)])
    fig = figure("mlps", df, ["layer"], SWAP)
    _draw(fig)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert bars.errorbar is not None
    segments = bars.errorbar.lines[2][0].get_segments()
    assert [round(s[1][1] - s[0][1], 6) for s in segments] == [0.0, 0.4, 0.8, 1.2]
    without = figure("mlps", df.drop(columns="ld_se"), ["layer"], SWAP)
    assert all(c.errorbar is None for c in without.axes[0].containers)


def test_compare_is_an_estimate_vs_exact_scatter_with_r():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=8)
    pairs = pd.DataFrame(
        [{"site_kind": k, "method": m, "site": f"L{i}.{k}", "exact": exact[i],
          "estimate": exact[i] * (1 if m == "atp" else -1) + 0.1 * i}
         for k in ("z", "mlp.out") for m in ("atp", "relp") for i in range(8)])
    table = pd.DataFrame([{"site_kind": k, "method": m, "pearson": 0.9, "spearman": 0.9}
                          for k in ("z", "mlp.out") for m in ("atp", "relp")])
    info = {"title": "compare atp, relp against swap on L*.H*.z clean → corrupt",
            "columns": {"pearson": {"scale": "correlation"}}}
    (suffix, fig), = figures("agreement", table, ["site_kind", "method"], info, pairs)
    _draw(fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["z", "mlp.out"]
    legend = [t.get_text() for t in panels[0].get_legend().get_texts()]
    r = np.corrcoef(exact, exact + 0.1 * np.arange(8))[0, 1]
    assert legend[0] == f"atp (r = {r:.2f})" and legend[1].startswith("relp (r = -")
    assert panels[0].get_xlabel().startswith("exact swap")
    assert fig.get_suptitle().startswith("compare atp, relp")


def test_an_index_sweep_is_bars_with_signed_colours():
    df = pd.DataFrame([{"layer": i, "ld": v} for i, v in enumerate([0.5, -0.2, 0.1])])
    fig = figure("mlps", df, ["layer"], SWAP)
    _draw(fig)
    (bars,) = fig.axes[0].containers
    colours = [tuple(round(c, 3) for c in b.get_facecolor()[:3]) for b in bars]
    assert colours[0] != colours[1] and colours[0] == colours[2]
    lines = fig.axes[0].get_lines()
    assert {tuple(line.get_ydata()) for line in lines} >= {(0, 0), (1, 1)}  # 0 and 1 marked


def test_a_ratio_to_the_unpatched_run_is_centred_at_one_where_nothing_changed():
    df = pd.DataFrame([{"layer": lyr, "head": h, "ld": 1 - 0.2 * h + 0.05 * lyr}
                       for lyr in range(2) for h in range(4)])
    info = {"title": "ablate L*.H*.z in clean",
            "columns": {"ld": {"scale": "ratio", "ratio_to": "clean",
                               "baselines": {"clean": 9.59}}}}
    fig = figure("zero_heads", df, ["layer", "head"], info)
    _draw(fig)
    (im,) = _images(fig)
    assert im.get_cmap().name == "RdBu_r"
    assert im.get_clim() == (pytest.approx(0.4), pytest.approx(1.6))
    assert im.axes.get_title().endswith("ld normalized: 0 = zero, 1 = clean")
    bars = figure("b", df[df.layer == 0].drop(columns="layer"), ["head"], info)
    (container,) = bars.axes[0].containers
    colours = [b.get_facecolor() for b in container]
    assert colours[0] != colours[1] and colours[1] == colours[2] == colours[3]  # 1.0 vs < 1


def test_missing_values_draw_without_warnings():
    # `@ each` beyond a short prompt gives NaN cells; an all-NaN column still draws.
    df = pd.DataFrame([{"layer": lyr, "pos": p, "ld": math.nan if p > 2 else p - 1.0,
                        "gone": math.nan} for lyr in range(2) for p in range(5)])
    found = figures("resid", df, ["layer", "pos"], {"columns": {"gone": {"scale": "rank"}}})
    assert [s for s, _ in found] == ["_ld", "_gone"]
    for _, fig in found:
        _draw(fig)
    bars = figure("b", df[df.layer == 0].drop(columns="layer"), ["pos"], {}, column="ld")
    _draw(bars)
    assert len(bars.axes[0].containers[0]) == 5


def test_a_folder_from_before_plot_facts_still_redraws(tmp_path):
    import json

    from patchc.plots import plot_dir

    _heads().to_csv(tmp_path / "heads.csv", index=False)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"tables": {"heads": {"rows": 12, "columns": ["layer", "head", "ld"],
                              "keys": ["layer", "head"]}}}))
    (png,) = plot_dir(tmp_path)
    assert png.name == "heads.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_read_and_lens_figures_take_dollar_tokens_as_text(tmp_path):
    import torch

    from patchc.plot_attention import plot_patterns
    from patchc.plot_lens import plot_lens

    tokens = [" $", "5", " 東", "$x"]  # an unmatched `$` would make mathtext raise
    pattern = torch.softmax(torch.randn(1, 4, 4), -1)
    (png,) = plot_patterns("att", {"L0.H0.pattern": pattern}, tokens, tmp_path)
    assert png.is_file()
    lens = pd.DataFrame([{"layer": lyr, "pos": p, "cost $": lyr + p} for lyr in range(2)
                         for p in range(4)])
    (png,) = plot_lens("lens", lens, ["layer", "pos"], tmp_path, tokens)
    assert png.is_file()
    by_site = pd.DataFrame([{"site": "L$l.H$h.out", "layer": lyr, "ld": lyr} for lyr in range(3)])
    (png,) = plot_lens("lines", by_site, ["site", "layer"], tmp_path)
    assert png.is_file()


def test_a_figure_that_fails_costs_only_itself(tmp_path, monkeypatch, capsys):
    """A table whose figure raises (a bug) is reported on stderr; the other tables of the
    folder still get theirs."""
    import json

    import patchc.plots as P

    for name in ("bad", "good"):
        _heads().to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"tables": {
        name: {"rows": 12, "columns": ["layer", "head", "ld"], "keys": ["layer", "head"]}
        for name in ("bad", "good")}}))
    real = P.plot_table

    def flaky(name, *args, **kwargs):
        if name == "bad":
            raise TypeError("list indices must be integers")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(P, "plot_table", flaky)
    (png,) = P.plot_dir(tmp_path)
    assert png.name == "good.png"
    assert "no figure for table bad: TypeError" in capsys.readouterr().err
