"""The repository stands on its own: no file points at documents outside it.

The language reference is docs/language.md and the architecture docs/architecture.md; a clone
must not send a reader to a path that only exists on the machine the project was written on.
The forbidden spellings are built from parts so that this file does not match itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = (
    "../" + "shared",
    "shared/" + "LANGUAGE",
    "shared/" + "DESIGN",
    "LANGUAGE" + ".md",  # the outside reference's file names, however they are reached
    "DESIGN" + ".md",
)
SKIP_DIRS = {".git", ".venv", "out", "__pycache__", "build", "dist", "node_modules"}


def repo_files() -> list[Path]:
    """Every file git tracks or would track (untracked but not ignored), else a walk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file()
                and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in p.parts)]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        return None  # model weights, pictures
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in repo_files()}
    assert {"README.md", "docs/language.md", "docs/architecture.md", "grammar/patch.lark"} <= names


def test_nothing_points_outside_the_repository():
    hits = []
    for path in repo_files():
        text = text_of(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {bad}" for bad in FORBIDDEN if bad in line]
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_markdown_links_resolve():
    """Every relative link of the docs and READMEs names a file of the repository."""
    import re

    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for md in [ROOT / "README.md", ROOT / "examples" / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in link.findall(md.read_text("utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
