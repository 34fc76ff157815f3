"""benchmarks/compile_phases.py keeps working: on a tiny random GPT-2 it times each phase of
compiling E5 and E6 and reports them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_tiny_times_every_phase(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("compile_phases_bench",
                                                      BENCH / "compile_phases.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        threads = torch.get_num_threads()
        report = module.main(["--model", "tiny", "--repeats", "2", "--only", "E5",
                              "--only", "E6"])
        torch.set_num_threads(threads)
    finally:
        sys.path.remove(str(BENCH))
    assert sorted(report) == ["E5", "E6"]
    for times in report.values():
        assert list(times) == list(module.PHASES)
        assert all(len(v) == 2 and v[0] >= 0 for v in times.values())
        assert times["total"][0] > 0
    out = capsys.readouterr().out
    assert "| E5 |" in out and "| E6 |" in out
