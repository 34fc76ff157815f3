"""Cost of edges (issue 13): exact path patching of every edge, and `attribute * -> * using eap`.

    python benchmarks/edges.py [--repeats 3] [--sample 256] [--loop-sample 16] [--write]
    python benchmarks/edges.py --evaluate [--repeats 3]
    python benchmarks/edges.py --compile [--repeats 3]
    python benchmarks/edges.py --only eap   # one part: `exact` or `eap` (not with --write)
    python benchmarks/edges.py --device cuda [--dtype bfloat16]   # on a GPU: wall times

The model is a GPT-2-small-shaped random GPT-2 (12 layers, 12 heads, d_model 768, d_mlp 3072,
vocab 50257) built from its config, 8 prompts of 16 tokens from a word-level tokenizer (saved
to a temporary directory, no network). One intra-op thread; each case is timed `--repeats`
times after a warm-up, the cases taking turns; the minimum is reported with the spread
(max - min) / min.

- exact: the model has E edges (`* -> *`: embed, every head's out and every MLP's out into
  every head's q, k, v, every MLP's input and the logits). Running all of them takes hours
  on one CPU thread, so both sides are timed on uniform random samples of edges (seeded) and
  extrapolated to E by the edge count: patchc runs `swap e1, e2, ... from clean into corrupt`
  over `--sample` edges (check, lowering, passes, schedule and run, with the loaded model);
  the plain loop (`HandLoop` of benchmarks/edge_loop.py: torch hooks on the HF modules, one
  full forward per edge) over `--loop-sample` edges. Both samples use the same edges'
  distribution, so the ratio of the per-edge costs is the estimate of the full sweep's
  speed-up.
- eap: `patchc.run` of `attribute * -> * from clean into corrupt using eap` (all E edges,
  compile included) against one forward + backward of the plain model (the metric's gradient
  with respect to the embedding output; no weight gradients).

- compile (`--compile`, this part alone): `patchc.compile` of `swap * -> * from clean into
  corrupt` (every edge) in a fresh process that imports patchc and compiles (config and
  tokenizer only): its CPU and wall seconds, the process's max RSS and the IR's node count.

- evaluate (`--evaluate`, this part alone): `circuit c = top {1%, 10%, 50%}` of the eap table
  and `evaluate c in corrupt with ablate(clean)`: the CPU time of the whole run and of the
  edge-masked forward (the sizes and the empty circuit stacked into one pass: 4 x 8 rows,
  every receiver's input changed by its left-out senders), against one plain forward of the
  same 32 rows.

Beside each measured ratio: the FLOP-bound ratio of patchc's schedule (matrix products of
the blocks, attention and the unembedding, counted per edge: the loop runs every block and
unembeds every position and token; patchc starts at the receiver's layer, computes the last
block's MLP at the last position only and unembeds only the measured tokens there).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import N_PROMPTS, N_TOKENS, build, first_run, prompts, spec  # noqa: E402
from edge_loop import HandLoop  # noqa: E402

import patchc  # noqa: E402
from patchc.compiler.edges import receiver_text  # noqa: E402
from patchc.compiler.modelspec import spec_from_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
SIZES = dict(n_layer=12, n_head=12, n_embd=768)


def all_edges(model_spec) -> list[tuple[str, str, int]]:
    """(sender, receiver, receiver layer) of every edge of the model (`* -> *`)."""
    from patchc.compiler import ast as A
    from patchc.compiler.edges import expand_edge
    from patchc.compiler.errors import Span

    s = Span(1, 1, 1, 1)
    out = []
    for m in expand_edge(A.Edge(A.Every(s), A.Every(s), s), model_spec):
        (e,) = m.edges
        layer = e.receiver.layer if e.receiver.layer is not None else model_spec.n_layers
        out.append((str(e.sender), receiver_text(e.receiver), layer))
    return out


def flops(model_spec, edges, vocab_tokens: int = 2) -> tuple[float, float]:
    """(plain loop, patchc) FLOPs of patching `edges`, matrix products only. patchc starts an
    edge's forward at its receiver's layer and computes the last block's MLP at the measured
    position only (dead_positions), unless the receiver is that MLP's own input."""
    t, d, f, v, n = N_PROMPTS * N_TOKENS, model_spec.d_model, model_spec.d_mlp, \
        model_spec.vocab_size, model_spec.n_layers
    attn = 2 * t * 4 * d * d + 2 * 2 * N_PROMPTS * N_TOKENS * N_TOKENS * d
    mlp = 2 * t * 2 * d * f
    block = attn + mlp
    last = attn + mlp * N_PROMPTS // t  # the MLP at one position per prompt
    unembed = 2 * t * d * v
    loop = len(edges) * (n * block + unembed)
    ours = 0
    for _, receiver, layer in edges:
        if layer < n:
            top = block if receiver == f"L{n - 1}.mlp.in" else last
            ours += (n - 1 - layer) * block + top
        ours += 2 * N_PROMPTS * d * vocab_tokens
    return loop, ours


def eap_flops(model_spec, n_edges_scored: tuple[int, int]) -> tuple[float, float]:
    """(one forward + backward, patchc's eap) FLOPs: the backward of activations costs about
    what the forward does; patchc runs A's forward (logits trimmed), B's forward and backward
    with every head's q/k/v recomputed from its own input twice (P(norm(x')) - P(norm(x)),
    12 t d^2 per layer each way), and the scores as one product [n, S, T d] x [n, T d, R]."""
    t, d, f, v, n = N_PROMPTS * N_TOKENS, model_spec.d_model, model_spec.d_mlp, \
        model_spec.vocab_size, model_spec.n_layers
    block = 2 * t * (4 * d * d + 2 * d * f) + 2 * 2 * N_PROMPTS * N_TOKENS * N_TOKENS * d
    base = 2 * (n * block + 2 * t * d * v)
    extra = n * 12 * t * d * d
    senders, receivers = n_edges_scored
    ours = n * block + 2 * (n * block + extra) + 2 * N_PROMPTS * senders * receivers * \
        N_TOKENS * d
    return base, ours


GPU = False  # --device cuda: times are wall seconds after the device finished


def _time(fn, repeats: int, warm: bool = True) -> tuple[float, float, float]:
    """(min seconds, spread (max - min) / min of them, min wall seconds) over `repeats`
    calls, after a warm-up call when `warm`. On the CPU the seconds are CPU time of this
    one-thread process (the figure that load from other processes on a shared machine
    disturbs least); on a GPU, wall time with the device synchronized."""
    if warm:
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        if GPU:
            torch.cuda.synchronize()
        c, w = time.process_time(), time.perf_counter()
        fn()
        if GPU:
            torch.cuda.synchronize()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    main = wall if GPU else cpu
    return min(main), (max(main) - min(main)) / min(main), min(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", type=int, default=128, help="edges patchc patches")
    ap.add_argument("--loop-sample", type=int, default=8, help="edges the plain loop patches")
    ap.add_argument("--write", action="store_true", help="write the table into performance.md")
    ap.add_argument("--quick", action="store_true", help="a 2-layer model (tests)")
    ap.add_argument("--evaluate", action="store_true", help="time `evaluate` of edge circuits")
    ap.add_argument("--compile", action="store_true", help="compile every edge's swap")
    ap.add_argument("--only", choices=("exact", "eap"), help="run one part (no --write)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: wall times on the GPU")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args()
    if args.only and args.write:
        ap.error("--write needs both parts: leave out --only")
    if args.write and args.device != "cpu":
        ap.error("--write records the CPU figures: leave out --device")
    global GPU
    GPU = args.device.startswith("cuda")
    torch.set_num_threads(1)
    sizes = dict(n_layer=2, n_head=4, n_embd=64) if args.quick else SIZES
    tmp = Path(tempfile.mkdtemp())
    model, tok = build(tmp, **sizes)
    model = model.to(args.device, getattr(torch, args.dtype))
    if args.compile:
        return compile_cost(tmp, args.repeats)
    if args.evaluate:
        return evaluate(model, tok, tmp, args.repeats)
    ms = spec_from_config(model.config.to_dict())
    edges = all_edges(ms)
    rng = random.Random(0)
    sample = rng.sample(edges, min(args.sample, len(edges)))
    loop_sample = rng.sample(edges, min(args.loop_sample, len(edges)))
    ids_clean = torch.tensor([tok(p)["input_ids"] for p in prompts(1)], device=args.device)
    ids_corrupt = torch.tensor([tok(p)["input_ids"] for p in prompts(2)], device=args.device)
    ans, dis = tok.convert_tokens_to_ids("w1"), tok.convert_tokens_to_ids("w2")
    loop = HandLoop(model, ids_clean, ids_corrupt, ans, dis)

    rows: list[tuple[str, str, str, str]] = [("edges of the model (`* -> *`)", f"{len(edges):,}",
                                              "", "")]
    if args.only != "eap":
        rows += _exact(args, model, tok, tmp, ms, edges, sample, loop_sample, loop)
    if args.only != "exact":
        rows += _eap(args, model, tok, tmp, ms, ids_corrupt, ans, dis)
    first = f"{args.device} {args.dtype} wall time" if GPU else "CPU time"
    table = f"| | {first} | spread | wall time |\n|---|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    print(table)
    if args.write:
        begin, end = "<!-- edges-benchmark -->", "<!-- /edges-benchmark -->"
        text = DOC.read_text("utf-8")
        block = f"{begin}\n{table}\n{end}"
        if begin in text:
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text += "\n" + block + "\n"
        DOC.write_text(text, "utf-8")


def _exact(args, model, tok, tmp, ms, edges, sample, loop_sample, loop) -> list:
    """The rows of exact patching: patchc's sample against the plain loop's, per edge."""
    items = ", ".join(f"{s} -> {r}" for s, r, _ in sample)
    exact_spec = spec(tmp, f"swap {items} from clean into corrupt measure ld as e")
    # A check that both compute the same numbers on the loop's sample.
    check_spec = spec(tmp, "swap " + ", ".join(f"{s} -> {r}" for s, r, _ in loop_sample[:4])
                      + " from clean into corrupt measure ld as e")
    got = patchc.run(check_spec, model=model, tokenizer=tok)["e"]["ld"].tolist()
    want = [loop.one(s, r) for s, r, _ in loop_sample[:4]]
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2
    assert max(abs(a - b) for a, b in zip(got, want)) < tol * max(1.0, *map(abs, want)), \
        (got, want)

    # patchc has run once (the check above): no warm-up call for its cases.
    p_t, p_spread, p_w = _time(lambda: first_run(exact_spec, model=model, tokenizer=tok),
                               args.repeats, warm=False)
    l_t, l_spread, l_w = _time(lambda: [loop.one(s, r) for s, r, _ in loop_sample],
                               args.repeats)

    loop_f, ours_f = flops(ms, edges)
    per_loop, per_ours = l_t / len(loop_sample), p_t / len(sample)
    return [
        (f"plain loop, per edge ({len(loop_sample)} sampled edges)", f"{per_loop:.3f} s",
         f"±{l_spread:.0%}", f"{l_w / len(loop_sample):.3f} s"),
        (f"patchc exact, per edge ({len(sample)} sampled edges, compile included)",
         f"{per_ours:.3f} s", f"±{p_spread:.0%}", f"{p_w / len(sample):.3f} s"),
        ("exact: extrapolated to every edge, loop / patchc",
         f"{per_loop * len(edges) / 3600:.1f} h / {per_ours * len(edges) / 3600:.1f} h", "",
         ""),
        ("exact: speed-up (measured)", f"{per_loop / per_ours:.1f}x", "", ""),
        ("exact: FLOP-bound speed-up of the schedule", f"{loop_f / ours_f:.1f}x", "", ""),
    ]


def _eap(args, model, tok, tmp, ms, ids_corrupt, ans: int, dis: int) -> list:
    """The rows of `attribute * -> * using eap` against one forward + backward."""
    eap_spec = spec(tmp, "attribute * -> * from clean into corrupt using eap measure ld as e")

    def fwd_bwd() -> None:
        emb: dict = {}

        def keep(m, a, k):
            x = (a[0] if a else k["hidden_states"]).detach().requires_grad_()
            emb["x"] = x
            return ((x,) + tuple(a[1:]), k) if a else (a, {**k, "hidden_states": x})
        h = model.transformer.h[0].register_forward_pre_hook(keep, with_kwargs=True)
        with torch.enable_grad():
            last = model(ids_corrupt).logits[:, -1]
            m = (last[:, ans] - last[:, dis]).sum()
            torch.autograd.grad(m, [emb["x"]])
        h.remove()

    for p in model.parameters():
        p.requires_grad_(False)
    fb_t, fb_spread, fb_w = _time(fwd_bwd, args.repeats)
    last: dict = {}
    e_t, e_spread, e_w = _time(lambda: last.__setitem__(
        "r", first_run(eap_spec, model=model, tokenizer=tok)), args.repeats)
    stages = last["r"].manifest["timings"]
    n_senders = 1 + ms.n_layers * (ms.n_heads + 1)
    n_receivers = ms.n_layers * (3 * ms.n_heads + 1) + 1
    fb_f, eap_f = eap_flops(ms, (n_senders, n_receivers))
    return [
        ("one forward + backward (input grad)", f"{fb_t:.2f} s", f"±{fb_spread:.0%}",
         f"{fb_w:.2f} s"),
        ("patchc `attribute * -> * using eap` (all edges, compile included)",
         f"{e_t:.2f} s", f"±{e_spread:.0%}", f"{e_w:.2f} s"),
        ("eap / (forward + backward) (measured)", f"{e_t / fb_t:.1f}x", "", ""),
        ("eap / (forward + backward), FLOP bound", f"{eap_f / fb_f:.1f}x", "", ""),
        ("eap, where the wall time of the last run went", "", "",
         ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()
                   if isinstance(v, float) and not k.endswith("share"))),
    ]


_COMPILE = """
import sys, time
import patchc
text = open(sys.argv[1]).read()
cpu, wall = time.process_time(), time.perf_counter()
program = patchc.compile(text)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
# the peak RSS of this program (VmHWM: ru_maxrss would carry the forking parent's over exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(cpu, wall, int(hwm.split()[1]) / 1024, len(program.ir.g))
"""


def compile_cost(tmp: Path, repeats: int) -> None:
    """The `--compile` part: each repeat a fresh process (one thread) compiling every edge."""
    import subprocess

    path = tmp / "all_edges.patch"
    path.write_text(spec(tmp, "swap * -> * from clean into corrupt measure ld as e"), "utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _COMPILE, str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        runs.append([float(x) for x in out])
    cpu, wall, rss = ([r[i] for r in runs] for i in range(3))
    print(f"compile `swap * -> *` ({int(runs[0][3]):,} IR nodes): CPU {min(cpu):.2f} s "
          f"(spread {(max(cpu) - min(cpu)) / min(cpu):.0%}), wall {min(wall):.2f} s, "
          f"max RSS {max(rss):.0f} MB")


def evaluate(model, tok, tmp: Path, repeats: int) -> None:
    """The `--evaluate` part: whole run and edge-masked forward, CPU seconds."""
    from patchc.runtime.execute import Executor

    text = spec(tmp, "attribute * -> * from clean into corrupt using eap measure ld as e\n"
                "circuit c = top {1%, 10%, 50%} of e\n"
                "evaluate c in corrupt with ablate(clean) measure ld as ev")
    plain = Executor.forward_step
    masked: list[float] = []

    def timed(self, ir, step):  # the steps whose forwards carry a circuit's gated writes
        if not any(getattr(ir.node(w), "gate", None) for m in step.members
                   for w in ir.node(m).writes):
            return plain(self, ir, step)
        c = time.process_time()
        plain(self, ir, step)
        masked[-1] += time.process_time() - c

    def run() -> None:
        masked.append(0.0)  # this run's edge-masked forwards
        last["r"] = first_run(text, model=model, tokenizer=tok)

    Executor.forward_step = timed  # type: ignore[method-assign]
    last: dict = {}
    run_t, run_spread, run_w = _time(run, repeats)
    Executor.forward_step = plain  # type: ignore[method-assign]
    fwd = masked[1:]  # after the warm-up run
    ids = torch.tensor([tok(p)["input_ids"] for p in prompts(2)]).repeat(4, 1)
    with torch.no_grad():
        f_t, f_spread, _ = _time(lambda: model(ids), repeats)
    ev = last["r"]["ev"]
    rows = [
        ("`evaluate` of 3 sizes + the empty circuit: the whole run (eap table included)",
         f"{run_t:.2f} s", f"±{run_spread:.0%}", f"{run_w:.2f} s"),
        ("the edge-masked forward (4 x 8 rows, one pass)", f"{min(fwd):.2f} s",
         f"±{(max(fwd) - min(fwd)) / min(fwd):.0%}", ""),
        ("a plain forward of the same 32 rows", f"{f_t:.3f} s", f"±{f_spread:.0%}", ""),
        ("edges kept, faithfulness", ", ".join(
            f"{k}: {f:.3f}" for k, f in zip(ev["edges"], ev["faithfulness"])), "", ""),
    ]
    print("| | CPU time | spread | wall time |\n|---|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows))


if __name__ == "__main__":
    main()
