"""What the sweep and memory benchmarks share: the random GPT-2 of the issue (6 layers, 8
heads, d_model 256, vocab 50257) saved with a word-level tokenizer to a temporary
directory (no network), 8 prompts of 16 tokens, specs, timing in turns, and peak-RSS
sampling."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

N_PROMPTS, N_TOKENS = 8, 16
WORDS = [f"w{i}" for i in range(200)]
CONFIG = dict(n_layer=6, n_head=8, n_embd=256, vocab_size=50257, n_positions=64,
              bos_token_id=2, eos_token_id=3, pad_token_id=0)


def build(path: Path, **sizes: int) -> tuple[torch.nn.Module, tf.PreTrainedTokenizerFast]:
    """The random GPT-2 (CONFIG, with `sizes` such as n_layer=12 replacing its values) and
    the word-level tokenizer, saved to `path`."""
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(**{**CONFIG, **sizes})).eval()
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                     bos_token="<bos>", eos_token="<eos>")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def prompts(seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (N_PROMPTS, N_TOKENS), generator=g)
    return [" ".join(WORDS[int(i)] for i in row) for row in idx]


def spec(path: Path, body: str, settings: str = "") -> str:
    rows = [{"clean": c, "corrupt": k, "answer": "w1", "distractor": "w2"}
            for c, k in zip(prompts(1), prompts(2))]
    data = "[" + ", ".join(str(r).replace("'", '"') for r in rows) + "]"
    return (f'model "{path}"\n{settings}data d = {data}\nrun clean = d.clean\n'
            "run corrupt = d.corrupt\nmetric ld = logit(d.answer) - logit(d.distractor)\n"
            f"{body}\n")


def timings(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each case per round; the cases take turns (one warm-up round first), so
    that load from other processes hits them alike."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(repeats + 1):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            if r:
                out[name].append(time.perf_counter() - start)
    return out


def summary(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def first_run(text: str, **kw):
    """`patchc.run(text, **kw)` as a spec's first run in the process: nothing kept from an
    earlier run of it (patchc/compile_cache.py), so checking, lowering, the passes and the
    schedule are inside the time."""
    import patchc
    from patchc import compile_cache

    compile_cache.clear()
    return patchc.run(text, **kw)
