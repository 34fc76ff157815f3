"""Runtime-side costs of a small run made smaller without changing a number (issue 17, fifth
round): each change against what it replaced, on a tiny model.

- a run on the CPU seeds the CPU generator only (patchc/execution.seed_torch);
- a compact `@ each` estimate takes every whole site's product in one stacked operation
  (runtime/estimate_sweeps._stacked), equal to the per-site loop bit for bit.
"""

from __future__ import annotations

import pandas as pd
import patchc
import torch
from conftest import family
from ops_common import HEAD

import patchc.runtime.estimate_sweeps as ES
from patchc.execution import seed_torch

EACH = HEAD + ("attribute L*.resid_pre @ each, L*.attn.out @ each, L*.mlp.out @ each\n"
               "    from clean into corrupt using atp measure ld as t\n")


def test_a_cpu_run_seeds_the_cpu_generator_alone(models_dir, monkeypatch) -> None:
    fam = family("gpt2", models_dir)
    calls: list[int] = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: calls.append(s) or real(s))
    torch.default_generator.manual_seed(123)
    fam.run(HEAD + "set seed = 7\nswap L1.resid_post @ last from clean into corrupt "
            "measure ld as t\n", naive=False)
    assert calls == []  # no queued seeds for accelerator backends that never started
    assert torch.initial_seed() == 7
    # the CPU generator is where torch.manual_seed would have put it
    after = torch.rand(4)
    real(7)
    assert torch.equal(after, torch.rand(4))


def test_seed_torch_seeds_everything_once_an_accelerator_may_draw(models_dir,
                                                                   monkeypatch) -> None:
    fam = family("gpt2", models_dir)
    calls: list[int] = []
    monkeypatch.setattr(torch, "manual_seed", lambda s: calls.append(s))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    seed_torch(5, fam.model)
    assert calls == [5]


def test_stacked_estimates_equal_the_per_site_loop(models_dir, monkeypatch) -> None:
    """The whole sites' products in one stacked operation: the same table, bit for bit, as
    one product per site (and the stacked path is the one an `@ each` sweep takes)."""
    for name in ("gpt2", "llama"):
        fam = family(name, models_dir)
        used: list[bool] = []
        real = ES._stacked

        def stacked(*args, real=real, used=used):
            got = real(*args)
            used.append(got is not None)
            return got

        monkeypatch.setattr(ES, "_stacked", stacked)
        fast = fam.run(EACH, naive=False).tables["t"]
        assert used and all(used)
        monkeypatch.setattr(ES, "_stacked", lambda *a: None)  # the per-site loop
        slow = fam.run(EACH, naive=False).tables["t"]
        monkeypatch.undo()
        pd.testing.assert_frame_equal(fast, slow, check_exact=True)
        assert fast["ld"].notna().any()


def test_stacked_estimates_decline_feature_slices_and_single_positions(models_dir) -> None:
    """Spaces the stacked product does not cover go the per-site way, with the reference's
    numbers (the naive interpreter estimates member by member)."""
    fam = family("gpt2", models_dir)
    for body in ("attribute L*.mlp.post[0:3] @ each from clean into corrupt using atp "
                 "measure ld as t\n",
                 "attribute L*.resid_pre @ last from clean into corrupt using atp "
                 "measure ld as t\n"):
        fast = fam.run(HEAD + body, naive=False).tables["t"]
        ref = patchc.run(fam.spec(HEAD + body), model=fam.model, tokenizer=fam.tok,
                         naive=True).tables["t"]
        assert len(fast) == len(ref)
        torch.testing.assert_close(torch.tensor(fast["ld"].to_numpy()),
                                   torch.tensor(ref["ld"].to_numpy()), equal_nan=True)
