"""How `patchc check` and `patchc compile --emit plan` scale with the number of experiments.

    python benchmarks/scale.py [--repeats 3] [--sizes 1k 37k 590k 5M]

A GPT-2-small-shaped config (12 layers, 12 heads, d_model 768, 3072 MLP neurons; config and
a word-level tokenizer only: neither command loads weights), 8 prompts of 16 tokens, and one
neuron sweep per size:

  1k    swap L0.mlp.post[0..63] @ each            64 x 16            =     1,024
  37k   swap L*.mlp.post[*] @ last                12 x 3072          =    36,864
  590k  swap L*.mlp.post[*] @ each                12 x 3072 x 16     =   589,824
  5M    scale L*.mlp.post[*] @ each by {9 values} 12 x 3072 x 16 x 9 = 5,308,416

Each command runs in a fresh process (`python -m patchc.cli`, under GNU time), one thread;
its wall time, CPU time (user + system) and peak resident set size are recorded. Prints a
markdown table: the minimum over the repeats, then the spread (max - min) of the wall time.
On a shared machine the wall time includes waiting for a core; the CPU time does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers as tf  # noqa: E402
from bench_common import WORDS, spec  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

SIZES = {
    "1k": "swap L0.mlp.post[0..63] @ each from clean into corrupt",
    "37k": "swap L*.mlp.post[*] @ last from clean into corrupt",
    "590k": "swap L*.mlp.post[*] @ each from clean into corrupt",
    "5M": "scale L*.mlp.post[*] @ each in corrupt by {0, 0.25, 0.5, 0.75, 1.25, 1.5, 2, 3, 4}",
}
COMMANDS = {"check": ["check"], "plan": ["compile", "--emit", "plan"]}


def gpt2_small_config(path: Path) -> None:
    """Config and tokenizer of a GPT-2-small-shaped model (no weights)."""
    tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_inner=3072, vocab_size=50257,
                  n_positions=1024, bos_token_id=2, eos_token_id=3,
                  pad_token_id=0).save_pretrained(path)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                               bos_token="<bos>", eos_token="<eos>").save_pretrained(path)


def measure(args: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s, peak RSS bytes, stdout) of one fresh `patchc` process, as GNU time
    reports them (a child forked from this Python would count this process's pages in its
    peak RSS)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %U %S %M",
                               sys.executable, "-m", "patchc.cli", *args], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"patchc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        wall, user, system, rss_kb = report.read().split()[-4:]
    return float(wall), float(user) + float(system), int(rss_kb) * 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "gpt2-small"
        gpt2_small_config(model)
        print("| sweep | experiments | command | wall s (min) | wall spread | CPU s (min) | "
              "peak RSS |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            path = Path(tmp) / f"{size}.patch"
            path.write_text(spec(model, SIZES[size] + "\n    measure ld\n    as t"))
            count = "?"
            for name, cmd in COMMANDS.items():
                runs = [measure([*cmd, str(path)]) for _ in range(args.repeats)]
                walls = [r[0] for r in runs]
                count = _experiments(runs[0][3]) if name == "check" else count
                print(f"| {size} | {count} | {name} | {min(walls):.2f} | "
                      f"{max(walls) - min(walls):.2f} | {min(r[1] for r in runs):.2f} | "
                      f"{max(r[2] for r in runs) / 1e6:.0f} MB |", flush=True)


def _experiments(out: str) -> str:
    for line in out.splitlines():
        if "experiment(s)" in line:  # check: "ok: 1 table(s), N experiment(s): ..."
            return line.split("experiment(s)")[0].rsplit(",", 1)[-1].strip()
    return "?"


if __name__ == "__main__":
    main()
