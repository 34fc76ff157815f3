"""The manifest of a run (LANGUAGE.md §9): what a paper cites so that others can rerun it.

A pydantic model, because it crosses a file boundary: `patchc run --out DIR` writes it as
DIR/manifest.json and `patchc verify DIR` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Manifest(BaseModel):
    spec_text: str
    spec_sha256: str
    spec_file: str
    model_id: str
    revision: str | None
    weights_sha256: str
    versions: dict[str, str]
    device: str  # where inputs went (with a device map: the embedding's device)
    device_map: dict[str, Any] | None = None  # module -> device, as accelerate placed it
    workers: int = 1  # processes the plan was sharded over (`--workers`)
    dtype: str
    seed: int
    options: dict[str, Any]
    tables: dict[str, dict[str, Any]]  # name -> {rows, columns, seconds}
    plan: dict[str, Any]  # pass counts: forwards, backwards, ...
    interpreter: str  # "naive" or "optimized"
    total_seconds: float
    # Seconds per phase (load, plan, execute, assemble), in model passes (model), and the
    # overhead: everything but the load and the model passes (patchc/runner.py Clock).
    timings: dict[str, float] = {}
    threads: int | None = None  # CPU threads torch computed with (`set threads`)


def versions() -> dict[str, str]:
    import torch
    import transformers

    import patchc

    out = {"patchc": patchc.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version()}
    try:  # only needed for `set device_map`
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(out_dir: "str | Path") -> dict[str, Any]:
    """DIR/manifest.json of a `patchc run --out DIR` folder (E601 if there is none)."""
    from patchc.compiler.errors import PatchcError

    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise PatchcError("E601", f"{out_dir} has no manifest.json (is it a `patchc run "
                          "--out` folder?)")
    return json.loads(path.read_text("utf-8"))
