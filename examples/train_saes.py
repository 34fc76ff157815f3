"""Train the bundled sparse autoencoders and transcoder (deterministic, CPU, one thread):

    python examples/train_saes.py [NAME ...]        (default: every one)

Each is trained on the activations of a bundled model over text of its training distribution
(`make_data.lm_corpus`, a seed the model never saw), written in SAELens' folder layout under
examples/saes/NAME/ (`cfg.json`, `sae_weights.safetensors`), with `quality.json` beside them:
variance explained, L0 and dead latents on held-out text, and what splicing the
reconstruction into the model (in place of the site, at every position, no error term) does to
its next-token loss and to the IOI logit difference of data/ioi.jsonl.

| NAME                 | model     | site           | architecture                          |
|----------------------|-----------|----------------|---------------------------------------|
| ioi-L1-resid_post    | ioi-gpt2  | L1.resid_post  | standard (ReLU, L1), b_dec subtracted |
| ioi-L2-resid_post    | ioi-gpt2  | L2.resid_post  | topk (k = 16), b_dec not subtracted   |
| ioi-L0-mlp-transcoder| ioi-gpt2  | L0.mlp         | transcoder: MLP input -> MLP output   |
| llama-L2-resid_post  | llama-gqa | L2.resid_post  | jumprelu (L0 penalty)                 |

The MLP's input is what the MLP itself reads: the output of the block's second normalizer
(GPT-2's ln_2), SAELens' `blocks.L.ln2.hook_normalized`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_data as D  # noqa: E402
from sae_train import Recipe, train, write_saelens  # noqa: E402

TRAIN_TEXTS, TRAIN_SEED = 6000, 4242    # lm_corpus draws the model's training set with seed 1
EVAL_TEXTS, EVAL_SEED = 500, 777

SAES = {
    "ioi-L1-resid_post": dict(model="ioi-gpt2", site="L1.resid_post", recipe=Recipe(
        arch="standard", d_sae=512, apply_b_dec_to_input=True, sparsity=1.0, seed=1)),
    "ioi-L2-resid_post": dict(model="ioi-gpt2", site="L2.resid_post", recipe=Recipe(
        arch="topk", d_sae=512, k=16, apply_b_dec_to_input=False, seed=2)),
    "ioi-L0-mlp-transcoder": dict(model="ioi-gpt2", site="L0.mlp", recipe=Recipe(
        arch="transcoder", d_sae=512, apply_b_dec_to_input=False, sparsity=1.0, seed=3)),
    "llama-L2-resid_post": dict(model="llama-gqa", site="L2.resid_post", recipe=Recipe(
        arch="jumprelu", d_sae=512, apply_b_dec_to_input=True, sparsity=0.5, seed=4,
        init_threshold=0.5, bandwidth=0.2)),
}


# ---- where a site is on the HF module tree --------------------------------------------------


def layers(model) -> torch.nn.ModuleList:
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def site_layer(site: str) -> int:
    return int(site.split(".")[0][1:])


def tl_hook_names(site: str) -> tuple[str, str | None]:
    """SAELens' (TransformerLens') hook names: the input hook, and the output hook of a
    transcoder."""
    layer = site_layer(site)
    if site.endswith(".mlp"):
        return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    return f"blocks.{layer}.hook_{site.split('.')[1]}", None


def _out(output):
    return output[0] if isinstance(output, tuple) else output


def capture(model, site: str, store: list) -> list:
    """Hooks that append (input, target) of the site for every forward: resid_post is the
    block's output (input = target); `Ll.mlp` is the MLP's input and output."""
    block = layers(model)[site_layer(site)]
    if site.endswith(".resid_post"):
        return [block.register_forward_hook(lambda m, a, o: store.append((_out(o), _out(o))))]
    if site.endswith(".mlp"):
        return [block.mlp.register_forward_hook(lambda m, a, o: store.append((a[0], _out(o))))]
    raise ValueError(site)


def splice(model, site: str, fn) -> list:
    """Hooks that replace the site's output (the block's, or the MLP's) with fn(input)."""
    block = layers(model)[site_layer(site)]
    module = block if site.endswith(".resid_post") else block.mlp

    def hook(m, args, output):
        x = _out(output) if site.endswith(".resid_post") else args[0]
        new = fn(x).to(_out(output).dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return [module.register_forward_hook(hook)]


# ---- running the model over text ------------------------------------------------------------


def by_length(ids: list[list[int]]) -> list[list[int]]:
    """Row indices grouped by token length, so that no forward needs padding."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(ids):
        groups.setdefault(len(r), []).append(i)
    return [groups[n] for n in sorted(groups)]


@torch.no_grad()
def activations(model, tok, texts: list[str], site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the site at every token of every text, [tokens, width] each."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    store: list = []
    handles = capture(model, site, store)
    try:
        for group in by_length(ids):
            for s in range(0, len(group), 256):
                model(input_ids=torch.tensor([ids[i] for i in group[s:s + 256]]))
    finally:
        for h in handles:
            h.remove()
    return (torch.cat([a.reshape(-1, a.shape[-1]) for a, _ in store]),
            torch.cat([b.reshape(-1, b.shape[-1]) for _, b in store]))


@torch.no_grad()
def lm_loss(model, tok, texts: list[str]) -> float:
    """Mean next-token cross-entropy over every predicted token of the texts."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for group in by_length(ids):
        x = torch.tensor([ids[i] for i in group])
        logp = model(input_ids=x).logits[:, :-1].float().log_softmax(-1)
        total -= logp.gather(2, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
    return total / count


@torch.no_grad()
def ioi_ld(model, tok, rows: list[dict], key: str) -> float:
    """Mean logit(answer) - logit(distractor) at the last token of rows[key]."""
    ids = tok([r[key] for r in rows], add_special_tokens=False)["input_ids"]
    lg = model(input_ids=torch.tensor(ids)).logits[:, -1].float()  # equal lengths (14)
    a = [tok.convert_tokens_to_ids(r["answer"].strip()) for r in rows]
    d = [tok.convert_tokens_to_ids(r["distractor"].strip()) for r in rows]
    return (lg[range(len(rows)), a] - lg[range(len(rows)), d]).mean().item()


# ---- quality ---------------------------------------------------------------------------------


def encode_raw(t: dict[str, torch.Tensor], recipe: Recipe, x: torch.Tensor) -> torch.Tensor:
    """The shipped (folded) dictionary's latents for raw activations x."""
    if recipe.apply_b_dec_to_input:
        x = x - t["b_dec"]
    z = x @ t["W_enc"] + t["b_enc"]
    if recipe.arch == "topk":
        vals, idx = z.topk(recipe.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
    f = torch.relu(z)
    if recipe.arch == "jumprelu":
        f = f * (z > t["threshold"]).to(f.dtype)
    return f


def reconstruct(t, recipe, x):
    return encode_raw(t, recipe, x) @ t["W_dec"] + t["b_dec"]


@torch.no_grad()
def quality(model, tok, site: str, t: dict, recipe: Recipe) -> dict:
    """Held-out reconstruction quality, and the model with the reconstruction spliced in."""
    texts = D.lm_corpus(EVAL_TEXTS, seed=EVAL_SEED)
    x, y = activations(model, tok, texts, site)
    f = encode_raw(t, recipe, x)
    y_hat = f @ t["W_dec"] + t["b_dec"]
    resid = (y - y_hat).pow(2).sum()
    total = (y - y.mean(0)).pow(2).sum()
    active = (f > 0)
    rows = D.ioi_rows(16)
    res = {"eval_texts": f"make_data.lm_corpus({EVAL_TEXTS}, seed={EVAL_SEED})",
           "eval_tokens": int(x.shape[0]),
           "variance_explained": round(1 - (resid / total).item(), 4),
           "l0": round(active.float().sum(-1).mean().item(), 2),
           "dead_fraction": round((~active.any(0)).float().mean().item(), 4),
           "loss_clean": round(lm_loss(model, tok, texts), 4),
           "ioi_ld_clean": round(ioi_ld(model, tok, rows, "clean"), 4),
           "ioi_ld_corrupt": round(ioi_ld(model, tok, rows, "corrupt"), 4)}
    for name, fn in [("spliced", lambda a: reconstruct(t, recipe, a)),
                     ("zero", lambda a: torch.zeros(*a.shape[:-1], y.shape[-1]))]:
        handles = splice(model, site, fn)
        try:
            res[f"loss_{name}"] = round(lm_loss(model, tok, texts), 4)
            res[f"ioi_ld_{name}"] = round(ioi_ld(model, tok, rows, "clean"), 4)
            res[f"ioi_ld_corrupt_{name}"] = round(ioi_ld(model, tok, rows, "corrupt"), 4)
        finally:
            for h in handles:
                h.remove()
    res["loss_recovered"] = round((res["loss_zero"] - res["loss_spliced"])
                                  / (res["loss_zero"] - res["loss_clean"]), 4)
    return res


def build(name: str) -> dict:
    entry = SAES[name]
    recipe: Recipe = entry["recipe"]
    path = HERE / "models" / entry["model"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = D.lm_corpus(TRAIN_TEXTS, seed=TRAIN_SEED)
    x, y = activations(model, tok, texts, entry["site"])
    tensors, record = train(recipe, x, y, log=name)
    hook, hook_out = tl_hook_names(entry["site"])
    out = HERE / "saes" / name
    write_saelens(out, tensors, recipe, hook_name=hook, hook_layer=site_layer(entry["site"]),
                  model_name=entry["model"], context_size=17, hook_name_out=hook_out)
    q = quality(model, tok, entry["site"], tensors, recipe)
    info = {"command": f"python examples/train_saes.py {name}", "model": f"models/{entry['model']}",
            "site": entry["site"], "recipe": asdict(recipe),
            "train_texts": f"make_data.lm_corpus({TRAIN_TEXTS}, seed={TRAIN_SEED})",
            "train_tokens": int(x.shape[0]), **record, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "quality": q}
    (out / "quality.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB): " + json.dumps(q), flush=True)
    return info


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every run
    torch.use_deterministic_algorithms(True)
    names = argv or list(SAES)
    unknown = [n for n in names if n not in SAES]
    if unknown:
        sys.exit(f"unknown dictionary {unknown}; choose from {list(SAES)}")
    for name in names:
        build(name)


if __name__ == "__main__":
    main(sys.argv[1:])
