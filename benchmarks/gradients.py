"""Cost of the gradient estimates (issue 5): attributing every layer's mlp.out, attn.out and
resid_pre at every position against one forward+backward of the model.

    python benchmarks/gradients.py [--repeats 5] [--threads 2] [--device cpu] [--naive]

The model is a random GPT-2 (6 layers, 8 heads, d_model 256, vocab 50257) built from its
config; 8 prompts of 16 tokens from a word-level tokenizer (saved to a temporary directory,
no network). Timed in `--repeats` rounds after a warm-up round, the cases taking turns
within each round; min and median reported:

- baseline  one forward + backward of the metric (logit difference at the last token), the
            plain HF model: `loss.backward()` with parameter gradients (a training step's
            backward), and `autograd.grad` to the embedding output only (no weight gradients);
- patchc    `patchc.run` of one `attribute ... using atp|relp` spec with the loaded model
            (check, lowering and the naive interpreter's 2 forwards + 1 forward/backward):
            `@ each` (one estimate per layer, kind and position: 288 rows) and whole-site
            (positions summed: 18 rows).

The issue's bar: patchc / baseline <= 4. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from bench_common import N_PROMPTS, N_TOKENS, build, prompts, spec  # noqa: E402

import patchc  # noqa: E402

def attribution_spec(path: Path, method: str, each: bool) -> str:
    at = " @ each" if each else ""
    sites = ", ".join(f"L*.{k}{at}" for k in ("mlp.out", "attn.out", "resid_pre"))
    return spec(path, f"attribute {sites} from clean into corrupt using {method} measure ld "
                      "as est")


def timings(cases: dict[str, Callable[[], object]], repeats: int
            ) -> dict[str, tuple[list[float], list[float]]]:
    """(wall, CPU) seconds of each case per round; the cases take turns (one warm-up round
    first), so that load from other processes hits them alike. CPU time (this process, all
    threads) is the steadier number on a shared machine."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    for r in range(repeats + 1):
        for name, fn in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if r:
                out[name][0].append(time.perf_counter() - wall)
                out[name][1].append(time.process_time() - cpu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive", action="store_true", help="run the reference interpreter")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tf.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpt2-bench"
        model, tok = build(path)
        model = model.to(args.device)
        ids = torch.tensor([tok(p)["input_ids"] for p in prompts(2)], device=args.device)
        assert ids.shape == (N_PROMPTS, N_TOKENS), ids.shape
        a, b = tok.convert_tokens_to_ids("w1"), tok.convert_tokens_to_ids("w2")

        def ld(logits: torch.Tensor) -> torch.Tensor:
            return (logits[:, -1, a] - logits[:, -1, b]).sum()

        def fb_params() -> None:
            model.zero_grad(set_to_none=True)
            ld(model(ids).logits).backward()

        def fb_input() -> None:
            emb = model.transformer.wte(ids) + model.transformer.wpe(
                torch.arange(N_TOKENS, device=ids.device))
            emb = emb.detach().requires_grad_(True)
            torch.autograd.grad(ld(model(inputs_embeds=emb).logits), emb)

        cases: dict[str, Callable[[], object]] = {
            "forward + backward (parameter grads)": fb_params,
            "forward + backward (input grad only)": fb_input,
        }
        for method in ("atp", "relp"):
            for each in (True, False):
                text = attribution_spec(path, method, each)
                kw = dict(model=model, tokenizer=tok, device=args.device, naive=args.naive)
                n = len(patchc.run(text, **kw)["est"])
                what = "every (layer, kind, position)" if each else "every (layer, kind)"
                cases[f"patchc {method}: {what}, {n} rows"] = (
                    lambda t=text, kw=kw: patchc.run(t, **kw))
        times = timings(cases, args.repeats)
        model.zero_grad(set_to_none=True)
    device = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    runtime = "naive interpreter" if args.naive else "default runtime"
    print(f"GPT-2 6x8, d 256, vocab 50257; {N_PROMPTS} prompts x {N_TOKENS} tokens; {device}; "
          f"torch {torch.__version__}; patchc {runtime}; {args.repeats} rounds\n")
    base_wall, base_cpu = times["forward + backward (parameter grads)"]
    print("| what | wall s (min) | wall s (median) | CPU s (min) | x F+B wall (min) | "
          "x F+B CPU (min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, (wall, cpu) in times.items():
        print(f"| {what} | {min(wall):.3f} | {statistics.median(wall):.3f} | {min(cpu):.3f} | "
              f"{min(wall) / min(base_wall):.2f} | {min(cpu) / min(base_cpu):.2f} |")


if __name__ == "__main__":
    main()
