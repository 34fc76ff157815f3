"""The manifest of a run (docs/language.md §12): what a paper cites so that others can rerun it.

A pydantic model, because it crosses a file boundary: `patchc run --out DIR` writes it as
DIR/manifest.json and `patchc verify DIR` reads it back (`load_manifest`, which refuses a
malformed one with a clear E604 rather than failing half-way through a rerun).

Every input of the run is pinned by a sha256: the spec's text, each file the spec reads
(data, vector and SAE files, a device map: `spec_inputs`), the weights and the tokenizer.
`model_path` is what actually ran (an API caller may pass another model than the spec's
`model` line names).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import weakref
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from patchc.compiler.errors import PatchcError
from patchc.compiler.file_stamps import settled_stamp


class Manifest(BaseModel):
    spec_text: str
    spec_sha256: str
    spec_file: str  # absolute path of the spec file ("<spec>" for spec text)
    spec_dir: str  # absolute folder the spec's relative paths resolve against
    model_id: str  # the spec's `model` line
    model_path: str  # what ran: a local folder (absolute), a hub id, or the API model's name
    revision: str | None
    weights_sha256: str
    tokenizer_sha256: str
    inputs: dict[str, str]  # each file the spec reads, as written in it -> sha256
    versions: dict[str, str]
    device: str  # where inputs went (with a device map: the embedding's device)
    device_map: dict[str, Any] | None = None  # module -> device, as accelerate placed it
    workers: int = 1  # processes the plan was sharded over (`--workers`)
    threads: int  # torch's intra-op threads: float sums depend on how they are split
    dtype: str
    seed: int
    options: dict[str, Any]
    tables: dict[str, dict[str, Any]]  # name -> {rows, columns, seconds}
    plan: dict[str, Any]  # pass counts: forwards, backwards, ...
    interpreter: str  # "naive" or "optimized"
    # A model_type outside the family table: the layout inferred from its config and checked
    # on its weights (runtime/adapters/inferred.py), as the run used it.
    layout: dict[str, Any] | None = None
    # The user's own files in the folder when the result was written beside them (--force):
    # not part of the result, and `patchc verify` leaves them alone.
    beside: list[str] = []
    total_seconds: float
    # Seconds per phase (load, plan, execute, assemble), in model passes (model), and the
    # overhead: everything but the load and the model passes (patchc/execution.py Clock).
    timings: dict[str, float] = {}
    # The spec ran before in this process, unchanged, and its checked form, graphs and (for
    # the same budget) plan were reused (patchc/compile_cache.py): `load` and `plan` above
    # then hold no checking or passes.
    compile_reused: bool = False
    files: list[str] = []  # every file of the result folder but manifest.json (outputs.py)


def versions() -> dict[str, str]:
    import torch
    import transformers

    from patchc.version import __version__

    out = {"patchc": __version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version()}
    try:  # only needed for `set device_map`
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_FILE_DIGESTS: dict[str, tuple[tuple, str]] = {}


def sha256_file(path: "str | Path") -> str:
    """sha256 of a file's bytes, kept per path under the file's stamp
    (compiler/file_stamps.py): a dictionary's weights, hundreds of MB, are hashed once per
    process, not once per run."""
    stamp = settled_stamp(path)
    key = os.path.abspath(path)
    kept = _FILE_DIGESTS.get(key)
    if stamp is not None and kept is not None and kept[0] == stamp:
        return kept[1]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if stamp is not None:
        if len(_FILE_DIGESTS) >= 4096:  # (result folders' files pass through here too)
            _FILE_DIGESTS.clear()
        _FILE_DIGESTS[key] = (stamp, digest)
    return digest


_FIELDS: dict[type, tuple[str, ...]] = {}  # the fields spec_files walks, per AST class


def spec_files(spec: Any, device_map: Any = None) -> list[str]:
    """The files a spec reads, as written in it: `data` files, `load(...)`/`sae(...)` vector
    files wherever they appear, a dictionary folder's cfg.json and weights, and a device map
    file. Walks the AST generically, so a new
    statement that reads a file through these nodes is covered too."""
    from patchc.compiler import ast as A
    from patchc.compiler.dictionaries import dictionary_files

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, (A.DataDecl, A.VLoad, A.VSae)) and node.path:
            found.append(node.path)
        if isinstance(node, A.DictDecl):  # an SAELens folder: its config and weights
            found.extend(dictionary_files(node.path, spec.source.base_dir))
        if (isinstance(node, A.SetDecl) and node.name.value == "device_map"
                and str(node.value).endswith(".json")):
            found.append(str(node.value))
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            names = _FIELDS.get(type(node))
            if names is None:
                names = _FIELDS[type(node)] = tuple(
                    f.name for f in dataclasses.fields(node) if f.name not in ("span", "rows"))
            for name in names:
                walk(getattr(node, name))
        elif isinstance(node, (tuple, list)):
            for x in node:
                walk(x)

    walk(spec.statements)
    if isinstance(device_map, str) and device_map.endswith(".json"):
        found.append(device_map)
    return list(dict.fromkeys(found))


def input_path(written: str, base_dir: str) -> Path:
    return Path(base_dir) / os.path.expanduser(written)


def hash_inputs(files: list[str], base_dir: str) -> dict[str, str]:
    """sha256 of each input file ("missing" for one that is not there)."""
    out = {}
    for written in files:
        path = input_path(written, base_dir)
        out[written] = sha256_file(path) if path.is_file() else "missing"
    return out


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what the tokenizer does: its full serialized form for a fast tokenizer
    (vocabulary, merges, normalizer, templates), else its vocabulary; and its special
    tokens. The serialized form of a GPT-2-sized tokenizer takes ~13 ms to write, so its
    hash is kept per tokenizer object while the object's size and its small parts (the
    normalizer, pre-tokenizer, post-processor, decoder, padding, truncation) are unchanged;
    the special tokens are hashed anew every time."""
    h = _backend_hash(tokenizer).copy()  # (the same digest as hashing it all at once)
    special = getattr(tokenizer, "special_tokens_map", {})
    h.update(json.dumps(special, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


_DIGESTS: "weakref.WeakKeyDictionary[Any, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()


def _backend_hash(tokenizer: Any) -> Any:
    """A sha256 object fed the tokenizer's serialized form (memoized; see tokenizer_hash)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        length = len(tokenizer)
    except TypeError:  # (a wrapper that hands attributes on, but not len())
        length = -1
    size = (length, *(repr(getattr(backend, part, None)) for part in (
                "normalizer", "pre_tokenizer", "post_processor", "decoder", "padding",
                "truncation")))
    try:  # (no memo for what has no size to compare, or cannot be weakly referenced)
        kept = _DIGESTS.get(tokenizer) if length >= 0 else None
    except TypeError:
        kept = None
    if kept is not None and kept[0] == size:
        return kept[1]
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        text = json.dumps(sorted(vocab.items()))
    h = hashlib.sha256(text.encode("utf-8"))
    try:
        if length >= 0:
            _DIGESTS[tokenizer] = (size, h)
    except TypeError:
        pass
    return h


def check_file_name(name: str) -> None:
    """An output or table file name (from a manifest, which anyone can edit) must stay
    inside its result folder: E608."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name.startswith(".") or os.path.isabs(name)):
        raise PatchcError("E608", f"{name!r} is not a plain file name inside the result "
                          "folder")


def read_manifest(out_dir: "str | Path") -> dict[str, Any]:
    """DIR/manifest.json of a `patchc run --out DIR` folder: E601 if there is none, E604 if
    it is not a JSON object."""
    path = Path(out_dir) / "manifest.json"
    if not Path(out_dir).exists():
        from patchc.compiler.paths import near

        raise PatchcError("E601", f"there is no folder {out_dir}",
                          hint=near(str(out_dir), str(out_dir))
                          or "name the folder `patchc run SPEC --out DIR` wrote")
    if not Path(out_dir).is_dir():
        raise PatchcError("E601", f"{out_dir} is a file, not a result folder",
                          hint="name the folder `patchc run SPEC --out DIR` wrote")
    if not path.is_file():
        raise PatchcError("E601", f"{out_dir} has no manifest.json (is it a `patchc run "
                          "--out` folder?)")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PatchcError("E604", f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PatchcError("E604", f"{path} is not a JSON object")
    return data


def load_manifest(out_dir: "str | Path") -> Manifest:
    """The manifest, every field present and of its type (E604 names the first that is
    not)."""
    data = read_manifest(out_dir)
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        why = ("is missing (written by an older patchc?)" if err["type"] == "missing"
               else f"is not valid: {err['msg']}")
        raise PatchcError("E604", f"{Path(out_dir) / 'manifest.json'}: `{field}` {why}"
                          ) from None
