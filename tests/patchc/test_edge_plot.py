"""An edge table's heatmap keeps the model's order of senders and receivers (the table's
order), not the alphabet's: `embed` first, `logits` last."""

import pandas as pd

from patchc import plots


def test_edge_heatmap_axes_follow_the_table() -> None:
    rows = [("embed", "L0.H1.q"), ("embed", "L0.mlp.in"), ("embed", "logits"),
            ("L0.H1.out", "L0.mlp.in"), ("L0.H1.out", "logits"), ("L0.mlp.out", "logits")]
    df = pd.DataFrame([{"sender": s, "receiver": r, "ld": float(i)}
                       for i, (s, r) in enumerate(rows)])
    ((_, fig),) = plots.figures("edges", df, ["sender", "receiver"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embed", "L0.H1.out", "L0.mlp.out"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L0.H1.q", "L0.mlp.in", "logits"]
