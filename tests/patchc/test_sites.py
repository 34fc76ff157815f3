"""`patchc sites MODEL`: a model's sites and shapes from its config alone, as text and JSON,
on the bundled models and on tiny configs of the families that differ (GQA, parallel block,
a fused attention kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from patchc.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"


def _sites(capsys, *args: str) -> str:
    assert main(["sites", *args]) == 0
    return capsys.readouterr().out


def _rows(listing: dict) -> dict[str, dict]:
    return {s["site"]: s for g in listing["groups"] for s in g["sites"]}


def test_gpt2_listing_groups_sites_with_their_widths(capsys):
    out = _sites(capsys, str(MODELS / "ioi-gpt2"))
    assert "gpt2: 4 layers (L0..L3), d_model 128" in out
    assert "attention: 4 heads (H0..H3) x d_head 32" in out
    assert "MLP: d_mlp 512; layernorm; learned positions; sequential block" in out
    groups = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert groups[1:8] == ["embedding", "residual stream (per layer)", "attention (per layer)",
                           "attention heads (per layer and head)", "MLP (per layer)",
                           "normalizers", "output"]
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  L")}
    assert "[pos, d_head 32]" in lines["L*.H*.z"]
    assert "[pos, d_mlp 512]" in lines["L*.mlp.post"] and "[pos, pos]" in lines["L*.H*.pattern"]
    # attn.pattern is every head's pattern at once: [batch, heads, query, key] at run time
    assert "[heads, pos, pos]" in lines["L*.attn.pattern"]
    assert max(len(line) for line in out.splitlines()) <= 100  # fits a terminal


def test_sites_never_imports_torch():
    code = ("import sys; from patchc.cli import main; "
            f"assert main(['sites', {str(MODELS / 'ioi-gpt2')!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr


def test_json_listing_and_gqa_kv_mapping(capsys):
    listing = json.loads(_sites(capsys, str(MODELS / "llama-gqa"), "--json"))
    assert (listing["n_heads"], listing["n_kv_heads"], listing["d_head"]) == (4, 2, 32)
    assert listing["kv_heads"] == {"kv0": ["H0", "H1"], "kv1": ["H2", "H3"]}
    rows = _rows(listing)
    assert rows["L*.attn.k"]["width"] == 64 and rows["L*.attn.q"]["width"] == 128
    assert rows["L*.mlp.post"]["width"] == 256 and rows["logits"]["width"] == 218
    assert all(r["available"] for r in rows.values())
    text = _sites(capsys, str(MODELS / "llama-gqa"))
    assert "grouped-query attention: kv0 <- H0,H1; kv1 <- H2,H3" in text


def _config_dir(tmp_path: Path, config) -> str:
    config.save_pretrained(tmp_path)
    return str(tmp_path)


def test_a_parallel_block_has_no_resid_mid_and_a_fused_kernel_no_pattern(tmp_path, capsys):
    import transformers as tf

    neox = tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                            intermediate_size=48, vocab_size=64, max_position_embeddings=16,
                            use_parallel_residual=True)
    rows = _rows(json.loads(_sites(capsys, _config_dir(tmp_path / "neox", neox), "--json")))
    assert not rows["L*.resid_mid"]["available"]
    assert "resid_mid is not defined" in rows["L*.resid_mid"]["absent"]
    assert rows["L*.H*.pattern"]["available"] and rows["L*.H*.z"]["width"] == 8
    text = _sites(capsys, str(tmp_path / "neox"))
    assert "parallel block" in text and "absent: gpt_neox runs attention and MLP" in text

    raw = json.loads((tmp_path / "neox" / "config.json").read_text())
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps({**raw, "use_parallel_residual": False,
                                                  "_attn_implementation": "flash_attention_2"}))
    rows = _rows(json.loads(_sites(capsys, str(flash), "--json")))
    assert rows["L*.resid_mid"]["available"]
    assert not rows["L*.H*.pattern"]["available"] and not rows["L*.attn.pattern"]["available"]


def test_sites_reads_no_weights_and_reports_a_missing_model(tmp_path, capsys):
    # Only config.json: no weights, no tokenizer, and the listing is complete.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((MODELS / "ioi-gpt2" / "config.json").read_text())
    assert "L*.H*.out" in _sites(capsys, str(tmp_path / "m"))
    assert main(["sites", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'none'}: error[E212]")
    assert "Traceback" not in err
