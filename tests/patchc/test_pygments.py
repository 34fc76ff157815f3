"""The Pygments lexer is picked by its alias `patchc` (or its class) and never takes diff
files: `*.patch` is the file name of `git format-patch`, which Pygments' DiffLexer owns."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

from pygments.lexers import (  # noqa: E402
    find_lexer_class_for_filename,
    get_lexer_by_name,
    guess_lexer,
    load_lexer_from_file,
)
from pygments.lexers.diff import DiffLexer  # noqa: E402
from pygments.token import Keyword  # noqa: E402

from patchc.pygments_lexer import PatchcLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FORMAT_PATCH = """From 3f2a1c Mon Sep 17 00:00:00 2001
From: A <a@example.com>
Subject: [PATCH] fix the thing

---
 src/x.py | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/src/x.py b/src/x.py
--- a/src/x.py
+++ b/src/x.py
@@ -1 +1 @@
-x = 1
+x = 2
"""
SPEC = (ROOT / "examples" / "ioi_heads.patch").read_text("utf-8")


def test_entry_point_is_the_alias_patchc():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert project["project"]["entry-points"]["pygments.lexers"] == {
        "patchc": "patchc.pygments_lexer:PatchcLexer"}


def test_lexer_claims_no_file_name_and_no_diff_alias():
    assert PatchcLexer.aliases == ["patchc"] and PatchcLexer.filenames == []
    assert PatchcLexer.analyse_text(FORMAT_PATCH) == 0.0
    assert PatchcLexer.analyse_text(SPEC) == 0.0  # never guessed, even for a spec


def test_diff_files_stay_diffs():
    assert find_lexer_class_for_filename("0001-fix-the-thing.patch", FORMAT_PATCH) is DiffLexer
    assert find_lexer_class_for_filename("spec.patch", SPEC) is DiffLexer  # the name is diff's
    assert not isinstance(guess_lexer(FORMAT_PATCH), PatchcLexer)
    assert isinstance(get_lexer_by_name("diff"), DiffLexer)


def test_picked_by_alias_and_by_class():
    assert isinstance(get_lexer_by_name("patchc"), PatchcLexer)  # needs patchc installed
    by_file = load_lexer_from_file(str(ROOT / "patchc" / "pygments_lexer.py"), "PatchcLexer")
    tokens = list(by_file.get_tokens(SPEC))
    assert (Keyword.Declaration, "swap") in tokens
