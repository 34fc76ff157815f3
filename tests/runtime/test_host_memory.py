"""runtime/host_memory.py: glibc's thresholds are set once per process, before a CPU run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from patchc.runtime import host_memory

GLIBC = sys.platform.startswith("linux") and host_memory._mallopt() is not None


def _in_child(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_sets_once_per_process():
    code = ("from patchc.runtime import host_memory as h\n"
            "print(h._tried, h.keep_freed_memory(), h._tried, h.keep_freed_memory())")
    assert _in_child(code, PATCHC_SYSTEM_MALLOC="") == "None True True True"


def test_opt_out_leaves_the_allocator_alone():
    code = ("from patchc.runtime import host_memory as h\n"
            "print(h.keep_freed_memory(), h._tried)")
    assert _in_child(code, PATCHC_SYSTEM_MALLOC="1") == "False False"


def test_not_glibc_is_left_alone_and_not_asked_again(monkeypatch):
    asked = []
    monkeypatch.setattr(host_memory, "_tried", None)
    monkeypatch.setattr(host_memory, "_mallopt", lambda: asked.append(1))
    monkeypatch.delenv("PATCHC_SYSTEM_MALLOC", raising=False)
    assert host_memory.keep_freed_memory() is False
    assert host_memory.keep_freed_memory() is False
    assert asked == [1]


def test_both_thresholds_are_set_together(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "_tried", None)
    monkeypatch.setattr(host_memory, "_mallopt",
                        lambda: lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.delenv("PATCHC_SYSTEM_MALLOC", raising=False)
    assert host_memory.keep_freed_memory() is True
    assert calls == [(host_memory._M_MMAP_THRESHOLD, host_memory.MMAP_THRESHOLD),
                     (host_memory._M_TRIM_THRESHOLD, host_memory.TRIM_THRESHOLD)]


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_cpu_run_sets_them():
    spec = (f'model "{ROOT}/examples/models/ioi-gpt2"\n'
            'run a = "When Mary and John went to the store, John gave a drink to"\n'
            'metric m = logit(" Mary")\nread L0.attn.out in a as t\n')
    code = ("import patchc\nfrom patchc.runtime import host_memory as h\n"
            f"before = h._tried\npatchc.run({spec!r})\nprint(before, h._tried)")
    assert _in_child(code, PATCHC_SYSTEM_MALLOC="", HF_HUB_OFFLINE="1") == "None True"
