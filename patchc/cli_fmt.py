"""`patchc fmt SPEC|DIR ... [--check | --stdout]`: rewrite specs in the one canonical layout
(compiler/fmt.py), comments kept; `--check` prints a unified diff of what would change."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path

from patchc.cli_common import EXIT_OK, EXIT_USER, UsageError


def cmd_fmt(args: argparse.Namespace) -> int:
    """Format each spec named, and every `*.patch` under each folder named."""
    from patchc.compiler.errors import PatchcError

    status = EXIT_OK
    paths = _spec_files(args.spec)
    for path in paths:
        try:
            status = max(status, _fmt_one(path, args.check, args.stdout))
        except PatchcError as e:
            if len(paths) == 1:
                raise
            # (one spec that does not parse is left as it is; the others are still formatted)
            print(e.render(), file=sys.stderr)
            print(f"{path}: not formatted (the error above)", file=sys.stderr)
            status = EXIT_USER
    return status


def _spec_files(names: list[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.patch") if p.is_file())
            if not found:
                raise UsageError(f"patchc fmt: error: no .patch files under {path}")
            paths += found
        else:
            paths.append(path)
    return paths


def _fmt_one(path: Path, check: bool, stdout: bool) -> int:
    import difflib

    from patchc.compiler.dump import strip_spans
    from patchc.compiler.fmt import format_source, name_tables
    from patchc.compiler.parse import parse, parse_file

    # parse_file raises the located E001/E002 for a missing or non-UTF-8 file; the text that
    # is formatted is the text that was parsed (read once), and nothing is written unless it
    # parsed: a syntax error leaves the file as it was.
    spec = parse_file(path)
    original = spec.source.text
    formatted = format_source(spec)
    # A formatter bug must not cost the user their spec: check that the output means the same
    # and is a fixed point before writing it (an internal error, exit 2, if not).
    again = parse(formatted, str(path), str(path.parent))
    same = strip_spans(name_tables(again)) == strip_spans(name_tables(spec))
    if not same or format_source(again) != formatted:
        raise RuntimeError(f"fmt would change the meaning of {path} or is not idempotent")
    if check:
        if formatted != original:
            sys.stdout.writelines(difflib.unified_diff(
                original.splitlines(keepends=True), formatted.splitlines(keepends=True),
                f"{path}", f"{path} (formatted)"))
            print(f"{path}: would be reformatted", file=sys.stderr)
            return EXIT_USER
        print(f"{path}: already formatted")
        return EXIT_OK
    if stdout:
        sys.stdout.write(formatted)
        return EXIT_OK
    if formatted == original:
        print(f"{path}: already formatted")
        return EXIT_OK
    try:
        _atomic_write(path, formatted)
    except OSError as e:
        print(f"{path}: error: cannot write the formatted spec: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_USER
    print(f"{path}: formatted")
    return EXIT_OK


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename it over the spec, so that a
    failure never leaves a half-written spec. The rename goes to the symlink's target (a
    link stays a link) and the new file keeps the old one's permission bits (mkstemp makes
    0600 files)."""
    target = path.resolve()
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# run() parameters that have their own flag: `--set` must not reach them as options.
