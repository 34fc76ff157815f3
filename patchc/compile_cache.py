"""What this process compiled, kept for a spec that runs again unchanged.

`patchc.run(spec, model=m, tokenizer=t)` checks the spec against the model's shape and the
tokenizer's token counts, lowers it and optimizes the graph: a few milliseconds, as long as
the model passes of a small model (docs/performance.md, "Compiled specs run again"). A
notebook runs one spec many times, so a run with the caller's model keeps what it compiled,
keyed by everything compiling read:

- the spec's text and the folder its relative paths resolve against;
- the sha256 of every file the spec reads (data, vectors, dictionary configs), which the
  run takes anyway for its manifest: an edited data file is a new key;
- the model object, and its shape (the adapter's ModelSpec, compared on every hit);
- the tokenizer object and what it does (the manifest's tokenizer hash: vocabulary,
  normalizer, pre-tokenizer, post-processor, special tokens; a BOS switched on since, or a
  token added, is a new key);
- the configs of the SAELens objects passed with `saes=`, the option overrides, `naive`.

A call that matches all of them reuses the checked spec, the lowered and optimized graphs
(the AST, the IR and the checked spec are frozen; the runtime's late changes copy) and the
plan made for the same memory budget, device and dtype (runtime/memory.py rounds the
budget taken from the free memory, so that it does not move with every page). The model is
held by weak reference, so an entry never keeps one alive; the checked spec holds the
tokenizer it tokenized with (and the ids it made) until its entry is dropped: the last
`SIZE` entries are kept, and `clear()` drops them all.
Runs over worker processes and runs that load the model themselves compile every time.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from patchc.compiler import ast as A
from patchc.compiler.checked import CheckedSpec
from patchc.compiler.modelspec import ModelSpec
from patchc.manifest import tokenizer_hash

SIZE = 8


@dataclass
class Entry:
    """One compiled spec: what check returned, and what was made from it when asked."""

    model: "weakref.ref[Any]"
    tokenizer: "weakref.ref[Any] | None"
    model_spec: ModelSpec | None
    checked: CheckedSpec
    made: dict[Hashable, Any] = field(default_factory=dict)  # graphs and plans made from it


_ENTRIES: "OrderedDict[tuple, Entry]" = OrderedDict()


def key(spec: A.Spec, model: Any, tokenizer: Any, inputs: dict[str, str],
        sae_configs: dict[str, Any], overrides: dict[str, Any] | None, naive: bool
        ) -> tuple | None:
    """The key of a run, or None for a run that is not kept (no model object passed).
    `sae_configs`: the configs of the SAE objects passed with `saes=` (what check reads of
    them; their weights are loaded by every run)."""
    if model is None or tokenizer is None:
        return None
    source = spec.source
    return (source.text, source.filename, source.base_dir, tuple(sorted(inputs.items())),
            id(model), id(tokenizer), tokenizer_hash(tokenizer),
            getattr(tokenizer, "padding_side", None), repr(sorted(sae_configs.items())),
            repr(sorted((overrides or {}).items())), naive)


def find(k: tuple | None, model: Any, tokenizer: Any, model_spec: ModelSpec | None
         ) -> CheckedSpec | None:
    """The checked spec kept under `k`, if its model and tokenizer are these very objects
    and the model's shape is unchanged."""
    entry = _ENTRIES.get(k) if k is not None else None
    if entry is None:
        return None
    same_tok = tokenizer is None if entry.tokenizer is None else entry.tokenizer() is tokenizer
    if entry.model() is not model or not same_tok or entry.model_spec != model_spec:
        del _ENTRIES[k]  # a new object at a freed one's address, or a changed shape
        return None
    _ENTRIES.move_to_end(k)
    return entry.checked


def keep(k: tuple | None, model: Any, tokenizer: Any, model_spec: ModelSpec | None,
         checked: CheckedSpec) -> None:
    """Keep a run's checked spec under its key (dropping the oldest beyond SIZE)."""
    if k is None:
        return
    try:
        tok = weakref.ref(tokenizer) if tokenizer is not None else None
        entry = Entry(weakref.ref(model), tok, model_spec, checked)
    except TypeError:  # an object that takes no weak reference: not kept
        return
    _ENTRIES[k] = entry
    while len(_ENTRIES) > SIZE:
        _ENTRIES.popitem(last=False)


def made(checked: CheckedSpec, what: Hashable, make: Callable[[], Any]) -> Any:
    """`make()`, made once per kept entry of `checked` and `what` ("lowered", "optimized",
    or a plan's budget and device); made anew for a checked spec that is not kept."""
    for entry in reversed(_ENTRIES.values()):
        if entry.checked is checked:
            if what not in entry.made:
                entry.made[what] = make()
            return entry.made[what]
    return make()


def clear() -> None:
    """Forget every entry."""
    _ENTRIES.clear()
