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
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, NoReturn

from patchc import __version__
from patchc.compiler.errors import PatchcError

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 2


class _UsageError(Exception):
    """A bad command line: a user error (exit 1), not argparse's default exit 2, which this
    CLI keeps for internal errors."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


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
    n_warn = len(program.warnings)
    warned = f", {n_warn} warning{'s' * (n_warn != 1)}" if n_warn else ""
    print(f"{args.spec}: ok: {len(counts)} table(s), {total} experiment(s){warned}: {tables}")
    note = long_run_note(program)
    if note:
        print(note)
    return EXIT_OK


# What a run's FLOPs are divided by to guess its time: a few CPU cores, one mid-range GPU.
# Deliberately rough: it tells a one-minute run from a one-day run, no more.
ASSUMED_FLOPS = {"cpu": 1e10, "gpu": 1e13}
LONG_RUN_SECONDS = 60.0


def long_run_note(program, min_seconds: float | None = None) -> str | None:
    """One line for `check` when the run will be long: experiments, model passes, FLOPs and
    an estimated time (compiler/costs.py through the schedule); None for a short run."""
    from patchc.compiler.pipeline import PASSES
    from patchc.compiler.schedule import run_shapes, schedule

    checked = program.checked
    dtype_bytes = 2 if checked.options.dtype in ("bfloat16", "float16") else 4
    plan = schedule(program.optimized, checked.model, run_shapes(checked), None,
                    checked.options.batch_size, dtype_bytes,
                    passes=tuple(p.__name__ for p in PASSES))
    o = plan.optimized
    where = "cpu" if checked.options.device == "cpu" else "gpu"
    seconds = o.flops / ASSUMED_FLOPS[where]
    if seconds < (LONG_RUN_SECONDS if min_seconds is None else min_seconds):
        return None
    return (f"note: a long run: {sum(program.experiments.values())} experiment(s) in "
            f"{o.forwards} model pass(es), {o.flops:.3g} FLOPs: about {_duration(seconds)} at "
            f"{ASSUMED_FLOPS[where]:.0e} FLOP/s on {where} "
            "(`patchc compile --emit plan` shows the plan)")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def cmd_compile(args: argparse.Namespace) -> int:
    from patchc.compiler import dump

    if args.emit == "ast":
        from patchc.api import load_spec

        if args.optimized:
            raise _UsageError("patchc compile: error: --optimized applies to --emit ir|json")
        print(dump.dump_ast(load_spec(args.spec)), end="")
        return EXIT_OK
    from patchc.api import compile as compile_spec

    if args.workers != 1 and args.emit != "plan":
        raise _UsageError("patchc compile: error: --workers applies to --emit plan")
    if args.workers < 1:
        raise _UsageError(f"patchc compile: error: --workers must be at least 1, got "
                          f"{args.workers}")
    program = compile_spec(args.spec)
    _print_warnings(program)
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


def cmd_fmt(args: argparse.Namespace) -> int:
    """Format each spec named, and every `*.patch` under each folder named."""
    status = EXIT_OK
    for path in _spec_files(args.spec):
        status = max(status, _fmt_one(path, args.check, args.stdout))
    return status


def _spec_files(names: list[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.patch") if p.is_file())
            if not found:
                raise _UsageError(f"patchc fmt: error: no .patch files under {path}")
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
_RUN_FLAGS = {"naive": "--naive", "workers": "--workers N", "progress": "--quiet",
              "trust_remote_code": "--trust-remote-code", "model": "the spec's `model` line",
              "tokenizer": "the spec's `model` line", "path_or_source": "the SPEC argument"}


def _overrides(pairs: list[str]) -> dict[str, object]:
    """`--set dtype=bfloat16 --set seed=3` -> {"dtype": "bfloat16", "seed": 3}, each
    validated here, so that a bad one is reported as the flag it is (not as line 1 of the
    spec) before anything loads."""
    from pydantic import ValidationError

    from patchc.compiler.checked import Options

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise _UsageError(f"patchc run: error: --set takes KEY=VALUE, got {pair!r}")
        flag = f"patchc run: error: --set {key}={value}"
        if key in _RUN_FLAGS:
            raise _UsageError(f"{flag}: `{key}` is not a `set` option; use "
                              f"{_RUN_FLAGS[key]}")
        if key not in Options.model_fields:
            raise _UsageError(f"{flag}: no such option (options are "
                              f"{', '.join(Options.model_fields)})")
        parsed: object = int(value) if value.lstrip("-").isdigit() else value
        try:
            Options(**{key: parsed})
        except ValidationError as e:
            why = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise _UsageError(f"{flag}: {why}") from None
        out[key] = parsed
    return out


def _check_placement(overrides: dict[str, object]) -> None:
    """A `--set device=cuda` without CUDA, or a device map that cannot be read, is the
    flag's mistake: say so before the model loads."""
    import torch

    device = overrides.get("device")
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise _UsageError(f"patchc run: error: --set device={device}: no CUDA device is "
                          "available (use cpu or auto)")
    dm = overrides.get("device_map")
    if isinstance(dm, str):
        from patchc.compiler import device_map

        try:
            problem = device_map.valid_value(dm)
            if problem:
                raise ValueError(problem)
            device_map.resolve(dm, os.getcwd())
        except ValueError as e:
            raise _UsageError(f"patchc run: error: --device-map {dm}: {e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from patchc.workers import launched_by_torchrun

    overrides = _overrides(args.set or [])
    if args.device_map:
        overrides["device_map"] = args.device_map
    if args.threads is not None:
        if args.threads < 1:
            raise _UsageError(f"patchc run: error: --threads must be at least 1, got "
                              f"{args.threads}")
        overrides["threads"] = args.threads
    dm = overrides.get("device_map")
    if isinstance(dm, str) and dm.endswith(".json"):  # named on the command line: from the cwd
        overrides["device_map"] = str(Path(dm).resolve())
    _check_placement(overrides)
    workers: int | str = "torchrun" if launched_by_torchrun() else args.workers
    if workers == "torchrun" and os.environ.get("RANK", "0") != "0":
        args.quiet = True  # one progress bar: rank 0's
    if workers != "torchrun" and workers < 1:
        raise _UsageError(f"patchc run: error: --workers must be at least 1, got {workers}")
    lock = None
    if args.out and os.environ.get("RANK", "0") == "0":  # only rank 0 writes
        from patchc.outputs import OutputLock, check_out

        # A bad --out fails before anything is computed; the lock is held until the new
        # result is in place, so a second run into the same folder is refused at once.
        lock = OutputLock(check_out(args.out, args.force)).acquire()
    try:
        results = _run_with_bar(args, workers, overrides)
        if results is not None:
            _report(results, args, lock)
    finally:
        if lock is not None:
            lock.release()
    if workers == "torchrun":
        # torch.distributed's C++ threads can abort the interpreter's teardown
        # (std::terminate), and torchrun then reports a failed worker. Everything is written
        # and flushed: leave without the teardown, as multiprocessing's workers do.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_OK)
    return EXIT_OK


def _run_with_bar(args: argparse.Namespace, workers: int | str, overrides: dict):
    import warnings

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from patchc.api import PatchcWarning, run

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, disable=args.quiet,
                  console=None) as bar:
        task = bar.add_task("forward passes", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with warnings.catch_warnings():  # printed below as diagnostics, once
            warnings.simplefilter("ignore", PatchcWarning)
            return run(args.spec, naive=args.naive, trust_remote_code=args.trust_remote_code,
                       progress=progress, workers=workers, **overrides)


def _report(results, args: argparse.Namespace, lock=None) -> None:
    """Print the warnings and each table's head; with --out, write the result folder."""
    for w in results.warnings:
        print(w.render(), file=sys.stderr)
    for name, df in results.tables.items():
        seconds = results.manifest["tables"][name]["seconds"]
        print(f"== {name}: {len(df)} rows ({seconds:.2f} s)")
        print(df.head(args.rows).to_string(index=False))
        if len(df) > args.rows:
            print(f"... {len(df) - args.rows} more rows")
        from patchc.plot_style import baseline_label

        for col, b in results.baselines(name).items():
            print(f"   {col} normalized: {baseline_label(b)}")
    if args.out:
        from patchc.outputs import save_result

        written = save_result(results, args.out, force=args.force, plots=not args.no_plots,
                              lock=lock)
        print(f"wrote {', '.join(str(p) for p in written)}")


def cmd_verify(args: argparse.Namespace) -> int:
    from patchc.verify import tolerance_line, verdict, verify_dir

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
    parser = _Parser(
        prog="patchc", description="Check, compile and format .patch intervention specs.")
    parser.add_argument("--version", action="version", version=f"patchc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    except _UsageError as e:
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
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USER
    except SystemExit as e:  # --help and --version print, then exit 0
        return e.code if isinstance(e.code, int) else EXIT_OK
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
