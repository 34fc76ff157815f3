"""What this process compiled, kept for a spec that runs again unchanged.

`patchc.run(spec, model=m, tokenizer=t)` checks the spec against the model's shape and the
tokenizer's token counts, lowers it, optimizes the graph and schedules it: about 3.5 ms on
the bundled IOI model, a sixth of its attribution run (docs/performance.md, "A spec run
again reuses its compile"). A notebook runs one spec many times, so a run with the
caller's model keeps what it compiled, keyed by everything compiling read:

- the spec's text and the folder its relative paths resolve against;
- the sha256 of every file the spec reads (data, vectors, dictionary configs), which the
  run takes anyway for its manifest: an edited data file is a new key (and a file edited
  while it was checked is not kept);
- the model object, and its shape (the adapter's ModelSpec, compared on every hit);
- the tokenizer object and what it does (the manifest's tokenizer hash: vocabulary,
  normalizer, pre-tokenizer, post-processor, special tokens; its padding side and its
  BOS/EOS and special-token switches);
- the configs of the SAELens objects passed with `saes=`, the option overrides, `naive`.

A call that matches all of them reuses the checked spec and the lowered and optimized graphs
(the AST, the IR and the checked spec are frozen; the runtime's late changes copy), and the
last plan made from them when it was made for the same memory budget, device, dtype,
weights' size and cache kind (runtime/memory.py rounds the budget taken from the free
memory, so that it does not move with every page); else the plan is made again. The model
is held by weak reference, so an entry never keeps one alive; the checked spec holds the
tokenizer it tokenized with (and the ids it made) until its entry is dropped: the last
`SIZE` entries are kept, and `clear()` drops them all. Runs over worker processes and runs
that load the model themselves compile every time.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from patchc.compiler import ast as A
from patchc.compiler.checked import CheckedSpec
from patchc.compiler.modelspec import ModelSpec
from patchc.manifest import tokenizer_hash

SIZE = 8
# Tokenizer switches that live beside the fast tokenizer's own parts (tokenizer_hash reads
# those): a slow tokenizer's BOS/EOS flags, and whether special tokens are split.
_SWITCHES = ("add_bos_token", "add_eos_token", "split_special_tokens")


@dataclass
class Entry:
    """One compiled spec: what check returned, and what was made from it, one value per
    kind ("lowered", "optimized", "plan") with the key it was made for."""

    model: "weakref.ref[Any]"
    tokenizer: "weakref.ref[Any]"
    model_spec: ModelSpec | None
    checked: CheckedSpec
    made: dict[str, tuple[Hashable, Any]] = field(default_factory=dict)


_ENTRIES: "OrderedDict[tuple, Entry]" = OrderedDict()
_LOCK = threading.Lock()  # (notebooks run threads; the entries are shared)


def key(spec: A.Spec, model: Any, tokenizer: Any, inputs: dict[str, str],
        sae_configs: dict[str, Any], overrides: dict[str, Any] | None, naive: bool
        ) -> tuple | None:
    """The key of a run, or None for a run that is not kept (no model or tokenizer object
    passed). `sae_configs`: the configs of the SAE objects passed with `saes=` (what check
    reads of them; their weights are loaded by every run)."""
    if model is None or tokenizer is None:
        return None
    source = spec.source
    switches = tuple(repr(getattr(tokenizer, name, None)) for name in _SWITCHES)
    return (source.text, source.filename, source.base_dir, tuple(sorted(inputs.items())),
            id(model), id(tokenizer), tokenizer_hash(tokenizer), switches,
            getattr(tokenizer, "padding_side", None), repr(sorted(sae_configs.items())),
            repr(sorted((overrides or {}).items())), naive)


def checked_spec(k: tuple | None, model: Any, tokenizer: Any, model_spec: ModelSpec | None,
                 make: Callable[[], CheckedSpec], inputs_now: Callable[[], dict[str, str]]
                 ) -> tuple[CheckedSpec, bool]:
    """(the checked spec, whether it was kept from a run before). Kept under `k`: reused if
    its model and tokenizer are these very objects and the model's shape is unchanged; else
    `make()`'s, kept when the files it read hash as they did in the key (`inputs_now()`:
    one edited while it was checked would leave the new rows under the old digests)."""
    if k is None:
        return make(), False
    with _LOCK:
        entry = _ENTRIES.get(k)
        if entry is not None:
            if entry.model() is model and entry.tokenizer() is tokenizer and \
                    entry.model_spec == model_spec:
                _ENTRIES.move_to_end(k)
                return entry.checked, True
            del _ENTRIES[k]  # a new object at a freed one's address, or a changed shape
    checked = make()
    if tuple(sorted(inputs_now().items())) != k[3]:
        return checked, False
    try:
        entry = Entry(weakref.ref(model), weakref.ref(tokenizer), model_spec, checked)
    except TypeError:  # an object that takes no weak reference: not kept
        return checked, False
    with _LOCK:
        _ENTRIES[k] = entry
        while len(_ENTRIES) > SIZE:
            _ENTRIES.popitem(last=False)
    return checked, False


def made(checked: CheckedSpec, kind: str, make: Callable[[], Any], what: Hashable = None
         ) -> Any:
    """`make()` for a kept `checked`, made once per `what` (the last one made of each kind
    is kept: a plan made for another budget replaces the one before); made anew for a
    checked spec that is not kept."""
    with _LOCK:
        entry = next((e for e in reversed(_ENTRIES.values()) if e.checked is checked), None)
        got = entry.made.get(kind) if entry is not None else None
    if got is not None and got[0] == what:
        return got[1]
    value = make()
    if entry is not None:
        with _LOCK:
            entry.made[kind] = (what, value)
    return value


def clear() -> None:
    """Forget every entry."""
    with _LOCK:
        _ENTRIES.clear()
