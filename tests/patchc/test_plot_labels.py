"""Plot labels that a reader trusts: every text inside the figure, whole-number layer ticks,
readable site names, honest position labels, balanced title lines, and a scalar site item
(`embed` beside `L*.H*.out`) as a number rather than a 1x1 panel. Asserted on the Figure's
structure, with warnings as errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from patchc.plot_lens import lens_figures
from patchc.plot_style import site_name, title, wrap
from patchc.plots import figures, plot_table

pytestmark = pytest.mark.filterwarnings("error")

NORM = {"ld_frac": {"0": {"run": "corrupt", "value": 0.5256},
                    "1": {"run": "clean", "value": 4.751}}}


def _texts_inside(fig) -> None:
    """Everything the figure draws (titles, labels, tick labels) lies within its own box."""
    fig.savefig(io.BytesIO(), format="png")
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    w, h = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 \
        and drawn.y1 <= h + 0.01, f"drawn {drawn} runs past the figure's {w} x {h} in"


def _lens_by_layer() -> pd.DataFrame:
    # lens embed, L*.resid_post on a 4-layer model: embed has no layer.
    rows = [{"site": "embed", "layer": math.nan, "ld_frac": -0.28, "ld_frac_se": 0.1}]
    rows += [{"site": "L*.resid_post", "layer": float(i), "ld_frac": i / 3, "ld_frac_se": 0.1}
             for i in range(4)]
    return pd.DataFrame(rows)


def test_lens_layer_ticks_are_whole_numbers_and_the_y_label_fits():
    ((_, _, fig),) = lens_figures("by_layer", _lens_by_layer(), ["site", "layer"], None, NORM)
    _texts_inside(fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["embed", "0", "1", "2", "3"]
    assert all(float(v).is_integer() for v in ax.get_xticks())
    assert ax.get_ylabel() == "ld_frac"  # the normalization is in the title
    assert "ld_frac normalized: 0 = corrupt (0.5256), 1 = clean (4.751)" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["embedding: embed", "residual stream (post): L*.resid_post"]


def _lens_pos(n_pos: int) -> pd.DataFrame:
    return pd.DataFrame([{"layer": lyr, "pos": p, "p": (lyr + p) / 20} for lyr in range(2)
                         for p in range(n_pos)])


def test_lens_positions_of_prompts_of_different_lengths_are_numbered_not_example_0s_tokens():
    tokens = ["The", " Eiffel", " Tower", " is"]  # example 0: 4 tokens; another prompt has 5
    ((_, _, fig),) = lens_figures("lens_pos", _lens_pos(5), ["layer", "pos"], tokens)
    _texts_inside(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    assert ax.get_xlabel() == "position"
    assert "mean over prompts that have the position" in ax.get_title().replace("\n", " ")
    # A caller that knows the prompts do not line up (no `positions` in the plot facts) gets
    # numbers even when example 0 is the longest.
    ((_, _, fig),) = lens_figures("lens_pos", _lens_pos(4), ["layer", "pos"], tokens,
                                  positions={})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2", "3"]
    # Prompts of one length: their tokens, a `*` where they differ, and the axis says so.
    ((_, _, fig),) = lens_figures("lens_pos", _lens_pos(4), ["layer", "pos"], tokens,
                                  positions={"tokens": ["The", " Eiffel*", " Tower", " is"]})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["The", "Eiffel*", "Tower", "is"]
    assert "varies across prompts" in ax.get_xlabel()


def test_a_scalar_site_item_is_a_number_in_the_title_not_a_nan_panel():
    # dla L*.H*.out, embed in clean: embed has neither layer nor head.
    rows = [{"site": "L*.H*.out", "layer": float(lyr), "head": float(h), "ld": (lyr - h) / 4,
             "ld_se": 0.01} for lyr in range(4) for h in range(4)]
    rows.append({"site": "embed", "layer": math.nan, "head": math.nan, "ld": -0.0155,
                 "ld_se": 0.014})
    info = {"title": "dla L*.H*.out, embed in clean", "columns": {"ld": {"scale": "signed"}}}
    ((_, fig),) = figures("dla_", pd.DataFrame(rows), ["site", "layer", "head"], info)
    _texts_inside(fig)
    panels = [im.axes for ax in fig.axes for im in ax.images]
    assert [ax.get_title() for ax in panels] == ["head outputs: L*.H*.out"]
    ticks = [t.get_text() for ax in panels for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert "nan" not in ticks
    assert "embedding: embed: ld = -0.0155 ± 0.014" in fig.get_suptitle().replace("\n", " ")


def test_compare_scatter_labels_stay_inside_the_saved_image(tmp_path):
    exact = np.linspace(-0.1, 0.4, 16)
    pairs = pd.DataFrame([{"site_kind": k, "method": "atp", "site": f"L{i // 4}.{k}",
                           "exact": e, "estimate": e * 0.9}
                          for k in ("z", "mlp.out") for i, e in enumerate(exact)])
    table = pd.DataFrame([{"site_kind": k, "method": "atp", "pearson": 0.95, "spearman": 0.9}
                          for k in ("z", "mlp.out")])
    info = {"title": "compare atp against swap on L*.H*.z @ last clean → corrupt",
            "measures": ["ld"], "columns": {
                "pearson": {"scale": "correlation"},
                "ld": {"scale": "signed", "zero": "corrupt", "one": "clean",
                       "baselines": {"corrupt": -0.679, "clean": 7.12}}}}
    ((_, fig),) = figures("cmp", table, ["site_kind", "method"], info, pairs)
    _texts_inside(fig)
    (png,) = plot_table("cmp", table, ["site_kind", "method"], tmp_path, info, pairs)
    from matplotlib.image import imread

    img = imread(png)
    # The bottom rows of the image are margin, not the x label's second line cut in half.
    assert np.allclose(img[-3:, :, :3], 1.0)


def test_titles_wrap_in_balanced_lines_never_one_word_alone():
    import textwrap

    head = "attribute L*.H*.z @ last, L*.mlp.out @ each from clean into corrupt using atp"
    chars = int(8.0 * 9.5)  # what title() fits on an 8-inch figure
    assert textwrap.wrap(head, chars)[-1] == "atp"  # a greedy wrap strands a word
    for width in (chars - 3, chars):
        lines = wrap(head, width)
        assert len(lines) == 2 and all(len(line.split()) > 2 for line in lines)
        # `L*.mlp.out @ each` stays whole
        assert not any(line.endswith("@") or line.startswith("@") for line in lines)
    dla = wrap("dla embed @ last, L*.attn.out @ last, L*.mlp.out @ last in clean", 38)
    assert all(not line.startswith("@") and not line.endswith("@") for line in dla)
    t = title({"title": head}, "ld", "x", width=8.0)
    assert all(len(line.split()) > 1 for line in t.split("\n"))


def test_site_names_are_readable_and_keep_the_pattern():
    assert site_name("L*.resid_post") == "residual stream (post): L*.resid_post"
    assert site_name("L*.H*.out") == "head outputs: L*.H*.out"
    assert site_name("L2.mlp.out @ last") == "MLP outputs: L2.mlp.out @ last"
    assert site_name("a") == "a"  # not a site: as written


def test_patchc_plot_labels_lens_positions_from_the_plot_facts_not_example_0(tmp_path,
                                                                          monkeypatch):
    import json

    import patchc.plot_lens as L
    from patchc.plots import plot_dir

    drawn: list = []
    real = L.lens_figures

    def keep(*args, **kwargs):  # the figures plot_dir writes, kept to look at
        drawn.extend(real(*args, **kwargs))
        return drawn

    monkeypatch.setattr(L, "lens_figures", keep)
    _lens_pos(4).to_csv(tmp_path / "lens_pos.csv", index=False)
    table = {"op": "lens", "rows": 8, "columns": ["layer", "pos", "p"], "keys": ["layer", "pos"],
             "tokens": ["When", " Mary", " and", " John"]}  # example 0's
    for plot, want in (({}, ["0", "1", "2", "3"]),  # the prompts do not line up
                       ({"positions": {"run": "clean",
                                       "tokens": ["When", " Mary*", " and", " John*"]}},
                        ["When", "Mary*", "and", "John*"])):
        drawn.clear()
        (tmp_path / "manifest.json").write_text(json.dumps(
            {"tables": {"lens_pos": {**table, "plot": plot}}}))
        (png,) = plot_dir(tmp_path)
        ((_, _, fig),) = drawn
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == want
