"""What a circuit writes with --out: the ranked table, NAME_K.dot / NAME_K.json per size (the
JSON in EAP-IG's graph layout), NAME_K.png drawings and the evaluation's curve; `patchc plot`
redraws them and `patchc verify` reproduces them."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import patchc  # noqa: E402
from patchc.circuit_graph import component, to_dot, circuit_graph  # noqa: E402
from patchc.plot_circuit import layout_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = f'''model "{ROOT}/examples/models/ioi-gpt2"
data ioi = "{ROOT}/examples/data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
swap L*.H*.z, L*.mlp.out from clean into corrupt  measure ld normalized  as nodes
circuit c = top {{0, 3, 50%}} of nodes
evaluate c in clean with ablate(corrupt)  measure ld  as ev
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("circ") / "out"
    patchc.run(SPEC, threads=1).save(out, plots=True)
    return out


def test_files(folder: Path):
    names = set(os.listdir(folder))
    assert {"c.csv", "c_0.json", "c_3.json", "c_10.json", "c_3.dot", "c_10.dot", "c_3.png",
            "c_10.png", "ev.csv", "ev.png"} <= names
    assert "c_0.png" not in names and "c_0.dot" not in names  # nothing to draw
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"c_3.json", "c_3.dot", "c_3.png"} <= set(manifest["files"])


def test_json_is_eap_ig_layout(folder: Path):
    d = json.loads((folder / "c_3.json").read_text())
    assert d["cfg"] == {"n_layers": 4, "n_heads": 4, "parallel_attn_mlp": False,
                        "d_model": 128}
    assert d["size"] == 3 and d["metric"] == "ld" and d["edges"] == {}
    assert len(d["nodes"]) == 20  # 16 heads, 4 MLPs
    assert set(d["nodes"]) == {f"a{i}.h{h}" for i in range(4) for h in range(4)} | \
        {f"m{i}" for i in range(4)}
    kept = [n for n, v in d["nodes"].items() if v["in_graph"]]
    import pandas as pd

    table = pd.read_csv(folder / "c.csv")
    top3 = [component(s, 4, 4).name for s in table["node"][:3]]
    assert sorted(kept) == sorted(top3)
    assert d["nodes"][top3[0]]["score"] == pytest.approx(table["effect"][0])


def test_plot_redraws_and_verify(folder: Path):
    from patchc.outputs import redraw_plots
    from patchc.verify import verify_dir

    before = (folder / "c_3.dot").read_text()
    drawn = {p.name for p in redraw_plots(folder)}
    assert {"c_3.png", "c_10.png", "ev.png"} <= drawn
    assert (folder / "c_3.dot").read_text() == before
    report = verify_dir(folder)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_edge_graph_drawing_and_dot():
    """An edge circuit: components from both ends, q/k/v on edges into heads."""
    import pandas as pd

    df = pd.DataFrame({"sender": ["L0.H2.out", "embed", "L0.H3.out", "L1.mlp.out"],
                       "receiver": ["L1.H0.k", "L0.H2.q", "logits", "logits"],
                       "ld": [2.0, -1.0, 0.5, 0.1], "rank": [1, 2, 3, 4]})
    g = circuit_graph(df, 3, "ld", 2, 4)
    assert [(s.name, t.name, t.qkv) for s, t, _ in g.edges] == [
        ("a0.h2", "a1.h0", "k"), ("input", "a0.h2", "q"), ("a0.h3", "logits", None)]
    dot = to_dot(g, "t")
    assert '"a0.h2" -> "a1.h0"' in dot and 'label="k"' in dot and "rankdir=BT" in dot
    fig = layout_figure(g, "t")
    assert fig.axes


def test_group_rows_stand_for_their_members():
    """A circuit over `all(...)` rows (no single sender and receiver): each member edge is
    drawn and written with its group's effect and rank; a single edge beside them as usual."""
    import pandas as pd

    from patchc.circuit_graph import to_json

    df = pd.DataFrame({
        "site": ["all(L0.H3.out -> L0.mlp.in, embed -> L0.H3.v)", "L0.mlp.out -> logits"],
        "sender": [float("nan"), "L0.mlp.out"], "receiver": [float("nan"), "logits"],
        "ld": [0.1, 0.5], "effect": [-7.0, -6.6], "rank": [1, 2]})
    g = circuit_graph(df, 1, "ld", 4, 4)
    assert [(s.name, t.name, t.qkv, e) for s, t, e in g.edges] == [
        ("a0.h3", "m0", None, -7.0), ("input", "a0.h3", "v", -7.0)]
    doc = json.loads(to_json(df, 1, "ld", {"n_layers": 4, "n_heads": 4}))
    assert doc["edges"]["a0.h3->m0"] == {"score": -7.0, "in_graph": True}
    assert doc["edges"]["m0->logits"]["in_graph"] is False
    assert "nan" not in doc["nodes"]
    # a table of groups alone (no sender/receiver columns at all) and a node group
    only = df.drop(columns=["sender", "receiver"]).iloc[:1]
    assert len(circuit_graph(only, 1, "ld", 4, 4).edges) == 2
    nodes = pd.DataFrame({"site": ["all(L0.H0.z, L1.H2.z @ {1, 2})"], "ld": [1.0],
                          "rank": [1]})
    assert sorted(circuit_graph(nodes, 1, "ld", 4, 4).nodes) == ["a0.h0", "a1.h2"]


def test_no_effect_is_grey():
    from patchc.circuit_graph import _hex

    assert _hex(0.0) == "#9e9e9e" and _hex(0.5) != _hex(-0.5)
    assert _hex(1e-9) != "#9e9e9e"  # (a tiny effect keeps its sign's colour)


def test_graphviz_dot_draws_when_installed(tmp_path, monkeypatch):
    """With `dot` on the PATH the PNG is graphviz's drawing of the DOT (a stand-in `dot`
    here records what it was given)."""
    import shutil

    import pandas as pd

    from patchc import plot_circuit

    fake = tmp_path / "dot"
    fake.write_text('#!/bin/sh\ncat > "$4.in"\nprintf PNG > "$4"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake) if name == "dot" else None)
    df = pd.DataFrame({"sender": ["embed"], "receiver": ["L0.H1.v"], "ld": [1.0],
                       "effect": [-2.0], "rank": [1]})
    g = circuit_graph(df, 1, "ld", 2, 4)
    out = tmp_path / "c_1.png"
    assert plot_circuit.draw_graph(g, "t", out)
    assert out.read_text() == "PNG"
    assert (tmp_path / "c_1.png.in").read_text() == to_dot(g, "t")


def test_results_plot_in_a_notebook():
    res = patchc.run(SPEC, threads=1)
    fig = res.plot("c")
    assert "top 10 of the 20 nodes" in fig.axes[0].get_title()
    assert "top 3 of" in res.plot("c", "3").axes[0].get_title()
    curve = res.plot("ev")
    assert "cpr" in curve.axes[0].get_legend().get_texts()[0].get_text()


def test_latents_stand_at_their_dictionary_layer():
    """A node circuit of latents: each dictionary's latents (and its error term) at its host
    site's level, so the drawing's rows are layers, not wrapped lines of one row."""
    import pandas as pd

    from patchc.plotinfo import host_level

    hosts = {"t0": host_level("mlp", 0, 4), "s1": host_level("resid_post", 1, 4)}
    df = pd.DataFrame({"node": ["s1[470]", "t0[101]", "t0.err", "L1.H2.z"],
                       "ld": [1.0, 0.5, 0.2, 0.1], "rank": [1, 2, 3, 4]})
    g = circuit_graph(df, 4, "ld", 4, 4, hosts)
    level = {n: c.level for n, c in g.nodes.items()}
    assert level["t0[101]"] == level["t0.err"] == 2.25 < level["a1.h2"] < level["s1[470]"] == 4.5
