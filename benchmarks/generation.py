"""Cost of metrics that generate: back-patching measured by greedy continuations.

    python benchmarks/generation.py [--layers 6] [--repeats 3]

`backpatch L$j.resid_post -> L$i.resid_post @ last in clean where $j > $i measure solved =
generate(3) contains d.answer, t = text(3)` on the random GPT-2 of bench_common (width 768,
12 heads, vocab 50257, `--layers` layers; 8 prompts of 16 tokens), one thread: patchc (the
plan interpreter, spec text included, the model loaded), patchc's reference interpreter
(`naive=True`: a prompt pass per metric term and experiment), and a plain loop written here
(one forward caching every layer's output, then per experiment a hooked prompt pass and
greedy decoding from its cache). Every text is checked against the plain loop's. CPU time
of the process, minimum of the rounds (the tools taking turns) and the spread.
"""

from __future__ import annotations

import argparse
import sys
import warnings
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import build, prompts, spec  # noqa: E402

import patchc  # noqa: E402

BODY = ("backpatch L$j.resid_post -> L$i.resid_post @ last in clean\n    where $j > $i\n"
        "    measure solved = generate(3) contains d.answer, t = text(3)\n    as hop\n")


def _hidden(out):
    """A block's hidden states (transformers 4 returns them in a tuple, 5 alone)."""
    return out[0] if isinstance(out, tuple) else out


def plain_loop(model, tok, n_new: int = 3) -> list[list[str]]:
    """Per (j, i), j > i, in that order: the continuation of every prompt."""
    tok.padding_side = "left"
    enc = tok(prompts(1), return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    blocks = model.transformer.h
    outs: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, a, o, k=k: outs.__setitem__(k, _hidden(o)[:, -1]))
               for k, b in enumerate(blocks)]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
    for h in handles:
        h.remove()
    texts = []
    n = len(blocks)
    for j in range(n):
        for i in range(j):
            def patch(m, a, o, src=outs[j]):
                act = _hidden(o).clone()
                act[:, -1] = src
                return (act, *o[1:]) if isinstance(o, tuple) else act
            h = blocks[i].register_forward_hook(patch)
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                            use_cache=True)
            h.remove()
            cache, m_, p_ = out.past_key_values, mask, pos[:, -1:]
            new = [out.logits[:, -1].argmax(-1, keepdim=True)]
            with torch.no_grad():
                for _ in range(n_new - 1):
                    m_ = torch.cat([m_, torch.ones_like(new[-1])], 1)
                    p_ = p_ + 1
                    out = model(input_ids=new[-1], attention_mask=m_, position_ids=p_,
                                past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    new.append(out.logits[:, -1].argmax(-1, keepdim=True))
            texts.append(tok.batch_decode(torch.cat(new, 1), skip_special_tokens=True))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # past_key_values naming
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build(Path(tmp) / "m", n_layer=args.layers, n_head=12, n_embd=768)
        text = spec(Path(tmp) / "m", BODY)

        def ours(naive: bool):
            res = patchc.run(text, model=model, tokenizer=tok, naive=naive)
            ex = res.per_example("hop").sort_values(["j", "i", "example"])
            return [list(g["t"]) for _, g in ex.groupby(["j", "i"], sort=True)]
        tools = {"patchc": lambda: ours(False), "patchc naive": lambda: ours(True),
                 "plain loop": lambda: plain_loop(model, tok)}
        want = [[t.strip() for t in ts] for ts in plain_loop(model, tok)]
        seconds: dict[str, list[float]] = {k: [] for k in tools}
        for r in range(args.repeats + 1):
            for name, fn in tools.items():
                start = time.process_time()
                got = fn()
                if r:
                    seconds[name].append(time.process_time() - start)
                got = [[t.strip() for t in ts] for ts in got]
                assert got == want, f"{name} generated other texts"
        n = args.layers * (args.layers - 1) // 2
        print(f"{n} back-patches x 8 prompts, generate(3) + text(3), {args.layers} layers "
              f"x d 768, vocab 50257, 1 thread, CPU s (min of {args.repeats}, spread):")
        print("| | CPU s | spread | vs plain loop |\n|---|---|---|---|")
        base = min(seconds["plain loop"])
        for name, ts in seconds.items():
            lo = min(ts)
            print(f"| {name} | {lo:.2f} | ±{(max(ts) - lo) / lo * 100:.0f}% | "
                  f"{base / lo:.2f}x |")


if __name__ == "__main__":
    main()
