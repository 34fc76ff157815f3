"""patchc against its peers on the six experiments of issue 17, every number checked:

    python benchmarks/peers.py [--model gpt2-small|ioi ...] [--repeats 3] [--only E5 ...]
                               [--tools patchc,hooks,...] [--device cuda --dtype bfloat16]
    python benchmarks/peers.py --quick      # tiny random model, 1 round (tests run this)

E1 swap every head's z (all positions)        E4 swap attn.out and mlp.out per (layer, position)
E2 swap every head's z @ last                 E5 attribution patching (atp) of resid_pre,
E3 swap resid_pre per (layer, position)          attn.out and mlp.out at every position
E6 zero-ablate each MLP, mean-ablate (over the corrupt run) each attention output
Every experiment measures `ld` = logit(answer) - logit(distractor) at the last token, mean over
examples (E5: the estimates of the same swaps).

Models: `gpt2-small` a GPT-2-small-shaped random model (12 layers, 12 heads, d 768, vocab 50257;
seeded, built from GPT2Config and saved to a temporary directory with a word-level tokenizer),
8 prompts x 16 tokens; `ioi` the bundled examples/models/ioi-gpt2 on examples/data/ioi.jsonl.

Tools (each skipped if not installed): patchc (`patchc.run` of the spec, with the loaded
model: check, lowering, passes, schedule and run are all timed), the plain hook loop (torch
forward hooks on the HF modules, one forward per experiment: the reference every other tool is
checked against), TransformerLens, nnsight, pyvene (benchmarks/peer_tools.py and
peer_tools_more.py).

Timing: one intra-op thread (`--threads`), a warm-up call of every tool first, then `--repeats`
rounds in which the tools take turns on each experiment; the minimum is reported, with the
spread (max - min) / min over the rounds. With `--write` (the default unless --quick) the table
goes into docs/performance.md between marker comments named after the model, device and dtype
(a rerun replaces its own block).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from bench_common import build, prompts  # noqa: E402
from peer_tools import EXPERIMENTS, HookLoop, Task, TLens  # noqa: E402
from peer_tools_more import NNsightTool, PyveneTool  # noqa: E402

import patchc  # noqa: E402
from patchc.compiler.schedule import run_shapes, schedule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
TITLES = {
    "E1": "E1 every head's z, all positions", "E2": "E2 every head's z `@ last`",
    "E3": "E3 resid_pre per (layer, position)",
    "E4": "E4 attn.out and mlp.out per (layer, position)",
    "E5": "E5 attribution patching, 3 site kinds, every position",
    "E6": "E6 zero-ablate each MLP, mean-ablate each attention",
}
BODIES = {
    "E1": "swap L*.H*.z from clean into corrupt measure ld as t",
    "E2": "swap L*.H*.z @ last from clean into corrupt measure ld as t",
    "E3": "swap L*.resid_pre @ each from clean into corrupt measure ld as t",
    "E4": "swap L*.attn.out @ each, L*.mlp.out @ each from clean into corrupt measure ld as t",
    "E5": "attribute L*.resid_pre @ each, L*.attn.out @ each, L*.mlp.out @ each\n"
          "    from clean into corrupt using atp measure ld as t",
    "E6": "ablate L*.mlp.out in clean measure ld as t\n"
          "ablate L*.attn.out in clean with mean(corrupt) measure ld as u",
}
PEERS = {"TransformerLens": "transformer_lens", "nnsight": "nnsight", "pyvene": "pyvene"}
TOOLS = ("patchc", "plain hooks", *PEERS)


# ---- models and data --------------------------------------------------------------------
def setup(which: str, tmp: Path, device: str, dtype: torch.dtype):
    """(task, model directory, tokenizer, data rows) for `gpt2-small`, `ioi` or `tiny`."""
    if which == "ioi":
        path = ROOT / "examples" / "models" / "ioi-gpt2"
        model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
        tok = tf.AutoTokenizer.from_pretrained(path)
        rows = [json.loads(line) for line in
                (ROOT / "examples" / "data" / "ioi.jsonl").read_text().splitlines() if line]
    else:
        sizes = dict(n_layer=12, n_head=12, n_embd=768) if which == "gpt2-small" else \
            dict(n_layer=2, n_head=2, n_embd=32, vocab_size=256)
        path = tmp / which
        model, tok = build(path, **sizes)
        rows = [{"clean": c, "corrupt": k, "answer": "w1", "distractor": "w2"}
                for c, k in zip(prompts(1), prompts(2))]
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = model.to(device=device, dtype=dtype)
    from patchc.runtime.inputs import encode, token_id

    def ids(col: str) -> torch.Tensor:
        toks = encode(tok, [r[col] for r in rows])
        assert len({len(t) for t in toks}) == 1, "the peers assume prompts of one length"
        return torch.tensor(toks, device=device)
    answer = torch.tensor([token_id(tok, r["answer"]) for r in rows], device=device)
    distractor = torch.tensor([token_id(tok, r["distractor"]) for r in rows], device=device)
    task = Task(model, ids("clean"), ids("corrupt"), answer, distractor)
    return task, path, tok, rows


def write_data(rows: list[dict], folder: Path) -> Path:
    """The task's rows as `folder/data.jsonl`, the data file every spec names."""
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def spec_text(path: Path, data: Path, exp: str, dtype: str) -> str:
    dt = f'set dtype = "{dtype}"\n' if dtype != "float32" else ""
    return (f'model "{path}"\n{dt}data d = "{data}"\nrun clean = d.clean\n'
            "run corrupt = d.corrupt\nmetric ld = logit(d.answer) - logit(d.distractor)\n"
            f"{BODIES[exp]}\n")


class Patchc:
    """patchc.run of each experiment's spec with the loaded model and tokenizer."""

    name = "patchc"

    def __init__(self, task: Task, path: Path, tok, data: Path, dtype: str) -> None:
        self.t, self.path, self.tok, self.data, self.dtype = task, path, tok, data, dtype

    def text(self, exp: str) -> str:
        return spec_text(self.path, self.data, exp, self.dtype)

    def run(self, exp: str) -> "patchc.Results":
        return patchc.run(self.text(exp), model=self.t.model, tokenizer=self.tok)

    def values(self, res: "patchc.Results", exp: str) -> torch.Tensor:
        """The run's numbers in the hook loop's order (after the timing: a pandas sort)."""
        frames = [res["t"]] + ([res["u"]] if exp == "E6" else [])
        values = []
        for df in frames:
            keys = [c for c in ("site", "layer", "head", "pos") if c in df.columns]
            if "site" in keys:  # the order the statement lists its sites in
                order = {s: i for i, s in enumerate(dict.fromkeys(df["site"]))}
                df = df.assign(site=df["site"].map(order))
            values += df.sort_values(keys)["ld"].tolist()
        return torch.tensor(values, dtype=torch.float64)

    def flop_bound(self, exp: str) -> float:
        """naive FLOPs / optimized FLOPs of patchc's own plans (compiler/costs.py)."""
        prog = patchc.compile(self.text(exp))
        plan = schedule(prog.optimized, prog.checked.model, run_shapes(prog.checked),
                        naive_ir=prog.ir)
        assert plan.naive is not None
        return plan.naive.flops / plan.optimized.flops


def tools(task: Task, path: Path, tok, data: Path, wanted: set[str], device: str,
          dtype: torch.dtype) -> dict[str, object]:
    name = str(dtype).removeprefix("torch.")
    out: dict[str, object] = {"patchc": Patchc(task, path, tok, data, name),
                              "plain hooks": HookLoop(task)}
    if importlib.util.find_spec("transformer_lens"):
        out["TransformerLens"] = TLens(task, str(path), device, dtype)
    if importlib.util.find_spec("nnsight"):
        out["nnsight"] = NNsightTool(task)
    if importlib.util.find_spec("pyvene"):
        out["pyvene"] = PyveneTool(task)
    return {k: v for k, v in out.items() if k in wanted}


def supports(tool: object, exp: str) -> bool:
    return exp in getattr(tool, "supports", EXPERIMENTS)


# ---- measuring ----------------------------------------------------------------------------
def measure(tools_: dict[str, object], exps: list[str], repeats: int
            ) -> tuple[dict, dict, dict]:
    """(wall seconds[exp][tool] per round, CPU seconds likewise, values[exp][tool]); a
    warm-up call of each tool first (on E6, the cheapest, or E5/E2 if not chosen), then
    rounds in which the tools take turns. CPU time (this process, one thread) is the steadier
    number on a shared machine: other processes lengthen the wall clock, not it."""
    warm = next((e for e in ("E6", "E5", "E2") if e in exps), exps[0])
    for tool in tools_.values():
        if supports(tool, warm):
            tool.run(warm)  # type: ignore[attr-defined]
    wall: dict = {e: {t: [] for t in tools_} for e in exps}
    cpu: dict = {e: {t: [] for t in tools_} for e in exps}
    values: dict = {e: {} for e in exps}
    for _ in range(repeats):
        for exp in exps:
            for name, tool in tools_.items():
                if not supports(tool, exp):
                    continue
                _sync()
                start, start_cpu = time.perf_counter(), time.process_time()
                out = tool.run(exp)  # type: ignore[attr-defined]
                _sync()  # (on a GPU: the tool's kernels done)
                wall[exp][name].append(time.perf_counter() - start)
                cpu[exp][name].append(time.process_time() - start_cpu)
                # (each tool's own output; putting it in the loop's order is not timed)
                values[exp][name] = tool.values(out, exp) if hasattr(tool, "values") else out
    return wall, cpu, values


def _sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def differences(values: dict) -> dict:
    """max |value - plain hooks| per experiment and tool (NaN where shapes differ)."""
    out: dict = {}
    for exp, by_tool in values.items():
        ref = by_tool["plain hooks"]
        out[exp] = {t: float((v - ref).abs().max()) if v.shape == ref.shape else float("nan")
                    for t, v in by_tool.items()}
    return out


def tolerance(values: dict, exp: str, dtype: torch.dtype) -> float:
    scale = max(1.0, float(values[exp]["plain hooks"].abs().max()))
    return (1e-3 if dtype == torch.float32 else 5e-2) * scale


# ---- the table ----------------------------------------------------------------------------
def table(seconds: dict, diffs: dict, bounds: dict, names: list[str]) -> str:
    head = "| experiment | " + " | ".join(f"{n} s" for n in names) + \
        " | patchc vs best peer | FLOP bound | max abs diff |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for exp, by_tool in seconds.items():
        cells, best = [], None
        for n in names:
            ts = by_tool.get(n) or []
            if not ts:
                cells.append("–")
                continue
            lo = min(ts)
            spread = (max(ts) - lo) / lo * 100 if len(ts) > 1 else 0.0
            cells.append(f"{lo:.3g} (±{spread:.0f}%)" if len(ts) > 1 else f"{lo:.3g}")
            if n != "patchc":
                best = lo if best is None else min(best, lo)
        ours = min(by_tool["patchc"]) if by_tool.get("patchc") else None
        ratio = f"{best / ours:.2f}x" if ours and best else "–"
        bound = f"{bounds[exp]:.1f}x" if exp in bounds else "–"
        diff = max((d for t, d in diffs[exp].items() if t != "plain hooks"), default=0.0)
        lines.append(f"| {TITLES[exp]} | " + " | ".join(cells) +
                     f" | {ratio} | {bound} | {diff:.1e} |")
    return "\n".join(lines)


def write_doc(key: str, text: str, doc: Path = DOC) -> None:
    """Put `text` between `<!-- peers:KEY -->` and `<!-- /peers:KEY -->` (appended at the end
    of the peers section, or of the file, the first time)."""
    begin, end = f"<!-- peers:{key} -->", f"<!-- /peers:{key} -->"
    block = f"{begin}\n{text}\n{end}"
    old = doc.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _m: block, old)
    elif "<!-- /peers -->" in old:
        new = old.replace("<!-- /peers -->", block + "\n\n<!-- /peers -->")
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)


def bench(model: str, args: argparse.Namespace) -> tuple[str, dict, dict]:
    """Run one model: (markdown, diffs, tolerances)."""
    dtype = getattr(torch, args.dtype)
    exps = args.only or list(EXPERIMENTS)
    with tempfile.TemporaryDirectory() as tmp:
        task, path, tok, rows = setup(model, Path(tmp), args.device, dtype)
        data = write_data(rows, Path(tmp))
        ts = tools(task, path, tok, data, set(args.tools), args.device, dtype)
        wall, cpu, values = measure(ts, exps, args.repeats)
        bounds = {e: ts["patchc"].flop_bound(e) for e in exps} if "patchc" in ts else {}
    diffs = differences(values)
    tols = {e: tolerance(values, e, dtype) for e in exps}
    names = [n for n in TOOLS if n in ts]
    only = "".join(f" --only {e}" for e in args.only or ())
    if set(TOOLS) - set(args.tools):
        only += f' --tools "{",".join(args.tools)}"'
    shape = f"{task.n_layers} layers, {task.n_heads} heads, d {task.model.config.n_embd}"
    head = (f"{model} ({shape}; {task.clean.shape[0]} prompts x {task.width} tokens), "
            f"{args.device}, {args.dtype}, {torch.get_num_threads()} thread(s), torch "
            f"{torch.__version__}, transformers {tf.__version__}; minimum of {args.repeats} "
            f"interleaved round(s), seconds (± spread); max abs diff against the plain hooks "
            f"over every tool and number. Command: `python benchmarks/peers.py --model {model} "
            f"--repeats {args.repeats}{only}`.")
    tables = (f"Wall-clock:\n\n{table(wall, diffs, bounds, names)}\n\n"
              f"CPU time of the process:\n\n{table(cpu, diffs, bounds, names)}")
    return head + "\n\n" + tables, diffs, tols


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=["gpt2-small", "ioi", "tiny"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", action="append", choices=list(EXPERIMENTS))
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="comma-separated subset of: " + ", ".join(TOOLS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="tiny random model, 1 round")
    ap.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                    help="write docs/performance.md (default: unless --quick)")
    args = ap.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",")]
    if args.quick:
        args.model, args.repeats = args.model or ["tiny"], 1
    torch.set_num_threads(args.threads)
    tf.logging.set_verbosity_error()
    report: dict = {}
    for model in args.model or ["gpt2-small", "ioi"]:
        text, diffs, tols = bench(model, args)
        print(text + "\n", flush=True)
        if args.write if args.write is not None else not args.quick:
            subset = ":" + ",".join(args.only) if args.only else ""
            write_doc(f"{model}:{args.device}:{args.dtype}{subset}", text)
        bad = [(e, t, d) for e, by in diffs.items() for t, d in by.items()
               if not d <= tols[e]]
        for e, t, d in bad:
            print(f"MISMATCH {model} {e} {t}: max abs diff {d:.2e} > {tols[e]:.1e}",
                  file=sys.stderr)
        report[model] = {"diffs": diffs, "tolerances": tols, "mismatches": bad}
    return report


if __name__ == "__main__":
    sys.exit(1 if any(r["mismatches"] for r in main().values()) else 0)
