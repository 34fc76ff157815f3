"""The bundled dictionaries (examples/saes/, written by examples/train_saes.py): each is a
folder SAELens 6 can load, and the quality recorded beside it (quality.json) reproduces when
the weights are read back with the independent reference of saelens_reference.py and spliced
into the model with plain forward hooks written here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from saelens_reference import Reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FOLDERS = sorted(p for p in (EXAMPLES / "saes").iterdir() if p.is_dir())
sys.path.insert(0, str(EXAMPLES))
import make_data as D  # noqa: E402
import sae_train  # noqa: E402

# SAELens 6's config fields (sae_lens/saes/sae.py SAEConfig and its subclasses)
BASE_FIELDS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
               "normalize_activations", "reshape_activations", "metadata"}
ARCH_FIELDS = {"standard": set(), "topk": {"k", "rescale_acts_by_decoder_norm"},
               "jumprelu": set(), "transcoder": {"d_out"}}
ARCH_TENSORS = {"standard": {"W_enc", "b_enc", "W_dec", "b_dec"},
                "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
                "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
                "transcoder": {"W_enc", "b_enc", "W_dec", "b_dec"}}


def test_every_architecture_is_bundled():
    archs = {json.loads((f / "cfg.json").read_text())["architecture"] for f in FOLDERS}
    assert archs == {"standard", "topk", "jumprelu", "transcoder"}
    total = sum(p.stat().st_size for f in FOLDERS for p in f.iterdir())
    assert total < 3_000_000  # a few MB at most in the repository


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_folder_is_saelens_layout(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    arch = cfg["architecture"]
    assert BASE_FIELDS | ARCH_FIELDS[arch] <= set(cfg)
    assert cfg["dtype"] == "float32" and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"] >= "6" and cfg["metadata"]["hook_name"]
    with safe_open(str(folder / "sae_weights.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert set(shapes) == ARCH_TENSORS[arch]
    d_out = cfg.get("d_out", cfg["d_in"])
    assert shapes["W_enc"] == (cfg["d_in"], cfg["d_sae"])
    assert shapes["W_dec"] == (cfg["d_sae"], d_out)
    assert shapes["b_enc"] == (cfg["d_sae"],) and shapes["b_dec"] == (d_out,)
    if arch == "transcoder":  # SAELens refuses a transcoder that subtracts b_dec
        assert cfg["apply_b_dec_to_input"] is False
        assert cfg["metadata"]["hook_name_out"].endswith("hook_mlp_out")
    if arch == "topk":
        assert 0 < cfg["k"] <= cfg["d_sae"]
    w = load_w(folder)
    # unit decoder rows: a latent's activation is the length of what it writes
    torch.testing.assert_close(w["W_dec"].norm(dim=1), torch.ones(cfg["d_sae"]))


def load_w(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "sae_weights.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ---- the recorded quality, recomputed ------------------------------------------------------


def block(model, layer: int):
    return (model.transformer.h if hasattr(model, "transformer") else model.model.layers)[layer]


def hooked_module(model, site: str):
    """(module, reads_input): resid_post is the block's output; `Ll.mlp` the MLP module,
    whose input the transcoder reads and whose output it replaces."""
    layer = int(site.split(".")[0][1:])
    if site.endswith(".resid_post"):
        return block(model, layer), False
    return block(model, layer).mlp, True


def first(o):
    return o[0] if isinstance(o, tuple) else o


@torch.no_grad()
def forward_all(model, ids, site, ref: Reference | None, seen: list):
    """Logits of each same-length group of ids; `seen` collects (input, target, latents) of
    the site; with `ref`, the site's output is replaced by ref's reconstruction."""
    module, reads_input = hooked_module(model, site)

    def hook(m, args, output):
        y = first(output)
        x = args[0] if reads_input else y
        if ref is None:
            seen.append((x, y, None))
            return None
        f, state = ref.encode(x)
        seen.append((x, y, f))
        new = ref.decode(f, state)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(hook)
    groups: dict[int, list[list[int]]] = {}
    for r in ids:
        groups.setdefault(len(r), []).append(r)
    try:
        return [(torch.tensor(g), model(input_ids=torch.tensor(g)).logits.float())
                for _, g in sorted(groups.items())]
    finally:
        handle.remove()


def loss_of(batches) -> float:
    total = count = 0
    for x, logits in batches:
        logp = logits[:, :-1].log_softmax(-1)
        total -= logp.gather(2, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
    return total / count


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            path = EXAMPLES / name
            cache[name] = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
                           AutoTokenizer.from_pretrained(path))
        return cache[name]
    return get


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_recorded_quality_reproduces(folder, loaded):
    info = json.loads((folder / "quality.json").read_text())
    q = info["quality"]
    assert q["eval_texts"] == "make_data.lm_corpus(500, seed=777)"
    model, tok = loaded(info["model"])
    ref = Reference.load(folder)
    texts = D.lm_corpus(500, seed=777)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    clean: list = []
    clean_loss = loss_of(forward_all(model, ids, info["site"], None, clean))
    spliced_loss = loss_of(forward_all(model, ids, info["site"], ref, []))
    # the reference sees the model's own activations: the clean run's inputs and targets
    x = torch.cat([a.reshape(-1, a.shape[-1]) for a, _, _ in clean])
    y = torch.cat([b.reshape(-1, b.shape[-1]) for _, b, _ in clean])
    f, state = ref.encode(x)
    ve = 1 - (y - ref.decode(f, state)).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert x.shape[0] == q["eval_tokens"]
    assert ve.item() == pytest.approx(q["variance_explained"], abs=2e-4)
    assert (f > 0).float().sum(-1).mean().item() == pytest.approx(q["l0"], abs=0.02)
    assert (~(f > 0).any(0)).float().mean().item() == pytest.approx(q["dead_fraction"],
                                                                    abs=1e-4)
    assert clean_loss == pytest.approx(q["loss_clean"], abs=2e-4)
    assert spliced_loss == pytest.approx(q["loss_spliced"], abs=2e-4)
    # the IOI logit difference with the reconstruction in place of the site
    rows = D.ioi_rows(16)
    ids = tok([r["clean"] for r in rows], add_special_tokens=False)["input_ids"]
    a = [tok.convert_tokens_to_ids(r["answer"].strip()) for r in rows]
    d = [tok.convert_tokens_to_ids(r["distractor"].strip()) for r in rows]
    for use, key in [(None, "ioi_ld_clean"), (ref, "ioi_ld_spliced")]:
        (_, logits), = forward_all(model, ids, info["site"], use, [])
        ld = (logits[range(16), -1, a] - logits[range(16), -1, d]).mean().item()
        assert ld == pytest.approx(q[key], abs=2e-4)


# ---- the trainer's folding ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "transcoder"])
def test_folded_weights_read_raw_activations(arch):
    """train() fits on rescaled activations and folds the scales into the weights: the saved
    dictionary on raw x gives the trained one's output on scaled x, divided by the output
    scale, with the same set of active latents."""
    g = torch.Generator().manual_seed(0)
    d_out = 12 if arch == "transcoder" else 8
    x = torch.randn(256, 8, generator=g) * 5 + 1
    y = x if arch != "transcoder" else torch.randn(256, d_out, generator=g) * 0.3
    recipe = sae_train.Recipe(arch=arch, d_sae=16, k=3, sparsity=0.1, steps=30, batch=64,
                              apply_b_dec_to_input=arch != "transcoder", seed=5)
    torch.manual_seed(recipe.seed)
    c_in, c_out = sae_train.mean_square_scale(x), sae_train.mean_square_scale(y)
    model = sae_train.Dictionary(recipe, 8, d_out)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.3, generator=g)
        model.b_dec.normal_(0, 0.3, generator=g)
        f_scaled = model.activate(model.pre(x * c_in))
        y_scaled = model.decode(f_scaled)
    cfg = {"architecture": arch, "d_in": 8, "d_sae": 16, "k": 3,
           "apply_b_dec_to_input": recipe.apply_b_dec_to_input}
    ref = Reference(cfg, sae_train.fold(model, c_in, c_out))
    f_raw, state = ref.encode(x)
    assert torch.equal(f_raw > 0, f_scaled > 0)
    torch.testing.assert_close(ref.decode(f_raw, state), y_scaled / c_out, rtol=1e-4,
                               atol=1e-5)
