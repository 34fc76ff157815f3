"""Files a spec names (model folder, data, vectors, dictionaries): how a missing one is shown.

A relative path resolves against the spec's folder, so `data d = "../x.jsonl"` in
`e.patch` is `./../x.jsonl`; the messages show it normalized (`../x.jsonl`), and when the
folder holds a name close to the missing one (a typo), the hint proposes it as the spec
would write it.
"""

from __future__ import annotations

import difflib
import os


def shown(path: str) -> str:
    """A path as a message shows it: normalized (`./../x` -> `../x`)."""
    return os.path.normpath(path)


def near(written: str, resolved: str, base_dir: str | None = None) -> str | None:
    """`did you mean "data/ioi.jsonl"?` when the folder of `resolved` (the missing path)
    holds a close name; `written` is the path as the spec has it. With the spec's folder
    `base_dir`: when `written` names something from the working directory instead (paths
    written from the repository root in a spec kept in a subfolder), the path to write."""
    if base_dir is not None and not os.path.isabs(written) and os.path.exists(written) \
            and os.path.realpath(base_dir) != os.path.realpath("."):
        fixed = os.path.relpath(os.path.abspath(written), os.path.abspath(base_dir))
        return (f'relative paths resolve against the spec\'s folder, not the working '
                f'directory: write "{fixed}"')
    folder, name = os.path.split(os.path.normpath(resolved))
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    if not close or close[0] == name:  # (the name is there: a folder, not a regular file)
        return None
    head = os.path.dirname(written.rstrip("/"))
    return f'did you mean "{os.path.join(head, close[0]) if head else close[0]}"?'
