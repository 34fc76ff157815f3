"""A lens over sites that have no layer (a dictionary's latents and error term, or sites of
a table without a `layer` column) names them on the x axis instead of drawing every one at
"layer 0"; a latent sweep is drawn over its own column; a one-row table draws nothing."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from patchc.plot_lens import lens_figures  # noqa: E402


def _ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_sites_without_layers_are_named():
    # lens s2[228], s2.err, L1.resid_post: the table has no `layer` column
    df = pd.DataFrame({"site": ["s2[228]", "s2.err", "L1.resid_post"],
                       "ld": [2.4, -2.1, 6.4], "ld_se": [1.0, 0.8, 1.6]})
    ((_, _, fig),) = lens_figures("mixed", df, ["site"])
    (ax,) = fig.axes
    assert _ticks(ax) == ["s2[228]", "s2.err", "L1.resid_post"]
    assert ax.get_xlabel() == "site" and "decoded at each site" in ax.get_title()


def test_a_latent_beside_layers_stands_before_them_with_its_name():
    rows = [{"site": "embed", "layer": math.nan, "ld": -0.4},
            {"site": "s2[228]", "layer": math.nan, "ld": 2.4}]
    rows += [{"site": "L*.resid_post", "layer": float(i), "ld": 6.0} for i in range(4)]
    ((_, _, fig),) = lens_figures("t", pd.DataFrame(rows), ["site", "layer"])
    (ax,) = fig.axes
    assert _ticks(ax) == ["embed", "s2[228]", "0", "1", "2", "3"]
    assert ax.get_xlabel() == "layer"


def test_a_latent_sweep_is_drawn_over_its_column():
    df = pd.DataFrame({"feature": range(5), "ld": [0.1, 0.5, 0.0, 0.2, 0.0]})
    ((_, _, fig),) = lens_figures("sweep", df, ["feature"])
    (ax,) = fig.axes
    assert _ticks(ax) == ["0", "1", "2", "3", "4"] and ax.get_xlabel() == "feature"


def test_one_row_without_sweep_draws_no_figure():
    assert lens_figures("emb", pd.DataFrame({"ld": [-0.37], "ld_se": [0.35]}), []) == []


def test_a_log_probability_lens_is_one_sided():
    """A lens of `logprob` (scale `level`) is drawn on a sequential colour map; a logit
    difference (`signed`) on a diverging one centred at 0."""
    import pandas as pd

    from patchc.plot_lens import lens_figures

    df = pd.DataFrame({"layer": [0, 0, 1, 1], "pos": [0, 1, 0, 1],
                       "v": [-3.0, -1.0, -2.0, -0.5]})
    for scale, cmap in (("level", "viridis"), ("signed", "RdBu_r")):
        ((_, _, fig),) = lens_figures("t", df, ["layer", "pos"], scales={"v": scale})
        assert fig.axes[0].images[0].get_cmap().name == cmap
