"""The `patchc` command line: check, compile, fmt, run.

    patchc check SPEC                              warnings, then one `ok` line
    patchc run SPEC [--out DIR] [--naive] [--set KEY=VALUE ...]
                    [--workers N] [--device-map MAP]   (docs/scaling.md; also under torchrun)
    patchc compile SPEC --emit ast|ir|json|plan|dot [--optimized] [--workers N]
    patchc fmt SPEC|DIR ... [--check | --stdout]   canonical layout, comments kept
    patchc sites MODEL [--json]                    a model's sites and shapes (config only)
    patchc --version

Exit codes: 0 ok, 1 a mistake in the spec, its inputs or the command line (printed as located
diagnostics, never a traceback), 2 an internal error (a bug in patchc: one line and a hint;
PATCHC_DEBUG=1 prints the traceback). `check`, `compile`, `fmt` and `sites` never import torch, so
they start fast and run anywhere; `run` loads the model.

This module holds the parser and the small commands; `run` is in cli_run.py, `fmt` in
cli_fmt.py, what they share (exit codes, the usage error) in cli_common.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

from patchc import __version__
from patchc.cli_common import EXIT_INTERNAL, EXIT_OK, EXIT_USER, Parser, UsageError, print_warnings
from patchc.cli_fmt import cmd_fmt
from patchc.cli_run import cmd_run
from patchc.compiler.errors import PatchcError

def cmd_check(args: argparse.Namespace) -> int:
    from patchc.api import compile as compile_spec

    program = compile_spec(args.spec)
    _check_budget(program)
    print_warnings(program)
    counts = program.experiments
    total = sum(counts.values())
    tables = ", ".join(f"{name} ({n} rows)" for name, n in counts.items()) or "no tables"
    n_warn = len(program.warnings)
    # The warnings go with `ok`, not in front of the list of tables (`1 warning: op_6` read
    # as if op_6 were the warning).
    warned = f" ({n_warn} warning{'s' * (n_warn != 1)} above)" if n_warn else ""
    print(f"{args.spec}: ok{warned}: {len(counts)} table(s), {total} experiment(s): {tables}")
    print(cost_line(program))
    return EXIT_OK


def _check_budget(program) -> None:
    """`set memory` that even one experiment per pass cannot fit: E422 (compiler/budget.py)."""
    from patchc.compiler.budget import check_budget
    from patchc.compiler.schedule import run_shapes

    checked = program.checked
    dtype_bytes = 2 if checked.options.dtype in ("bfloat16", "float16") else 4
    check_budget(checked, program.optimized, run_shapes(checked), dtype_bytes)


# What a run's FLOPs are divided by to guess its time: a CPU's rate as measured on a 2-core
# machine (compiler/costs.py), one mid-range GPU's as assumed (not measured). Rough: it tells
# a one-minute run from a one-day run, no more.
ASSUMED_GPU_FLOPS_PER_SECOND = 1e13
LONG_RUN_SECONDS = 60.0


def cost_line(program, long_seconds: float | None = None) -> str:
    """One line for `check`: experiments, model passes (and the naive count), FLOPs and an
    estimated time (compiler/costs.py through the schedule, plus the overhead per run, node
    and model pass),
    starting `note: a long run:` when that is a minute or more."""
    from patchc.compiler.costs import ASSUMED_FLOPS_PER_SECOND, overhead_seconds
    from patchc.compiler.pipeline import PASSES
    from patchc.compiler.schedule import run_shapes, schedule

    checked = program.checked
    dtype_bytes = 2 if checked.options.dtype in ("bfloat16", "float16") else 4
    plan = schedule(program.optimized, checked.model, run_shapes(checked), None,
                    checked.options.batch_size, dtype_bytes,
                    passes=tuple(p.__name__ for p in PASSES))
    o = plan.optimized
    where = "cpu" if checked.options.device == "cpu" else "gpu"
    rate = ASSUMED_FLOPS_PER_SECOND if where == "cpu" else ASSUMED_GPU_FLOPS_PER_SECOND
    seconds = o.flops / rate + overhead_seconds(program.ir.g.number_of_nodes(), o.forwards)
    long = seconds >= (LONG_RUN_SECONDS if long_seconds is None else long_seconds)
    return (f"{'note: a long run' if long else 'cost'}: "
            f"{sum(program.experiments.values())} experiment(s) in {o.forwards} model "
            f"pass(es), {o.flops:.3g} FLOPs: about {_duration(seconds)} at "
            f"{rate:.0e} FLOP/s on {where} "
            "(`patchc compile --emit plan` shows the plan)")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def cmd_compile(args: argparse.Namespace) -> int:
    from patchc.compiler import dump

    if args.emit == "ast":
        from patchc.api import load_spec

        if args.optimized:
            raise UsageError("patchc compile: error: --optimized applies to --emit ir, json "
                             "or dot (a plan is always of the optimized graph)")
        print(dump.dump_ast(load_spec(args.spec)), end="")
        return EXIT_OK
    from patchc.api import compile as compile_spec

    if args.workers != 1 and args.emit != "plan":
        raise UsageError("patchc compile: error: --workers applies to --emit plan")
    if args.workers < 1:
        raise UsageError(f"patchc compile: error: --workers must be at least 1, got "
                          f"{args.workers}")
    program = compile_spec(args.spec)
    print_warnings(program)
    graph = program.optimized if args.optimized else program.ir
    if args.emit == "ir":
        print(dump.dump_ir(graph), end="")
    elif args.emit == "plan":  # the optimized graph's schedule beside the naive plan's
        from patchc.compiler.dump_plan import emit_plan

        print(emit_plan(program.checked, program.ir, program.optimized,
                        workers=args.workers), end="")
    elif args.emit == "dot":
        from patchc.compiler.dump_plan import ir_dot

        print(ir_dot(graph), end="")
    else:
        from patchc.compiler.ir_json import ir_to_json

        print(ir_to_json(graph))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    import math

    from patchc.manifest import read_manifest
    from patchc.verify import tolerance_line, verdict, verify_dir

    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if not (math.isfinite(value) and value >= 0):  # -1 or nan would match nothing
            raise UsageError(f"patchc verify: error: {flag} must be a number >= 0, got {value}")
    read_manifest(args.dir)  # a folder that is no result (E601, E604): before the report
    print(tolerance_line(args.atol, args.rtol), flush=True)
    result = verify_dir(args.dir, atol=args.atol, rtol=args.rtol, spec_dir=args.spec_dir,
                        echo=lambda line: print(line, flush=True))
    print(verdict(result))
    return EXIT_OK if result.ok else EXIT_USER


def cmd_plot(args: argparse.Namespace) -> int:
    from patchc.outputs import redraw_plots

    written = redraw_plots(args.dir)
    print(f"wrote {', '.join(str(p) for p in written)}" if written else "nothing to plot")
    return EXIT_OK


def cmd_sites(args: argparse.Namespace) -> int:
    from patchc import sitelist
    from patchc.compiler.errors import CheckError

    try:
        model = sitelist.load(args.model, args.revision)
    except CheckError as e:  # no spec to point into: name the model instead
        hint = f"\n  hint: {e.hint}" if e.hint else ""
        print(f"{args.model}: error[{e.code}]: {e.message}{hint}", file=sys.stderr)
        return EXIT_USER
    if args.json:
        import json

        print(json.dumps(sitelist.as_json(args.model, model), indent=2))
    else:
        print(sitelist.render(args.model, model), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="patchc", description="Check, compile and format .patch intervention specs.")
    parser.add_argument("--version", action="version", version=f"patchc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("check", help="parse and check a spec against the model's shape")
    p.add_argument("spec")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("compile", help="print the AST, the IR or its JSON form")
    p.add_argument("spec")
    p.add_argument("--emit", choices=["ast", "ir", "json", "plan", "dot"], default="ir")
    p.add_argument("--optimized", action="store_true", help="emit the IR after the passes")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="with --emit plan: show how the plan divides over N workers")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a spec on its model and print/write its tables")
    p.add_argument("spec")
    p.add_argument("--out", help="write NAME.csv per table and manifest.json here")
    p.add_argument("--naive", action="store_true",
                   help="use the reference interpreter (one forward per experiment)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a `set` option (dtype, device, seed, batch_size, memory, "
                   "device_map, threads)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own code from the hub (never taken from a spec)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="shard the plan's passes over N processes (docs/scaling.md); under "
                   "torchrun the processes torchrun started are used")
    p.add_argument("--device-map", metavar="MAP",
                   help="spread the model over devices: auto, balanced, balanced_low_0, "
                   "sequential or a .json map (as `set device_map`)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (as `set threads`; default: chosen from the "
                   "machine and the model's size)")
    p.add_argument("--rows", type=int, default=20, help="rows of each table to print")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that holds other files (they are kept; "
                   "same-named ones are replaced)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="rerun the spec of a result folder and compare tables")
    p.add_argument("dir")
    p.add_argument("--atol", type=float, default=0.0,
                   help="absolute tolerance (default 0: a rerun on the same machine is exact)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    p.add_argument("--spec-dir", help="where the spec's relative paths resolve (default: "
                   "the recorded spec file's folder)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("plot", help="redraw the plots of a `patchc run --out` folder")
    p.add_argument("dir")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("sites", help="list a model's sites and shapes (from its config only)")
    p.add_argument("model", help="a local model directory or a hub id")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser("fmt", help="rewrite specs in the one canonical layout")
    p.add_argument("spec", nargs="+", help="spec files, or folders (every *.patch under them)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true",
                   help="print a diff of what would change; exit 1 if a file is not formatted")
    g.add_argument("--stdout", action="store_true", help="print instead of rewriting")
    p.set_defaults(func=cmd_fmt)
    return parser


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except PatchcError as e:
        print(e.render(), file=sys.stderr)
        n = len(e.errors)
        if n > 1:
            print(f"{n} errors", file=sys.stderr)
        return EXIT_USER
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130  # the shell's convention for SIGINT
    except BrokenPipeError:
        # `patchc compile ... | head`: the reader left. Not an error; silence the flush at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except OSError as e:
        # A file the user named cannot be read or written (a folder, no permission): their
        # environment, not a bug in patchc.
        where = f"{e.filename}: " if e.filename else ""
        print(f"patchc: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # a bug in patchc, not in the spec
        if os.environ.get("PATCHC_DEBUG"):
            traceback.print_exc()
        first = (str(e).splitlines() or [""])[0]
        print(f"patchc: internal error: {type(e).__name__}: {first}\n"
              "  hint: this is a bug in patchc; rerun with PATCHC_DEBUG=1 for the traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also for --help, --version and usage
    errors, so that tests can call it in-process)."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # (said by the command's own parser: its usage, not the top level's)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USER
    except SystemExit as e:  # --help and --version print, then exit 0
        return e.code if isinstance(e.code, int) else EXIT_OK
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
