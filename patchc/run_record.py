"""What a run actually ran, for its manifest: the spec's file and folder as absolute paths (so
`patchc verify` works from any working directory), the model that computed the tables, its
weights' hash and its tokenizer's hash.

A caller of `patchc.run(spec, model=m)` may pass another model than the spec's `model` line
names: the manifest then records `m` (its name or path; the weights hash pins it exactly) and
the run warns (W471), since a rerun of the spec would load the other one.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchc.compiler import ast as A
from patchc.compiler.errors import PatchcError, Warning_
from patchc.manifest import tokenizer_hash


@dataclass
class Ran:
    spec_file: str
    spec_dir: str
    model_path: str
    tokenizer_sha256: str
    warnings: list[PatchcError] = field(default_factory=list)


def _where(model_id: str, base_dir: str) -> str:
    """A local folder (absolute, relative ones from `base_dir`) or the hub id as given."""
    path = Path(base_dir) / os.path.expanduser(model_id)
    return str(path.resolve()) if path.is_dir() else model_id


def _model_name(model: Any) -> str:
    name = getattr(model, "name_or_path", None)
    if not name:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else ""


def what_ran(spec: A.Spec, decl: A.ModelDecl, model: Any, tokenizer: Any, given: bool,
             dtype: str = "float32") -> Ran:
    """What ran, and its warnings about the model passed in (`given`): another model than
    the spec names (W471), or a dtype the spec or an option asked for that a passed-in model
    does not have (W476: patchc never converts the caller's model; `dtype` is the option)."""
    src = spec.source
    spec_dir = str(Path(src.base_dir).resolve())
    spec_file = src.filename if src.filename.startswith("<") else \
        str(Path(src.filename).resolve())
    named = _where(decl.model_id, src.base_dir)
    ran = Ran(spec_file, spec_dir, named, tokenizer_hash(tokenizer))
    if not given:
        return ran
    name = _model_name(model)
    # HF keeps the path given to from_pretrained (relative to the cwd of that call).
    cwd = os.getcwd()
    passed = named if name == decl.model_id and cwd == src.base_dir else \
        _where(name, cwd) if name else ""  # (the spec's own name and folder: found above)
    ran.model_path = passed or "(a model object without a name)"
    _dtype_warning(ran, spec, model, dtype)
    if passed and passed != named:
        ran.warnings.append(Warning_(
            "W471", f"the spec names model {decl.model_id!r} but the model passed in is "
            f"{name!r}; the manifest records the one that ran (and its weights hash)",
            decl.span, src, hint="a rerun of this spec (`patchc verify`) loads the spec's "
            "model: make the `model` line name the one you pass"))
    return ran


def _dtype_warning(ran: Ran, spec: A.Spec, model: Any, dtype: str) -> None:
    """W476 when `set dtype` (or an option other than the default) asked for a dtype the
    model passed in does not have."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if param is None:
        return
    has = str(param.dtype).removeprefix("torch.")
    setting = next((s for s in spec.statements
                    if isinstance(s, A.SetDecl) and s.name.value == "dtype"), None)
    if has == dtype or (setting is None and dtype == "float32"):
        return
    if setting is not None and str(setting.value) != dtype:
        setting = None  # an option gave the dtype, not this statement: no place to point at
    ran.warnings.append(Warning_(
        "W476", f"dtype {dtype} was asked for, but the model passed in is {has} and ran in "
        f"{has} (patchc does not convert a model it is given); the manifest records {has}",
        setting.span if setting is not None else None, spec.source,
        hint=f"convert it before passing it (model.to(torch.{dtype})), or drop the setting"))


_HASHES: "weakref.WeakKeyDictionary[Any, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def weights_hash(model: Any) -> str:
    """runtime.loading.weights_hash, remembered per model object while no tensor of it has
    changed (same storage, same version counter): hashing every weight costs more than a
    fast sweep of a small model, and a notebook runs many specs on one loaded model. An
    edit through `.data` or a NumPy view bypasses the version counter and is not seen."""
    from patchc.runtime import loading

    stamp = _stamp(model)
    cached = _HASHES.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = loading.weights_hash(model)
    _HASHES[model] = (stamp, digest)
    return digest


def _stamp(model: Any) -> tuple:
    """Every parameter and buffer of the model (its state dict's tensors, and any
    non-persistent buffers), module by module: name, storage, version counter, dtype and
    shape. Any change to a tensor in place, or of which tensor a module holds, changes it.
    Read from the modules' own tables (state_dict builds prefixed names through hooks: half
    again as long)."""
    return tuple((name, t.data_ptr(), t._version, t.dtype, t.shape)
                 for module in model.modules()
                 for table in (module._parameters, module._buffers)
                 for name, t in table.items() if t is not None)
