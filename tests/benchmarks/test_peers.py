"""benchmarks/peers.py --quick keeps working: on a tiny random GPT-2, every tool installed here
(patchc and the plain hook loop at least; TransformerLens, nnsight, pyvene when present) gives
the plain hook loop's numbers on all six experiments, and the table has one row each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("peers_bench", BENCH / "peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_quick_mode_agrees_with_the_hook_loop(peers, capsys, tmp_path):
    report = peers.main(["--quick", "--no-write"])["tiny"]
    out = capsys.readouterr().out
    diffs, tols = report["diffs"], report["tolerances"]
    assert set(diffs) == set(peers.EXPERIMENTS)
    for exp, by_tool in diffs.items():
        assert {"patchc", "plain hooks"} <= set(by_tool)
        for tool, diff in by_tool.items():
            assert diff <= tols[exp], (exp, tool, diff)
        assert by_tool["patchc"] < 1e-4  # fp32, scale ~1: the same numbers, not near ones
    assert report["mismatches"] == []
    rows = [line for line in out.splitlines() if line.startswith("| E")]
    assert [r.split()[1] for r in rows] == list(peers.EXPERIMENTS) * 2  # wall, CPU


def test_write_doc_replaces_its_own_block(peers, tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text("# x\n\n<!-- peers -->\ntext\n<!-- /peers -->\n")
    peers.write_doc("ioi:cpu:float32", "first", doc)
    peers.write_doc("tiny:cpu:float32", "other", doc)
    peers.write_doc("ioi:cpu:float32", "second", doc)
    text = doc.read_text()
    assert "first" not in text and text.count("second") == 1 and "other" in text
    assert text.index("second") < text.index("other") < text.index("<!-- /peers -->")
