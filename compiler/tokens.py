"""A light tokenizer for `check`: the model's `tokenizer.json`, read with the `tokenizers`
library alone (no transformers, which takes seconds to import).

`check` needs token counts (positions and equal lengths of swapped runs are about tokens) and
the first token of metric answers. `encode(text)` gives what HF's
`AutoTokenizer.from_pretrained(model)(text, add_special_tokens=True)` gives: the
tokenizer.json post-processor adds BOS where the model uses one. transformers rebuilds that
post-processor when `tokenizer_config.json` sets `add_bos_token`/`add_eos_token` explicitly
(Llama, Gemma), so we do the same. `encode_plain(text)` is the tokenization without special
tokens (how a metric's answer is read); `unk_id` is the token a word outside the vocabulary
becomes (None for a tokenizer that has none), so that check can say which answers are unknown.

If no tokenizer.json can be found (a hub id that is not in the offline cache, a directory with
only slow-tokenizer files), `load_tokenizer` returns None and check skips token-length checks
with a warning.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any, Protocol

from .modelspec import _looks_local


class TokenizerLike(Protocol):
    """What check needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def encode_plain(self, text: str) -> list[int]: ...


class LightTokenizer:
    """A `tokenizers.Tokenizer` with HF's special-token behaviour."""

    def __init__(self, tok: Any, prefix: list[int] | None = None,
                 suffix: list[int] | None = None) -> None:
        self.tok = tok
        # None: trust the tokenizer.json post-processor; a list: the explicit template.
        self._prefix = prefix
        self._suffix = suffix

    def encode(self, text: str) -> list[int]:
        if self._prefix is None:
            return list(self.tok.encode(text, add_special_tokens=True).ids)
        return self._prefix + self.encode_plain(text) + (self._suffix or [])

    def encode_plain(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call of the library (what one call per text costs
        in overhead is most of tokenizing a short prompt)."""
        if self._prefix is None:
            return [list(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=True)]
        return [self._prefix + ids + (self._suffix or []) for ids in self.plain_many(texts)]

    def plain_many(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown-word token (WordLevel/WordPiece/BPE with one), else None."""
        unk = getattr(self.tok.model, "unk_token", None)
        return self.tok.token_to_id(unk) if isinstance(unk, str) else None


class _Wrapped:
    """Adapts an HF tokenizer (or anything with `encode(text, add_special_tokens=...)`).
    Each text is encoded once (an answer column names a few tokens many times; an HF
    tokenizer's own overhead per call is most of encoding a word), and the texts of a
    column in one call where the tokenizer takes a list (`tok(texts, ...)["input_ids"]`, as
    an HF tokenizer does). The runtime reuses these ids when it runs with the same
    tokenizer (`shared`): a run's prompts and answers are tokenized once, by check."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self._plain: dict[str, list[int]] = {}
        self._special: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if text not in self._special:
            self._special[text] = list(self.tok.encode(text))
        return list(self._special[text])

    def encode_plain(self, text: str) -> list[int]:
        if text not in self._plain:
            try:
                self._plain[text] = list(self.tok.encode(text, add_special_tokens=False))
            except TypeError:
                self._plain[text] = list(self.tok.encode(text))
        return list(self._plain[text])

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        self._fill(self._special, texts, True)
        return [self.encode(t) for t in texts]

    def plain_many(self, texts: list[str]) -> list[list[int]]:
        self._fill(self._plain, texts, False)
        return [self.encode_plain(t) for t in texts]

    def _fill(self, cache: dict[str, list[int]], texts: list[str], special: bool) -> None:
        """Encode the texts not cached yet in one call, where the tokenizer takes a list;
        else (or if it answers oddly) they are left to `encode`, one by one."""
        new = list(dict.fromkeys(t for t in texts if t not in cache))
        if len(new) < 2 or not callable(self.tok):
            return
        try:
            got = self.tok(new, add_special_tokens=special)["input_ids"]
        except Exception:  # not an HF-style tokenizer: one text at a time
            return
        if isinstance(got, list) and len(got) == len(new):
            cache.update((t, list(ids)) for t, ids in zip(new, got))

    @property
    def unk_id(self) -> int | None:
        unk = getattr(self.tok, "unk_token_id", None)
        return unk if isinstance(unk, int) else None


def as_tokenizer(tok: Any) -> TokenizerLike | None:
    """A TokenizerLike from what a caller passed to `check(..., tokenizer=...)`."""
    if tok is None or (hasattr(tok, "encode") and hasattr(tok, "encode_plain")):
        return tok
    return _Wrapped(tok)


def encode_many(tok: TokenizerLike, texts: list[str]) -> list[list[int]]:
    """`tok.encode` of each text, batched where `tok` can."""
    many = getattr(tok, "encode_many", None)
    return many(list(texts)) if many is not None else [tok.encode(t) for t in texts]


def plain_many(tok: TokenizerLike, texts: list[str]) -> list[list[int]]:
    """`tok.encode_plain` of each text, batched where `tok` can."""
    many = getattr(tok, "plain_many", None)
    return many(list(texts)) if many is not None else [tok.encode_plain(t) for t in texts]


def shared(checked_tok: Any, tokenizer: Any) -> Any:
    """What check tokenized with, when it wraps `tokenizer` itself (its cached ids are then
    this tokenizer's); else a fresh wrapper of `tokenizer` for the run."""
    if isinstance(checked_tok, _Wrapped) and checked_tok.tok is tokenizer:
        return checked_tok
    return _Wrapped(tokenizer)


def load_tokenizer(model_id: str, revision: str | None = None,
                   base_dir: str = ".") -> LightTokenizer | None:
    """The tokenizer of a local model directory or (offline cache only) a hub id; None if it
    has no tokenizer.json that can be read."""
    path = os.path.join(base_dir, os.path.expanduser(model_id))
    if os.path.isdir(path):
        return _load_files(os.path.join(path, "tokenizer.json"),
                           os.path.join(path, "tokenizer_config.json"))
    if os.path.exists(path) or _looks_local(model_id):
        return None
    try:
        # Lazy: only hub ids need it. The cache only: check never downloads tokenizers.
        from huggingface_hub import hf_hub_download

        tj = hf_hub_download(model_id, "tokenizer.json", revision=revision,
                             local_files_only=True)
    except Exception:
        return None
    try:
        from huggingface_hub import hf_hub_download

        tc = hf_hub_download(model_id, "tokenizer_config.json", revision=revision,
                             local_files_only=True)
    except Exception:
        tc = ""
    return _load_files(tj, tc)


def _load_files(tokenizer_json: str, tokenizer_config: str) -> LightTokenizer | None:
    if not os.path.isfile(tokenizer_json):
        return None
    # Keyed on modification times too: a long-lived process sees a rewritten tokenizer.
    return _load_cached(tokenizer_json, tokenizer_config, _mtime(tokenizer_json),
                        _mtime(tokenizer_config))


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


@lru_cache(maxsize=16)
def _load_cached(tokenizer_json: str, tokenizer_config: str, _m1: float,
                 _m2: float) -> LightTokenizer | None:
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json)
    except Exception:  # a tokenizer.json this version of tokenizers cannot read
        return None
    config: dict[str, Any] = {}
    if tokenizer_config and os.path.isfile(tokenizer_config):
        try:
            with open(tokenizer_config, encoding="utf-8") as f:
                loaded = json.load(f)
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            config = {}
    prefix = suffix = None
    # transformers rebuilds the template from these flags when the config sets either one
    # (tokenization_utils_tokenizers.update_post_processor); otherwise tokenizer.json rules.
    if "add_bos_token" in config or "add_eos_token" in config:
        bos = _token_id(tok, config.get("bos_token"))
        eos = _token_id(tok, config.get("eos_token"))
        prefix = [bos] if config.get("add_bos_token") and bos is not None else []
        suffix = [eos] if config.get("add_eos_token") and eos is not None else []
    return LightTokenizer(tok, prefix, suffix)


def _token_id(tok: Any, token: Any) -> int | None:
    """The id of a special token given as a string or an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    return tok.token_to_id(token)
