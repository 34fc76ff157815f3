"""patchc's dictionaries against the independent SAELens reference (saelens_reference.py):
encode and decode for every architecture and option cfg.json can state, read through
`patchc.compile` from a folder as a user's would be; the bundled dictionaries on the bundled
models' own activations; and, spliced into the model by patchc (`ablate NAME.err`: the site
then holds the reconstruction), the IOI logit difference recorded in each quality.json by
examples/train_saes.py's plain hooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from saelens_reference import Reference
from transformers import AutoModelForCausalLM, AutoTokenizer

import patchc
from patchc.runtime.dictionaries import Dictionary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TINY = EXAMPLES / "models" / "tiny-gpt2"  # d_model 48; only its config is read here
D, D_SAE = 48, 40
FOLDERS = sorted(p for p in (EXAMPLES / "saes").iterdir() if p.is_dir())

CASES = [(arch, b_dec, norm) for arch in ("standard", "topk", "jumprelu")
         for b_dec in (True, False)
         for norm in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")]
CASES += [(arch, False, norm) for arch in ("transcoder", "jumprelu_transcoder")
          for norm in ("none", "constant_norm_rescale", "layer_norm")]


def write_folder(path: Path, arch: str, b_dec: bool, norm: str, seed: int) -> None:
    """Random weights in SAELens' layout, with a share of latents off (negative b_enc), a
    decoder bias of its own and thresholds near the pre-activations' scale."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D, D_SAE, generator=g) / math.sqrt(D),
         "b_enc": torch.randn(D_SAE, generator=g) * 0.2 - 0.2,
         "W_dec": torch.randn(D_SAE, D, generator=g) / math.sqrt(D_SAE),
         "b_dec": torch.randn(D, generator=g) * 0.5}
    if arch.startswith("jumprelu"):
        w["threshold"] = torch.rand(D_SAE, generator=g) * 0.5
    cfg = {"architecture": arch, "d_in": D, "d_sae": D_SAE, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": b_dec, "normalize_activations": norm,
           "reshape_activations": "none", "metadata": {"sae_lens_version": "6.0.0"}}
    if arch == "topk":
        cfg |= {"k": 5, "rescale_acts_by_decoder_norm": False}
    if "transcoder" in arch:
        cfg["d_out"] = D
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(path / "sae_weights.safetensors"))


def patchc_dictionary(folder: Path, kind: str, site: str) -> Dictionary:
    spec = f'model "{TINY}"\n{kind} d = "{folder}" at {site}\n'
    info, = patchc.compile(spec).checked.model.dictionaries
    return Dictionary.load(info)


@pytest.mark.parametrize("arch,b_dec,norm", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_encode_decode_match_the_reference(tmp_path, arch, b_dec, norm):
    folder = tmp_path / "d"
    write_folder(folder, arch, b_dec, norm, seed=len(arch) * 7 + b_dec * 3 + len(norm))
    transcoder = "transcoder" in arch
    ours = patchc_dictionary(folder, "transcoder" if transcoder else "sae",
                             "L1.mlp" if transcoder else "L1.resid_post")
    ref = Reference.load(folder)
    # activations with an offset and a spread of norms, as a residual stream has
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, D, generator=g) * torch.rand(4, 6, 1, generator=g) * 3 + 0.5
    f, norm_state = ours.encode(x)
    f_ref, state = ref.encode(x)
    assert (f_ref > 0).any() and (f_ref == 0).any()
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    if arch == "topk":
        assert ((f > 0).sum(-1) <= 5).all()
    # decode any latents, not only those encode gave (a write edits them)
    edited = f_ref * 1.7 + (torch.arange(D_SAE) == 3) * 2.0
    torch.testing.assert_close(ours.decode(edited, norm_state), ref.decode(edited, state),
                               atol=1e-5, rtol=1e-5)


# ---- the bundled dictionaries ---------------------------------------------------------------


def info_of(folder: Path) -> dict:
    return json.loads((folder / "quality.json").read_text())


def declaration(folder: Path) -> str:
    info = info_of(folder)
    kind = "transcoder" if info["site"].endswith(".mlp") else "sae"
    return f'{kind} d = "{folder}" at {info["site"]}'


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_bundled_dictionary_matches_the_reference(folder):
    info = info_of(folder)
    model_dir = EXAMPLES / info["model"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    layer = int(info["site"].split(".")[0][1:])
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    module = blocks[layer].mlp if info["site"].endswith(".mlp") else blocks[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(
        a[0] if info["site"].endswith(".mlp") else (o[0] if isinstance(o, tuple) else o)))
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "ioi.jsonl").open()]
    with torch.no_grad():
        model(**tok([r["clean"] for r in rows], return_tensors="pt"))
    handle.remove()
    x = seen[0]
    spec = f'model "{model_dir}"\n{declaration(folder)}\n'
    ours, = patchc.compile(spec).checked.model.dictionaries
    d = Dictionary.load(ours)
    ref = Reference.load(folder)
    f, state = d.encode(x)
    f_ref, state_ref = ref.encode(x)
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d.decode(f, state), ref.decode(f_ref, state_ref),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_spliced_by_patchc_reproduces_the_recorded_ld(folder):
    """`ablate d.err in clean` leaves the reconstruction in the site's place at every position:
    the IOI ld the training script measured with its own hooks."""
    info = info_of(folder)
    q = info["quality"]
    spec = (f'model "{EXAMPLES / info["model"]}"\n'
            f'data ioi = "{EXAMPLES / "data" / "ioi.jsonl"}"\n'
            "run clean = ioi.clean\nrun corrupt = ioi.corrupt\n"
            "metric ld = logit(ioi.answer) - logit(ioi.distractor)\n"
            f"{declaration(folder)}\n"
            "measure ld in clean as plain\n"
            "ablate d.err in clean  measure ld  as spliced\n"
            "ablate d.err in corrupt  measure ld  as spliced_corrupt\n")
    res = patchc.run(spec)
    assert res["plain"]["ld"].iloc[0] == pytest.approx(q["ioi_ld_clean"], abs=2e-4)
    assert res["spliced"]["ld"].iloc[0] == pytest.approx(q["ioi_ld_spliced"], abs=2e-4)
    assert res["spliced_corrupt"]["ld"].iloc[0] == pytest.approx(q["ioi_ld_corrupt_spliced"],
                                                                 abs=2e-4)
