"""Feature circuits: latents at a position and the error term as nodes of a `circuit`, as
Marks et al. do, evaluated against a hand forward in which every left-out latent (and the
error term, if left out) takes the other run's value. Runs where the language has
`evaluate` (skipped before the circuits branch is merged; it passes on sae + circuit)."""

from __future__ import annotations

import pytest
import torch
from conftest import Fam
from ops_common import CLEAN, CORRUPT, HEAD, hand_ld
from sae_helpers import HandSAE, save_sae

from patchc.compiler.check_names import keywords

pytestmark = pytest.mark.skipif("evaluate" not in keywords(), reason="no `evaluate` statement")

D, N = 32, 12
SITE = "L1.resid_post"


def _masked(hand: HandSAE, f_src: torch.Tensor, err_src: torch.Tensor, keep: set[str]):
    """Hand write at SITE: every latent at the last position outside `keep` takes the
    source's value, and so does the error term unless kept."""
    out_latents = [i for i in range(N) if f"s1[{i}] @ last" not in keep]

    def fn(y: torch.Tensor) -> torch.Tensor:
        f = hand.encode(y)
        err = y - hand.decode(f)
        f2, err2 = f.clone(), err.clone()
        f2[:, -1, out_latents] = f_src[:, -1, out_latents]
        if "s1.err @ last" not in keep:
            err2[:, -1] = err_src[:, -1]
        return y + (hand.decode(f2) - hand.decode(f)) + (err2 - err)

    return {SITE: fn}


def test_feature_circuit_with_error_node(gpt2: Fam, tmp_path):
    w = save_sae(tmp_path / "s1", D, N, bias=-0.2)
    hand = HandSAE(w)
    res = gpt2.run(HEAD + f'sae s1 = "{tmp_path / "s1"}" at {SITE}\n'
                   "attribute s1[*] @ last, s1.err @ last from corrupt into clean using atp  "
                   "measure ld  as feats\n"
                   "circuit c = top {0, 4, 13} of feats\n"
                   "evaluate c in clean with ablate(corrupt)  measure ld  as ev\n")
    nodes = list(res["c"]["node"])
    assert len(nodes) == N + 1 and "s1.err @ last" in nodes
    x_src = gpt2.read(CORRUPT, SITE)[SITE]
    f_src = hand.encode(x_src)
    err_src = x_src - hand.decode(f_src)
    ev = res["ev"]
    for k in (0, 4, 13):
        want = hand_ld(gpt2, CLEAN, _masked(hand, f_src, err_src, set(nodes[:k])))
        got = ev[ev["nodes"] == k]["ld"].item()
        assert abs(got - want.mean().item()) < 1e-4, (k, got, want.mean().item())
    assert ev[ev["nodes"] == 13]["faithfulness"].item() == 1.0
    assert ev[ev["nodes"] == 0]["faithfulness"].item() == 0.0
