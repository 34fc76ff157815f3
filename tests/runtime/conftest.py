"""Shared fixtures for the runtime's exactness tests (test_ops, test_padding, test_families_run).

Tiny random-weight models of several families, a word-level tokenizer (with and without a
BOS-adding post-processor), and `Hand`: plain torch forward hooks on the HF modules, written
here independently of runtime/adapters and runtime/writes, so that the numbers patchc reports
can be recomputed by hand.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

import patchc  # noqa: E402

tf.logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny matrices: more threads only contend (100x slower)

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
WORDS = (
    "the a cat dog bird fish Mary John Anna Bob gave went to store ball and then tree red "
    "blue green sat on mat when took home it was is I love hate think this movie great "
    "awful what delight disaster"
).split()
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
VOCAB_SIZE = 64  # > len(VOCAB): some ids no prompt uses
assert len(VOCAB) <= VOCAB_SIZE

D, HEADS, LAYERS, D_HEAD = 32, 4, 3, 8


def make_tokenizer(bos: bool = False) -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer; `bos=True` prepends <bos> to every encoded text."""
    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", VOCAB["<bos>"])])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                      bos_token="<bos>", eos_token="<eos>")


_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
_GQA = dict(num_hidden_layers=LAYERS, hidden_size=D, num_attention_heads=HEADS,
            num_key_value_heads=2, intermediate_size=48, vocab_size=VOCAB_SIZE,
            max_position_embeddings=64, **_IDS)
CONFIGS: dict[str, Callable[[], tf.PretrainedConfig]] = {
    "gpt2": lambda: tf.GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=D, vocab_size=VOCAB_SIZE,
                                  n_positions=64, initializer_range=0.1, **_IDS),
    "llama": lambda: tf.LlamaConfig(**_GQA, initializer_range=0.1),
    "neox": lambda: tf.GPTNeoXConfig(
        num_hidden_layers=LAYERS, hidden_size=D, num_attention_heads=HEADS, intermediate_size=48,
        vocab_size=VOCAB_SIZE, max_position_embeddings=64, rotary_pct=0.5,
        use_parallel_residual=True, initializer_range=0.1, **_IDS),
    "qwen2": lambda: tf.Qwen2Config(**_GQA, initializer_range=0.1),
    "mistral": lambda: tf.MistralConfig(**_GQA, sliding_window=16, initializer_range=0.1),
    "gemma": lambda: tf.GemmaConfig(**{**_GQA, "num_key_value_heads": 1}, head_dim=D_HEAD,
                                    initializer_range=0.1),
}


def build_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights and biases: not trivially 1 and 0
                p.add_(torch.randn_like(p) * 0.2)
    return model



@pytest.fixture(autouse=True)
def _nothing_compiled_before():
    """Each test starts with nothing compiled before it (patchc/compile_cache.py): the
    module-scoped models run the same specs in many tests, some under monkeypatches."""
    from patchc import compile_cache

    compile_cache.clear()
    yield
    compile_cache.clear()

# ---- where each site lives, per family (independent of runtime/adapters) ----------------

_PATHS = {  # layers, attention, mlp, attention output projection, mlp output projection
    "gpt2": ("transformer.h", "attn", "mlp", "attn.c_proj", "mlp.c_proj"),
    "neox": ("gpt_neox.layers", "attention", "mlp", "attention.dense", "mlp.dense_4h_to_h"),
    "phi": ("model.layers", "self_attn", "mlp", "self_attn.dense", "mlp.fc2"),
    "gptj": ("transformer.h", "attn", "mlp", "attn.out_proj", "mlp.fc_out"),
}
_LLAMA_LIKE = ("model.layers", "self_attn", "mlp", "self_attn.o_proj", "mlp.down_proj")
_SITE = re.compile(r"^(?:L(\d+)\.)?(?:H(\d+)\.)?([a-z_.]+?)(?:\[(\d+)\])?$")


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)  # type: ignore[index]
    return root


@dataclass
class Fam:
    """One family's tiny model, its tokenizer, the directory it is saved in, and hand hooks."""

    name: str
    model: torch.nn.Module
    tok: tf.PreTrainedTokenizerFast
    path: str
    naive: bool = False  # which interpreter `run` uses unless told

    # -- running specs ------------------------------------------------------------------
    def spec(self, body: str) -> str:
        return f'model "{self.path}"\n' + body

    def run(self, body: str, **kw) -> patchc.Results:
        kw.setdefault("naive", self.naive)
        return patchc.run(self.spec(body), model=self.model, tokenizer=self.tok, **kw)

    # -- tokens ---------------------------------------------------------------------------
    def ids(self, texts: list[str]) -> torch.Tensor:
        rows = [self.tok(t)["input_ids"] for t in texts]
        assert len({len(r) for r in rows}) == 1, "hand runs take prompts of equal length"
        return torch.tensor(rows)

    def tid(self, word: str) -> int:
        return VOCAB[word.strip()]

    # -- sites ----------------------------------------------------------------------------
    def where(self, site: str) -> tuple[torch.nn.Module, str, slice]:
        """(module, 'in'|'out', feature slice) of a canonical site name."""
        m = _SITE.match(site)
        assert m, site
        layer, head, kind, feat = m.groups()
        layers, attn, mlp, o_proj, down = _PATHS.get(self.name, _LLAMA_LIKE)
        cols = slice(None)
        if kind == "embed":
            return _get(self.model, layers)[0], "in", cols
        block = _get(self.model, layers)[int(layer)]
        if head is not None:
            h = int(head)
            cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
        if feat is not None:
            cols = slice(int(feat), int(feat) + 1)
        return {
            "resid_pre": (block, "in", cols),
            "resid_post": (block, "out", cols),
            "attn.out": (_get(block, attn), "out", cols),
            "mlp.out": (_get(block, mlp), "out", cols),
            "mlp.post": (_get(block, down), "in", cols),
            "z": (_get(block, o_proj), "in", cols),
            "attn.z": (_get(block, o_proj), "in", cols),
        }[kind]

    @contextlib.contextmanager
    def hooked(self, edits: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]):
        """Plain torch hooks: `edits[site](act)` sees the site's [N, T, d] (feature slice)
        activation and returns its replacement, or None to leave it (a read)."""
        handles = []
        for site, fn in edits.items():
            module, side, cols = self.where(site)

            def edit(x: torch.Tensor, fn=fn, cols=cols) -> torch.Tensor:
                new = fn(x[..., cols])
                if new is None:
                    return x
                out = x.clone()
                out[..., cols] = new
                return out

            if side == "in":
                def pre(mod, args, kwargs, edit=edit):
                    if args:
                        return (edit(args[0]),) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, edit=edit):
                    if isinstance(out, tuple):
                        return (edit(out[0]),) + tuple(out[1:])
                    return edit(out)
                handles.append(module.register_forward_hook(post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, ids: torch.Tensor, writes: dict | None = None,
                reads: tuple[str, ...] = (), **kwargs) -> tuple[torch.Tensor, dict]:
        """Logits [N, T, V] of one forward with `writes` (site -> fn), and the values of
        `reads` (after the writes at that site)."""
        got: dict[str, torch.Tensor] = {}
        edits: dict = dict(writes or {})
        for r in reads:
            inner = edits.get(r)

            def rd(x, r=r, inner=inner):
                new = inner(x) if inner else None
                got[r] = (x if new is None else new).detach().clone()
                return new
            edits[r] = rd
        with torch.no_grad(), self.hooked(edits):
            logits = self.model(ids, **kwargs).logits
        return logits.float(), got

    def read(self, texts: list[str], *sites: str) -> dict[str, torch.Tensor]:
        return self.forward(self.ids(texts), reads=sites)[1]


def at(pos: int | slice | None, value: torch.Tensor) -> Callable:
    """A write fn putting `value` ([N, T', d] or broadcastable) at positions `pos`."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        if pos is None:
            out[:] = value
        else:
            out[:, pos] = value
        return out
    return fn


def logit_diff(logits: torch.Tensor, answers: list[int], distractors: list[int]) -> torch.Tensor:
    last = logits[:, -1]
    n = torch.arange(len(last))
    return last[n, torch.tensor(answers)] - last[n, torch.tensor(distractors)]


def inline(rows: list[dict]) -> str:
    return "[" + ", ".join(json.dumps(r) for r in rows) + "]"


_BUILT: dict[tuple[str, bool], Fam] = {}


def family(name: str, tmp: Path, bos: bool = False) -> Fam:
    """The (cached) tiny model of a family, saved with its tokenizer under `tmp`."""
    key = (name, bos)
    if key not in _BUILT:
        model, tok = build_model(name), make_tokenizer(bos)
        path = tmp / f"{name}{'-bos' if bos else ''}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        _BUILT[key] = Fam(name, model, tok, str(path))
    return _BUILT[key]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("patchc-models")


@pytest.fixture(scope="session", params=["optimized", "naive"])
def interpreter(request: pytest.FixtureRequest) -> str:
    """Tests that take a model fixture run once per interpreter: the default (optimized
    plan) and `naive=True` (the reference), each against the same hand computation."""
    return request.param


@pytest.fixture(scope="session")
def get_family(models_dir: Path, interpreter: str) -> Callable[..., Fam]:
    naive = interpreter == "naive"
    return lambda name, bos=False: replace(family(name, models_dir, bos), naive=naive)


@pytest.fixture(scope="session")
def any_family(models_dir: Path) -> Callable[..., Fam]:
    """Families without the interpreter parameter (tests that compare the two)."""
    return lambda name, bos=False: family(name, models_dir, bos)


@pytest.fixture(scope="session")
def gpt2(get_family) -> Fam:
    return get_family("gpt2")


@pytest.fixture(scope="session")
def llama(get_family) -> Fam:
    return get_family("llama")
