"""`set device_map`: how a model too big for one device is spread over several.

The value is one of accelerate's strategies (`auto`, `balanced`, `balanced_low_0`,
`sequential`: accelerate places the modules) or a `.json` file that names the placement
itself: `{"transformer.h.0": 0, "transformer.h.1": "cpu", "lm_head": "disk"}` (module name ->
GPU index, `cuda:N`, `mps`, `cpu` or `disk`; the last two are offloaded and computed on the
first GPU, or on the CPU when there is none). Kept free of torch so `patchc check` can read
and validate a map file without loading anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_PLACE = re.compile(r"cpu|disk|mps|cuda(:\d+)?")


def valid_value(value: Any) -> str | None:
    """Why `value` cannot be a device_map (None if it can). A dict is an explicit map."""
    if isinstance(value, dict):
        return valid_map(value)
    if not isinstance(value, str) or (value not in STRATEGIES and not value.endswith(".json")):
        return f"device_map must be {', '.join(STRATEGIES)} or a .json file"
    return None


def valid_map(mapping: Any) -> str | None:
    if not isinstance(mapping, dict) or not mapping:
        return "a device map is a non-empty JSON object of module name -> device"
    for name, place in mapping.items():
        ok = (isinstance(place, int) and not isinstance(place, bool) and place >= 0) or \
            (isinstance(place, str) and _PLACE.fullmatch(place))
        if not isinstance(name, str) or not ok:
            return (f"{name!r}: {place!r} is not a device (a GPU index, cuda:N, mps, cpu or "
                    "disk)")
    return None


def read_map(path: str | Path) -> dict[str, int | str]:
    """The map in a .json file; ValueError says what is wrong with it."""
    try:
        mapping = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"device map file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"device map file {str(path)!r} is not JSON: {e}") from None
    problem = valid_map(mapping)
    if problem:
        raise ValueError(f"device map file {str(path)!r}: {problem}")
    return mapping


def resolve(value: str | dict, base_dir: str) -> str | dict[str, int | str]:
    """What to hand to transformers' `from_pretrained(device_map=...)`: a strategy as is,
    a file's map (its path relative to the spec's folder), a dict as is."""
    if isinstance(value, dict) or value in STRATEGIES:
        return value
    path = Path(value)
    return read_map(path if path.is_absolute() else Path(base_dir) / path)
