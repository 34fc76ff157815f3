"""The `patchc` command line: check, compile, fmt.

Exit codes: 0 ok, 1 a mistake in the spec or its inputs (printed as located diagnostics,
never a traceback), 2 an internal error (a bug in patchc: set PATCHC_DEBUG=1 for the
traceback). `check`, `compile` and `fmt` never import torch, so they start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from patchc.compiler.errors import PatchcError

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 2


def _print_warnings(program) -> None:
    for w in program.warnings:
        print(w.render(), file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from patchc.api import compile as compile_spec

    program = compile_spec(args.spec)
    _print_warnings(program)
    counts = program.experiments
    total = sum(counts.values())
    tables = ", ".join(f"{name} ({n} rows)" for name, n in counts.items()) or "no tables"
    print(f"{args.spec}: ok: {len(counts)} table(s), {total} experiment(s): {tables}")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from patchc.compiler import printer

    if args.emit == "ast":
        from patchc.api import load_spec

        print(printer.dump_ast(load_spec(args.spec)), end="")
        return EXIT_OK
    from patchc.api import compile as compile_spec

    program = compile_spec(args.spec)
    _print_warnings(program)
    graph = program.optimized if args.optimized else program.ir
    if args.emit == "ir":
        print(printer.dump_ir(graph), end="")
    else:
        from patchc.compiler.ir_json import ir_to_json

        print(ir_to_json(graph))
    return EXIT_OK


def cmd_fmt(args: argparse.Namespace) -> int:
    from patchc.api import load_spec
    from patchc.compiler.printer import format_spec

    path = Path(args.spec)
    original = path.read_text("utf-8") if path.is_file() else None
    if original is None:
        raise PatchcError("E001", f"spec file not found: {path}")
    formatted = format_spec(load_spec(path))
    if args.check:
        if formatted != original:
            print(f"{path}: would be reformatted", file=sys.stderr)
            return EXIT_USER
        return EXIT_OK
    if args.stdout:
        print(formatted, end="")
        return EXIT_OK
    if formatted != original:
        _atomic_write(path, formatted)
        print(f"{path}: formatted")
    return EXIT_OK


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure never leaves a half-written spec."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchc", description="Check, compile and run .patch intervention specs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="parse and check a spec against the model's shape")
    p.add_argument("spec")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("compile", help="print the AST, the IR or its JSON form")
    p.add_argument("spec")
    p.add_argument("--emit", choices=["ast", "ir", "json"], default="ir")
    p.add_argument("--optimized", action="store_true", help="emit the IR after the passes")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("fmt", help="rewrite a spec in the one canonical layout")
    p.add_argument("spec")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the file is not formatted")
    g.add_argument("--stdout", action="store_true", help="print instead of rewriting")
    p.set_defaults(func=cmd_fmt)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PatchcError as e:
        print(e.render(), file=sys.stderr)
        n = len(e.errors)
        if n > 1:
            print(f"{n} errors", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # a bug in patchc, not in the spec
        if os.environ.get("PATCHC_DEBUG"):
            traceback.print_exc()
        print(f"patchc: internal error: {type(e).__name__}: {e}\n"
              "This is a bug in patchc; rerun with PATCHC_DEBUG=1 for the traceback.",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
