"""`patchc run --out` for the statements of §11-12: baselines printed and in the manifest,
per-example CSVs with text, safetensors of reads, the attention and lens figures, and
`patchc plot` redrawing them from the folder alone."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from patchc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = f'''model "{ROOT / 'examples' / 'models' / 'tiny-gpt2'}"
data ioi = [
    {{"clean": "When Mary and John went to the store , John gave a drink to", "corrupt": "When Anna and Tom went to the store , Bob gave a drink to", "answer": " Mary", "distractor": " John"}},
    {{"clean": "When John and Mary went to the store , Mary gave a drink to", "corrupt": "When Tom and Anna went to the store , Bob gave a drink to", "answer": " John", "distractor": " Mary"}}
]
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
read L0.H{{0,1}}.pattern in clean as attention
read L0.H0.pattern @ last in clean as from_last
lens L{{0,1}}.resid_post @ each in clean measure p = prob(ioi.answer) as lens_pos
measure ld, says = text(2) in clean as base
swap L{{0,1}}.mlp.out from clean into corrupt
    measure ld normalized between corrupt and clean
    as mlps
'''  # noqa: E501


def test_run_out_writes_and_prints_everything(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "reading.patch"
    spec.write_text(SPEC, "utf-8")
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    b = manifest["tables"]["mlps"]["baselines"]["ld"]
    assert b["0"]["run"] == "corrupt" and b["1"]["run"] == "clean"
    assert f"ld normalized: 0 = corrupt ({b['0']['value']:.4g}), 1 = clean " in printed
    assert manifest["tables"]["attention"]["op"] == "read"
    names = {p.name for p in out.iterdir()}
    assert {"attention.safetensors", "attention.csv", "attention.png", "lens_pos.png",
            "from_last.png",
            "base.examples.csv", "mlps.examples.csv"} <= names
    assert "base.png" not in names  # a one-row table draws nothing
    says = pd.read_csv(out / "base.examples.csv")["says"]
    assert len(says) == 2 and all(isinstance(s, str) for s in says)
    for png in ("attention.png", "lens_pos.png"):
        (out / png).unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "attention.png").is_file() and (out / "lens_pos.png").is_file()


def test_language_reading_spec_runs_as_written() -> None:
    """examples/language/reading.patch: the §11-12 forms exactly as the reference writes
    them (`@ {1, 3, 9}`, `@ facts.subj_start..facts.subj_end`, `rank(...) == 0`, ...)."""
    import patchc

    res = patchc.run(ROOT / "examples" / "language" / "reading.patch")
    acts = res.activations("patterns")
    assert list(acts)[:3] == ["L1.H0.pattern", "L1.H1.pattern", "L1.H2.pattern"]
    assert tuple(acts["L1.H2.pattern"].shape) == (16, 14, 14)
    assert tuple(res.activations("names")["L0.resid_post"].shape) == (16, 3, 48)
    assert list(res["base"].columns) == ["ld", "ld_se", "acc", "acc_se",
                                         "seqlogprob(ioi.answer)", "seqlogprob(ioi.answer)_se"]
    assert res["lensed"]["layer"].tolist() == list(range(12))
    assert res.baselines("mlps")["ld"]["0"]["run"] == "corrupt"
    texts = res.per_example("base")["text(3)"]
    assert len(texts) == 16 and all(isinstance(t, str) for t in texts)
    assert len(res["noisy_base"]) == 1
