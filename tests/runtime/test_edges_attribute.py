"""Edge attribution against hand autograd (edge_hand.py: a zero added to each receiver's own
input, plain torch hooks): eap is m_B + (s_A - s_B) . dm/dx_r; eap_ig averages the gradient
over B's runs with the input embedding at e_A + (j/steps)(e_B - e_A), j = 0..steps-1 (EAP-IG);
relp equals eap on a model whose RelP rules are the gradient (identity MLP activation, norms
whose scale does not move: a huge epsilon)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from conftest import Fam, make_tokenizer
from edge_hand import Hand
from test_edges import PRELUDE, ROWS, _ld

EDGES = [("L0.H1.out", "L1.H2.q"), ("embed", "L2.H3.k"), ("L1.mlp.out", "L2.H0.v"),
         ("L0.attn.out", "L1.mlp.in"), ("L1.H3.out", "logits"), ("L0.mlp.out", "L2.mlp.in")]


def _hand_estimates(fam: Fam, edges, steps: int | None = None) -> list[float]:
    hand = Hand(fam)
    clean, corrupt = fam.ids([r["clean"] for r in ROWS]), fam.ids([r["corrupt"] for r in ROWS])
    senders = list(dict.fromkeys(s for s, _ in edges))
    a, b = hand.senders(clean, senders + ["embed"]), hand.senders(corrupt, senders + ["embed"])
    receivers = list(dict.fromkeys(r for _, r in edges))
    m_b, grads = hand.receiver_grads(corrupt, receivers, lambda lg: _ld(fam, lg))
    if steps is not None:
        total = {r: torch.zeros_like(g) for r, g in grads.items()}
        for j in range(steps):
            point = a["embed"] + (j / steps) * (b["embed"] - a["embed"])
            _, g = hand.receiver_grads(corrupt, receivers, lambda lg: _ld(fam, lg), point)
            for r in receivers:
                total[r] += g[r] / steps
        grads = total
    return [float((m_b + ((a[s] - b[s]) * grads[r]).flatten(1).sum(1)).mean())
            for s, r in edges]


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_eap_and_eap_ig_equal_hand_autograd(get_family, name: str) -> None:
    fam = get_family(name)
    items = ", ".join(f"{s} -> {r}" for s, r in EDGES)
    res = fam.run(PRELUDE + f"""attribute {items} from clean into corrupt using eap measure ld as e
attribute {items} from clean into corrupt using eap_ig(steps=3) measure ld as g
""")
    assert res["e"]["ld"].tolist() == pytest.approx(_hand_estimates(fam, EDGES), abs=1e-5)
    assert res["g"]["ld"].tolist() == pytest.approx(_hand_estimates(fam, EDGES, 3), abs=1e-5)


@pytest.fixture(scope="module")
def rule_free_gpt2(models_dir) -> Fam:
    """GPT-2 with an identity MLP activation and norms of epsilon 1e8 (their scale is a
    constant to float precision, their weights 1e4): every RelP rule is the plain gradient
    there."""
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=64, n_positions=64,
                           initializer_range=0.1, activation_function="linear",
                           layer_norm_epsilon=1e8, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3)
    model = tf.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # norm weights of 1e4 undo the 1e-4 scale: ordinary activations
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.copy_((1e4 if name.endswith("weight") else 1.0) *
                        (1 + 0.2 * torch.randn_like(p)))
    path = models_dir / "gpt2-rule-free"
    tok = make_tokenizer()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Fam("gpt2", model, tok, str(path))


def test_relp_equals_eap_where_the_rules_are_the_gradient(rule_free_gpt2: Fam) -> None:
    items = ", ".join(f"{s} -> {r}" for s, r in EDGES)
    res = rule_free_gpt2.run(PRELUDE + "".join(
        f"attribute {items} from clean into corrupt using {m} measure ld as {m}\n"
        for m in ("eap", "relp")))
    eap, relp = res["eap"]["ld"].to_numpy(), res["relp"]["ld"].to_numpy()
    # The edges' estimates differ from each other far more than the two methods do.
    assert abs(relp - eap).max() < 0.02 * eap.std()


def test_relp_ah_stops_key_and_query_paths(get_family) -> None:
    """relp(ah=true) detaches every attention pattern: a query or key receiver gets no
    gradient, so its edges estimate no change (m_B); a value receiver's do not vanish."""
    fam = get_family("gpt2")
    res = fam.run(PRELUDE + """measure ld in corrupt as base
attribute L0.H*.out -> L1.H0.k, L0.H*.out -> L2.H1.q from clean into corrupt using relp(ah=true)
    measure ld as qk
attribute L0.H*.out -> L1.H0.v from clean into corrupt using relp(ah=true) measure ld as v
""")
    base = res["base"]["ld"].iloc[0]
    assert res["qk"]["ld"].tolist() == pytest.approx([base] * 8, abs=1e-6)
    assert all(abs(x - base) > 1e-6 for x in res["v"]["ld"])
