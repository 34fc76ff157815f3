"""examples/data/vectors.safetensors is what examples/make_vectors.py says it is: `love` is
the difference of means that `mean(...)` computes on the bundled model, and the rows of
`W_dec` are it and its opposite at unit norm."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import patchc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "examples" / "data" / "vectors.safetensors"
SPEC = f'''model "{ROOT / "examples" / "models" / "ioi-gpt2"}"
data senti = "{ROOT / "examples" / "data" / "sentiment.jsonl"}"
run pos = senti.positive
run neg = senti.negative
run neutral = ["I saw this movie . It is"]
vector built = mean(pos.L1.resid_post @ last) - mean(neg.L1.resid_post @ last)
vector saved = load("{FILE}", key="love")
vector decoded = sae("{FILE}", feature=0)
steer L1.resid_post @ last in neutral by built  measure logit(" great")  as built
steer L1.resid_post @ last in neutral by saved  measure logit(" great")  as saved
steer L1.resid_post @ last in neutral by {{1, -1}} * decoded  measure logit(" great")  as unit
'''


def test_saved_vectors_match_what_the_spec_computes():
    tensors = load_file(str(FILE))
    love, w_dec = tensors["love"], tensors["W_dec"]
    assert love.shape == (128,) and w_dec.shape == (2, 128)
    torch.testing.assert_close(w_dec[0], love / love.norm())
    torch.testing.assert_close(w_dec[1], -love / love.norm())
    results = patchc.run(SPEC)
    built = float(results["built"]["logit(\" great\")"].iloc[0])
    saved = float(results["saved"]["logit(\" great\")"].iloc[0])
    assert abs(built - saved) < 1e-4
    unit = results["unit"].set_index("scale")["logit(\" great\")"]
    assert unit[1] != unit[-1]  # the two rows push in opposite directions
