"""`patchc run SPEC [--out DIR] [--naive] [--set KEY=VALUE ...] [--workers N]
[--device-map MAP] [--threads N]`: option overrides from the command line, the progress bar,
printing the tables and writing the result folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from patchc.compiler.checked import MAX_THREADS
from patchc.cli_common import EXIT_OK, UsageError


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
            raise UsageError(f"patchc run: error: --set takes KEY=VALUE, got {pair!r}")
        flag = f"patchc run: error: --set {key}={value}"
        if key in _RUN_FLAGS:
            raise UsageError(f"{flag}: `{key}` is not a `set` option; use "
                              f"{_RUN_FLAGS[key]}")
        if key not in Options.model_fields:
            raise UsageError(f"{flag}: no such option (options are "
                              f"{', '.join(Options.model_fields)})")
        parsed: object = int(value) if value.lstrip("-").isdigit() else value
        try:
            Options(**{key: parsed})
        except ValidationError as e:
            why = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise UsageError(f"{flag}: {why}") from None
        out[key] = parsed
    return out


def _check_placement(overrides: dict[str, object]) -> None:
    """A `--set device=cuda` without CUDA, or a device map that cannot be read, is the
    flag's mistake: say so before the model loads."""
    import torch

    device = overrides.get("device")
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"patchc run: error: --set device={device}: no CUDA device is "
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
            raise UsageError(f"patchc run: error: --device-map {dm}: {e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from patchc.workers import launched_by_torchrun

    overrides = _overrides(args.set or [])
    if args.device_map:
        overrides["device_map"] = args.device_map
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise UsageError(f"patchc run: error: --threads must be from 1 to {MAX_THREADS}, "
                             f"got {args.threads}")
        overrides["threads"] = args.threads
    dm = overrides.get("device_map")
    if isinstance(dm, str) and dm.endswith(".json"):  # named on the command line: from the cwd
        overrides["device_map"] = str(Path(dm).resolve())
    _check_placement(overrides)
    workers: int | str = "torchrun" if launched_by_torchrun() else args.workers
    if workers == "torchrun" and os.environ.get("RANK", "0") != "0":
        args.quiet = True  # one progress bar: rank 0's
    if workers != "torchrun" and workers < 1:
        raise UsageError(f"patchc run: error: --workers must be at least 1, got {workers}")
    if args.rows < 0:
        raise UsageError(f"patchc run: error: --rows must be 0 or more, got {args.rows}")
    if args.out is not None and not args.out.strip():
        raise UsageError("patchc run: error: --out needs a folder name")
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


def progress_bar(quiet: bool, console=None):
    """The run's progress bar: forward passes done of the plan's total, elapsed time and
    the estimated time left. It is drawn as soon as it starts (before the model loads); the
    total arrives when the plan is made (the executor reports 0 done first)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), "eta",
                    TimeRemainingColumn(), transient=True, disable=quiet, console=console)


def _run_with_bar(args: argparse.Namespace, workers: int | str, overrides: dict,
                  console=None):
    import warnings

    from patchc.api import PatchcWarning, run

    with progress_bar(args.quiet, console) as bar:
        task = bar.add_task("forward passes", total=None)
        bar.refresh()  # drawn now, not at the first tick

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
        if df.columns.empty:  # its measures are all text(N): strings per example only
            print(f"== {name}: text per example ({seconds:.2f} s)")
            if args.rows:
                print(results.per_example(name).head(args.rows).to_string(index=False))
            continue
        print(f"== {name}: {len(df)} rows ({seconds:.2f} s)")
        if args.rows:  # (--rows 0: the counts alone)
            print(df.head(args.rows).to_string(index=False))
        if args.rows and len(df) > args.rows:
            print(f"... {len(df) - args.rows} more rows")
        from patchc.plot_style import baseline_label, unpatched_label

        for col, b in results.baselines(name).items():
            print(f"   {col} normalized: {baseline_label(b)}")
        unpatched, left_out = results.unpatched(name), results.left_out(name)
        for col, run in left_out.items():
            # (the plan leaves out a forward run for that value alone: docs/reading.md)
            known = f"{unpatched_label(col, unpatched[col])}; " if col in unpatched else ""
            print(f"   {col} unpatched: {known}the value on {run} as it is was left out (a "
                  f"model pass of its own): `measure {col} in {run}` adds it")
        for col, u in unpatched.items():
            if col not in left_out:
                print(f"   {col} unpatched: {unpatched_label(col, u)}")
    plan = results.manifest.get("plan", {})
    if "sparse_skipped" in plan:  # latent sweeps (runtime/sparse.py)
        print(f"sparse latent sweeps: {plan['sparse_skipped']} experiments on inactive latents "
              f"cost no forward; the active ones took {plan['sparse_passes']} pass(es)")
    if args.out:
        from patchc.outputs import earlier_spec, save_result

        before = earlier_spec(args.out)
        written = save_result(results, args.out, force=args.force, plots=not args.no_plots,
                              lock=lock)
        print(f"wrote {', '.join(str(p) for p in written)}")
        if before is not None and before != results.manifest.get("spec_file"):
            print(f"patchc: note: this replaced the result of {before} that was in {args.out}",
                  file=sys.stderr)
