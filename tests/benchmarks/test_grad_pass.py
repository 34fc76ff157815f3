"""benchmarks/grad_pass.py keeps working: on a tiny random GPT-2 it times every case once and
E5's estimates with the fused GELU backward equal those without it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from patchc.runtime import estimates, execute
from patchc.runtime.activations import fused_backwards

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_tiny_round_times_every_case_and_agrees(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("grad_pass_bench", BENCH / "grad_pass.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        threads = torch.get_num_threads()
        report = module.main(["--model", "tiny", "--repeats", "1"])
        torch.set_num_threads(threads)
    finally:
        sys.path.remove(str(BENCH))
    assert report["diff"] <= 1e-5
    assert sorted(report["times"]) == sorted(f"{c} {w}" for c in ("on", "off", "plain",
                                                                  "plain fused")
                                             for w in ("pass", "run"))
    assert all(len(v) == 1 and v[0] > 0 for v in report["times"].values())
    assert "| on pass |" in capsys.readouterr().out
    # the runtime is left as it was
    assert estimates.fused_backwards is fused_backwards
    assert execute.gradients is estimates.gradients
