"""A run prints no warnings from libraries: every warning is an error here.

transformers renamed the key/value cache argument (`past_key_values` -> `cache`) and warns on
the old name; runtime/compat.py passes whichever the installed release takes. Covered: the
plan interpreter with a narrowed forward (a cache fed in), generation (a cache decoded from),
the naive interpreter, on GPT-2 and Llama; and the CLI on a bundled example.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import family
from ops_common import HEAD

ROOT = Path(__file__).resolve().parents[2]
BODY = HEAD + """
swap L1.resid_post @ last from clean into corrupt
    measure ld
swap L1.H*.z @ 3 from clean into corrupt
    measure ld, generate(3) contains d.answer
"""


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("naive", [False, True])
def test_a_run_warns_nothing(models_dir, name, naive):
    fam = family(name, models_dir)
    fed: list[bool] = []  # per model call: was a key/value cache given?

    def spy(_mod, _args, kwargs):
        fed.append(any(kwargs.get(k) is not None for k in ("cache", "past_key_values")))

    handle = fam.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = fam.run(BODY, naive=naive)
    finally:
        handle.remove()
    assert len(res) == 2
    assert any(fed)  # generation decodes from a cache (and the plan narrows with one)


def test_the_cli_prints_no_library_warning(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "error"}
    proc = subprocess.run(
        [sys.executable, "-m", "patchc.cli", "run", str(ROOT / "examples/ioi_heads.patch"),
         "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_seqlogprob_warns_nothing(models_dir):
    fam = family("gpt2", models_dir)
    body = HEAD + "swap L1.resid_post @ last from clean into corrupt\n" \
        "    measure seqlogprob(\"the cat\")\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fam.run(body)
    assert len(res) == 1
