"""Train the bundled example models (deterministic, CPU, 2 threads):

    python examples/train.py [ioi|induction|llama|all]     (default: all)

- ioi        examples/models/ioi-gpt2: GPT-2, 4 layers x 4 heads, d_model 128, trained on
             the mixture of examples/make_data.py:lm_corpus (IOI 70%, facts/hops 15%,
             sentiment 15%).
- induction  examples/models/induction-attn2: a two-layer ATTENTION-ONLY GPT-NeoX (4 heads per
             layer, d_model 128, full rotary, sequential residual so resid_mid exists) trained
             on random word sequences with a repeated segment. The MLPs are made exactly zero:
             intermediate_size=1 with every MLP weight and bias set to zero and frozen
             (requires_grad=False), post_attention_layernorm frozen too, so every block
             computes resid_post = resid_mid + 0. (A GPT-2 with learned absolute positions
             trained the same way, for 3000 steps, learned to predict repeats through a
             parity-dependent positional trick instead of a clean previous-token head, so the
             rotary NeoX was chosen: its induction circuit forms in ~500 steps.)
- llama      examples/models/llama-gqa: Llama (RMSNorm, rotary, grouped-query attention with 4
             query heads over 2 kv heads, gated SiLU MLP), 4 layers, d_model 128, on the same
             mixture as ioi-gpt2.

Tokenizers are word-level (tokenizers WordLevel + Whitespace pre-tokenizer, wrapped in
PreTrainedTokenizerFast) with [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3. NO BOS token is added to a
prompt: token positions are word positions. Each model directory also gets `training.json`
(hyperparameters, seconds, and the metrics printed here).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import make_data as D  # noqa: E402
from make_tiny_model import save_tokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PAD = 0


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(words) - set(SPECIALS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def encode(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    assert all(1 not in r for r in ids), "a training text has a word outside the vocabulary"
    return ids


def pad_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right padding; labels -100 on padding (positions count from 0 in every row)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_loop(model: torch.nn.Module, data: list[list[int]], steps: int, batch: int,
               lr: float, seed: int, log: str, probe=None) -> float:
    """AdamW, linear warmup then cosine decay; batches drawn in a seeded order. Returns
    seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                            betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps)
                                                                       / steps)))
    rng = random.Random(seed)
    model.train()
    t0 = time.time()
    running = None
    for step in range(steps):
        rows = [data[rng.randrange(len(data))] for _ in range(batch)]
        ids, mask, labels = pad_batch(rows)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            extra = ""
            if probe is not None and step % 500 == 0:
                model.eval()
                extra = "  " + probe(model)
                model.train()
            print(f"[{log}] step {step:5d}  loss {running:.4f}  {time.time() - t0:6.1f}s{extra}",
                  flush=True)
    model.eval()
    return time.time() - t0


@torch.no_grad()
def last_logits(model, tok, texts: list[str]) -> torch.Tensor:
    """Logits at the last token of each text; texts are grouped by token length (no padding
    in the forward at all)."""
    ids = encode(tok, texts)
    out = torch.empty(len(texts), model.config.vocab_size)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(ids):
        by_len.setdefault(len(r), []).append(i)
    for idx in by_len.values():
        x = torch.tensor([ids[i] for i in idx])
        out[idx] = model(input_ids=x).logits[:, -1].float()
    return out


def tid(tok, word: str) -> int:
    return tok.convert_tokens_to_ids(word.strip())


def save(model, tok, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB, {sum(p.numel() for p in model.parameters())} "
          "parameters)")


# ---- the IOI-mixture models (GPT-2 and Llama) -----------------------------------------------


def ioi_metrics(model, tok, rows: list[dict]) -> dict:
    """Accuracy (answer logit > distractor logit) and mean logit difference on clean prompts,
    and the mean logit difference on the corrupt (ABC) prompts if there are any."""
    res = {}
    for key in ("clean", "corrupt"):
        if key not in rows[0]:
            continue
        lg = last_logits(model, tok, [r[key] for r in rows])
        a = torch.tensor([tid(tok, r["answer"]) for r in rows])
        d = torch.tensor([tid(tok, r["distractor"]) for r in rows])
        ld = lg.gather(1, a[:, None])[:, 0] - lg.gather(1, d[:, None])[:, 0]
        res[f"{key}_mean_ld"] = round(ld.mean().item(), 4)
        if key == "clean":
            res["accuracy"] = round((ld > 0).float().mean().item(), 4)
            res["top1"] = round((lg.argmax(-1) == a).float().mean().item(), 4)
    return res


def heldout_ioi(train_texts: set[str], n: int = 1000, seed: int = 12345) -> list[dict]:
    """Fresh IOI prompts over every name, place, object and template, none seen in training."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        t = rng.choice(D.IOI_TEMPLATES)
        io, s = rng.sample(D.NAMES, 2)
        abba = rng.random() < 0.5
        clean = D.ioi_prompt(t, io, s, abba, rng.choice(D.PLACES), rng.choice(D.OBJECTS))
        if clean + " " + io in train_texts:
            continue
        rows.append({"clean": clean, "answer": " " + io, "distractor": " " + s})
    return rows


def mixture_metrics(model, tok, train_texts: set[str]) -> dict:
    m = {"heldout_ioi": ioi_metrics(model, tok, heldout_ioi(train_texts)),
         "ioi_jsonl": ioi_metrics(model, tok, D.ioi_rows(16))}
    facts = D.fact_rows()
    lg = last_logits(model, tok, [r["prompt"] for r in facts])
    m["facts_jsonl_top1"] = round(sum(int(lg[i].argmax()) == tid(tok, r["answer"])
                                      for i, r in enumerate(facts)) / len(facts), 4)
    for name, rows in [("hops_trained_top1", [
            {"prompt": D.hop_question(s), "answer": D.CAPITALS[c]} for s, _, c in D.LANDMARKS
            if " ".join(s) not in D.HELD_OUT_HOPS]), ("hops_jsonl_heldout_top1", D.hop_rows())]:
        lg = last_logits(model, tok, [r["prompt"] for r in rows])
        m[name] = round(sum(int(lg[i].argmax()) == tid(tok, r["answer"])
                            for i, r in enumerate(rows)) / len(rows), 4)
    pos_ids = [tid(tok, w) for w in D.POS_ADJ]
    neg_ids = [tid(tok, w) for w in D.NEG_ADJ]
    senti = D.sentiment_rows()
    for key in ("positive", "negative"):
        p = last_logits(model, tok, [r[key] for r in senti]).softmax(-1)
        m[f"sentiment_{key}_p_pos_adj"] = round(p[:, pos_ids].sum(-1).mean().item(), 4)
        m[f"sentiment_{key}_p_neg_adj"] = round(p[:, neg_ids].sum(-1).mean().item(), 4)
    return m


def train_mixture(arch: str, out: Path, steps: int, batch: int = 64, lr: float = 2e-3) -> dict:
    seed_all(0)
    tok = build_tokenizer(D.lm_words())
    texts = D.lm_corpus(steps * batch // 2, seed=1)
    data = encode(tok, texts)
    common = dict(vocab_size=len(tok), bos_token_id=2, eos_token_id=3, pad_token_id=PAD)
    if arch == "gpt2":
        config = GPT2Config(n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, **common)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                             tie_word_embeddings=False, **common)
        model = LlamaForCausalLM(config)
    probe_rows = heldout_ioi(set(), n=200, seed=777)

    def probe(m) -> str:
        r = ioi_metrics(m, tok, probe_rows)
        return f"ioi acc {r['accuracy']:.3f} ld {r['clean_mean_ld']:.2f}"

    seconds = train_loop(model, data, steps, batch, lr, seed=2, log=out.name, probe=probe)
    metrics = mixture_metrics(model, tok, set(texts))
    print(json.dumps(metrics, indent=2))
    info = {"command": f"python examples/train.py {'ioi' if arch == 'gpt2' else 'llama'}",
            "seconds": round(seconds, 1), "steps": steps, "batch": batch, "lr": lr,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "corpus": "examples/make_data.py:lm_corpus", "metrics": metrics}
    save(model, tok, out, info)
    return info


# ---- induction ------------------------------------------------------------------------------


@torch.no_grad()
def induction_metrics(model, tok) -> dict:
    """On held-out sequences of 20 random words repeated once: the mean next-token loss over
    the first half (tokens 1..19, unpredictable: ln(200) = 5.30) and over the repeated half
    (tokens 21..39, predictable by induction); per head, the mean attention from each token of
    the repeated half to the previous token (previous-token score) and to the token after
    that token's first occurrence (induction score); and the induction.jsonl metrics."""
    rng = random.Random(999)
    k = 20
    seqs = []
    for _ in range(200):
        seg = rng.sample(D.INDUCTION_WORDS, k)
        seqs.append(seg + seg)
    x = torch.tensor(encode(tok, [" ".join(s) for s in seqs]))
    model.set_attn_implementation("eager")
    out = model(input_ids=x, output_attentions=True)
    model.set_attn_implementation("sdpa")
    logp = out.logits.log_softmax(-1)
    nll = -logp[:, :-1].gather(2, x[:, 1:, None])[..., 0]  # nll[:, t] predicts token t+1
    t = torch.arange(k, 2 * k)
    scores = {}
    for layer, a in enumerate(out.attentions):  # [batch, head, query, key]
        a = a.mean(0)
        for h in range(a.shape[0]):
            scores[f"L{layer}.H{h}"] = {"prev": round(a[h, t, t - 1].mean().item(), 3),
                                        "induction": round(a[h, t, t - k + 1].mean().item(), 3)}
    return {"loss_first_half": round(nll[:, :k - 1].mean().item(), 4),
            "loss_repeated_half": round(nll[:, k:].mean().item(), 4),
            "loss_uniform": round(math.log(len(D.INDUCTION_WORDS)), 4),
            "attention_scores": scores,
            "induction_jsonl": ioi_metrics(model, tok, D.induction_rows(16))}


def train_induction(out: Path, steps: int = 1500, batch: int = 64, lr: float = 1e-3) -> dict:
    seed_all(0)
    tok = build_tokenizer(D.INDUCTION_WORDS)
    rng = random.Random(1)
    data = encode(tok, [" ".join(D.induction_sequence(rng)) for _ in range(steps * batch // 2)])
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=1, hidden_act="gelu",
                           max_position_embeddings=64, use_parallel_residual=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "partial_rotary_factor": 1.0},
                           tie_word_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0,
                           bos_token_id=2, eos_token_id=3, pad_token_id=PAD)
    model = GPTNeoXForCausalLM(config)
    for layer in model.gpt_neox.layers:  # attention-only: every MLP outputs exactly 0
        for p in [*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters()]:
            if p.dim() >= 2 or any(p is q for q in layer.mlp.parameters()):
                torch.nn.init.zeros_(p)
            p.requires_grad_(False)

    def probe(m) -> str:
        r = induction_metrics(m, tok)
        best = max(r["attention_scores"].items(), key=lambda kv: kv[1]["induction"])
        return (f"loss first {r['loss_first_half']:.2f} repeated {r['loss_repeated_half']:.2f}"
                f"  best induction head {best[0]} {best[1]['induction']:.2f}")

    seconds = train_loop(model, data, steps, batch, lr, seed=2, log=out.name, probe=probe)
    assert all(float(p.abs().sum()) == 0 for layer in model.gpt_neox.layers
               for p in layer.mlp.parameters())
    metrics = induction_metrics(model, tok)
    print(json.dumps(metrics, indent=2))
    info = {"command": "python examples/train.py induction", "seconds": round(seconds, 1),
            "steps": steps, "batch": batch, "lr": lr, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "corpus": "examples/make_data.py:induction_sequence",
            "attention_only": "intermediate_size=1; mlp weights and biases zero and frozen, "
                              "post_attention_layernorm frozen",
            "metrics": metrics}
    save(model, tok, out, info)
    return info


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    which = argv[0] if argv else "all"
    if which not in ("ioi", "induction", "llama", "all"):
        raise SystemExit("usage: python examples/train.py [ioi|induction|llama|all]")
    models = HERE / "models"
    if which in ("ioi", "all"):
        train_mixture("gpt2", models / "ioi-gpt2", steps=STEPS_GPT2)
    if which in ("induction", "all"):
        train_induction(models / "induction-attn2")
    if which in ("llama", "all"):
        train_mixture("llama", models / "llama-gqa", steps=STEPS_LLAMA)


STEPS_GPT2 = 2000
STEPS_LLAMA = 2000

if __name__ == "__main__":
    main(sys.argv[1:])
