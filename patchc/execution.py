"""How one process executes a run: load the model (or take the caller's), check the spec
against the loaded model's own shape, lower it, interpret the graph, and assemble Results +
manifest. patchc/runner.py decides how many processes run (and calls this once per process,
through patchc/workers.py when there are several).

By default the graph is optimized (compiler/pipeline.py), scheduled for the real token counts
and memory budget (compiler/schedule.py) and run by the plan interpreter (runtime/execute.py);
`naive=True` runs the unoptimized graph through the reference interpreter (runtime/naive.py).
The manifest records which one produced the tables, and the plan's pass counts.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from patchc import compile_cache
from patchc.compiler import ast as A
from patchc.compiler.check import AUTO, check, model_path_span
from patchc.compiler.check_dicts import require_weights
from patchc.compiler.checked import CheckedSpec, Options
from patchc.compiler.errors import (NO_SPAN, CheckError, PatchcError, RuntimeInterventionError,
                                    Span)
from patchc.compiler.ir import Backward, Forward, IRGraph
from patchc.compiler.ir_sweep import bound_columns
from patchc.compiler.lower import lower
from patchc.manifest import Manifest, sha256_text, versions
from patchc.observations import observe, observe_manifest
from patchc.run_record import weights_hash, what_ran
from patchc.results import Results


def _options(checked: CheckedSpec, overrides: dict[str, Any]) -> CheckedSpec:
    if not overrides:
        return checked
    try:
        options = Options(**{**checked.options.model_dump(), **overrides})
    except ValidationError as e:  # a bad override is the caller's: say which and why
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"][:1])
        why = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            why = f"no such option (options are {', '.join(Options.model_fields)})"
        raise RuntimeInterventionError(
            "E412", f"bad option override {name}={overrides.get(name)!r}: {why}") from None
    from dataclasses import replace

    return replace(checked, options=options)


def set_span(spec: A.Spec, option: str, overrides: dict[str, Any]):
    """The span of `set OPTION = ...`, or NO_SPAN when an override gave the value."""
    if option in overrides:
        return NO_SPAN
    found = [s for s in spec.statements if isinstance(s, A.SetDecl) and s.name.value == option]
    return found[0].span if found else NO_SPAN


def _model_decl(spec: A.Spec) -> A.ModelDecl:
    decl = next((s for s in spec.statements if isinstance(s, A.ModelDecl)), None)
    if decl is None:
        raise CheckError("E300", "the spec has no `model` statement", Span(1, 1, 1, 2),
                         spec.source, hint='add one line, e.g. `model "gpt2"`; with `model=` '
                         "passed too, the line names the model the manifest records and "
                         "`patchc verify` reloads")
    return decl


def run_process(spec: A.Spec, model: Any = None, tokenizer: Any = None, naive: bool = False,
                trust_remote_code: bool = False,
                progress: Callable[[int, int], None] | None = None,
                overrides: dict[str, Any] | None = None, group: Any = None,
                saes: dict[str, Any] | None = None) -> Results | None:
    """This process's part of a run. `group` is the worker group it belongs to (None: it
    runs alone); in a group only rank 0 returns Results (the others None). `saes`: SAELens
    objects for the spec's dictionaries of those names (api.run)."""
    clock = Clock()
    decl = _model_decl(spec)
    inputs = _hash_inputs(spec, overrides)
    given = model is not None  # the caller's model, not the spec's `model` line, runs
    try:
        with clock("load"):
            # One adapter for checking and running the caller's model (building one maps
            # its module tree: a millisecond of a small run, paid once).
            adapter = _adapter(model) if given else None
            checked, model, tokenizer, device = prepare(spec, model, tokenizer,
                                                        trust_remote_code, overrides, group,
                                                        saes, adapter, inputs, naive, clock)
        values, seconds, ir, plan = _evaluate(checked, model, tokenizer, naive, progress,
                                              group, clock, saes, adapter)
    except PatchcError as e:
        raise e.with_source(spec.source) from None
    if values is None:  # a worker other than rank 0: its values went to rank 0
        return None
    results = _results(spec, decl, checked, model, tokenizer, device, ir, plan, values,
                       seconds, naive, clock, group, inputs, given)
    observe(results, spec, checked, tokenizer)
    return results


class Clock:
    """Wall time per phase of a run: `load` (check the spec, load or place the model), `plan`
    (lower, optimize, schedule), `execute` (interpret the graph; `model` of it inside model
    passes), `assemble` (tables and manifest). The overhead is everything that is not a
    model pass or the load: planning, hook installation, bookkeeping, result assembly.
    `reused`: the spec's checked form and graphs were kept from a run before
    (patchc/compile_cache.py; the manifest's `compile_reused`)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.model = 0.0
        self.threads: int | None = None  # torch's CPU threads for the run
        self.sparse: dict[str, int] | None = None  # sparse latent sweeps (runtime/sparse.py)
        self.reused = False  # the spec's checked form and graphs were kept from a run before

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        phases = {k: self.seconds.get(k, 0.0) for k in ("load", "plan", "execute", "assemble")}
        overhead = phases["plan"] + phases["execute"] - self.model + phases["assemble"]
        run = overhead + self.model  # the run without the load
        return {**{k: round(v, 4) for k, v in phases.items()}, "model": round(self.model, 4),
                "overhead": round(overhead, 4),
                "overhead_share": round(overhead / run, 4) if run > 0 else 0.0,
                "total": round(total, 4)}


def _adapter(model: Any) -> Any:
    from patchc.runtime.adapters import adapter_for

    return adapter_for(model)


def prepare(spec: A.Spec, model: Any, tokenizer: Any, trust_remote_code: bool,
            overrides: dict[str, Any] | None, group: Any = None,
            saes: dict[str, Any] | None = None, adapter: Any = None,
            inputs: dict[str, str] | None = None, naive: bool = False,
            clock: Clock | None = None) -> tuple:
    """Check the spec (against the config alone: a wrong spec fails before any weight
    loads), then load the model or place the caller's: (checked, model, tokenizer, device).
    `saes`: SAELens objects whose configs stand in for their folders' cfg.json; `adapter`:
    the caller's model's adapter, when one was made already. A spec run again unchanged on
    the caller's model reuses what it was checked to (patchc/compile_cache.py; `inputs`:
    the hashes of the files it reads; `clock.reused` says so). A caller's tokenizer without
    a pad token gets its EOS (or UNK) as one."""
    from patchc.runtime.dictionaries import saelens_config
    from patchc.runtime.loading import input_device, is_dispatched, load, resolve_device

    given = dict(overrides or {})
    overrides = dict(given)
    if model is not None and (adapter is None or adapter.model is not model):
        adapter = _adapter(model)
    if model is not None and tokenizer is not None and tokenizer.pad_token_id is None:
        # (before the compile key: the tokenizer's hash holds its special tokens)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model_spec = adapter.spec() if model is not None else None
    cfgs = {name: saelens_config(sae) for name, sae in (saes or {}).items()}

    def make() -> CheckedSpec:
        made = check(spec, model_spec, tokenizer=AUTO if tokenizer is None else tokenizer,
                     dictionaries=cfgs)
        if group is not None:  # each worker on its own GPU, when there are GPUs
            overrides.update(group.placement(made.options))
        return _options(made, overrides)

    key = compile_cache.key(spec, model, tokenizer, inputs, cfgs, given, naive) \
        if group is None and inputs is not None else None
    checked, reused = compile_cache.checked_spec(key, model, tokenizer, model_spec, make,
                                                 lambda: _hash_inputs(spec, given))
    require_weights(spec, checked.model.dictionaries, set(cfgs))
    if clock is not None:
        clock.reused = reused
    options = checked.options
    if model is None:
        decl = _model_decl(spec)
        try:
            loaded = load(decl.model_id, decl.revision, options, spec.source.base_dir,
                          trust_remote_code)
        except PatchcError as e:  # a failed load points at the model's path
            if e.span == NO_SPAN:  # (no CUDA: at `set device`, unless an override asked)
                e.span = set_span(spec, "device", overrides) if e.code == "E410" else \
                    model_path_span(spec.source, decl)
            raise
        return checked, loaded.model, loaded.tokenizer, loaded.device
    if tokenizer is None:
        raise RuntimeInterventionError("E413", "pass the tokenizer with the model")
    device = input_device(model)
    if not is_dispatched(model) and (options.device != "cpu" or "device" in overrides):
        device = resolve_device(options.device)
        model = model.to(device)
    return checked, model, tokenizer, device


def _evaluate(checked: CheckedSpec, model: Any, tokenizer: Any, naive: bool,
              progress: Callable[[int, int], None] | None, group: Any = None,
              clock: Clock | None = None, saes: dict[str, Any] | None = None,
              adapter: Any = None) -> tuple:
    """Lower, optimize, schedule and run: (values, seconds per table, ir, plan). With a
    worker group, each worker runs its shard; values is None except on rank 0. torch
    computes with `set threads` CPU threads, else runtime/threads.py's choice, and on the
    CPU with runtime/host_memory.py's allocator thresholds. `adapter`: the model's, if
    prepare made one (else a new one)."""
    from patchc.runtime.threads import default_threads, using_threads

    from patchc.runtime.dictionaries import load_all
    from patchc.runtime.host_memory import keep_freed_memory
    from patchc.runtime.loading import input_device

    clock = clock or Clock()
    if adapter is None or adapter.model is not model:
        adapter = _adapter(model)
    if input_device(model).type == "cpu":  # batched CPU passes reuse freed host memory
        keep_freed_memory()
    adapter.dictionaries = load_all(checked.model.dictionaries, saes, {
        s.name.value: s.span for s in checked.spec.statements if isinstance(s, A.DictDecl)})
    threads = checked.options.threads or default_threads(adapter.d_model)
    clock.threads = threads
    with using_threads(threads):
        return _evaluate_on(checked, model, tokenizer, adapter, naive, progress, group, clock)


def _evaluate_on(checked: CheckedSpec, model: Any, tokenizer: Any, adapter: Any, naive: bool,
                 progress: Callable[[int, int], None] | None, group: Any, clock: Clock
                 ) -> tuple:
    from patchc.runtime.naive import Interpreter

    seed_torch(checked.options.seed, model)
    with clock("plan"):
        ir = compile_cache.made(checked, "lowered", lambda: lower(checked))
    if naive:
        interp = Interpreter(checked, model, tokenizer, adapter, progress)
        with clock("execute"):
            values = interp.run(ir)
        clock.model = interp.model_seconds
        return values, _table_seconds(ir, interp.node_seconds), ir, None
    from patchc.compiler.pipeline import optimize
    from patchc.runtime.execute import Executor

    interp = Executor(checked, model, tokenizer, adapter, progress)
    share = group.sharing(interp.device) if group is not None else 1
    with clock("plan"):
        optimized = compile_cache.made(checked, "optimized", lambda: optimize(ir))
        budget = interp.budget(share)
        ir, plan = compile_cache.made(
            checked, "plan", lambda: interp.prepare(optimized, share=share, budget=budget),
            what=(budget, share, interp.plan_inputs()))
    if group is None:
        with clock("execute"):
            values = interp.run(ir, plan)
        clock.model = interp.model_seconds
        clock.sparse = interp.sparse.counts()
        return values, _table_seconds(ir, interp.node_seconds), ir, plan
    plan = group.same_plan(ir, plan)
    with clock("execute"):
        gathered = group.run(interp, ir, plan)
    clock.model = interp.model_seconds  # this process's own model passes
    if gathered is None:
        return None, {}, ir, plan
    values, node_seconds = gathered
    return values, _table_seconds(ir, node_seconds), ir, plan


def seed_torch(seed: int, model: Any) -> None:
    """Seed torch's generators for a run, as torch.manual_seed does. A model wholly on the
    CPU (no device map, no accelerator started) draws only from the CPU generator, so only
    that one is seeded: torch.manual_seed also queues the seed for every accelerator backend
    that has not started, capturing a stack trace for each (~0.3 ms of a small run)."""
    import torch

    from patchc.runtime.loading import input_device, is_dispatched

    on_cpu = input_device(model).type == "cpu" and not is_dispatched(model)
    if on_cpu and not torch.cuda.is_initialized():
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _hash_inputs(spec: A.Spec, overrides: dict[str, Any] | None) -> dict[str, str]:
    """The sha256 of every file the spec reads, taken before they are read."""
    from patchc.manifest import hash_inputs, spec_files

    dm = (overrides or {}).get("device_map")
    return hash_inputs(spec_files(spec, dm), spec.source.base_dir)


def _results(spec: A.Spec, decl: A.ModelDecl, checked: CheckedSpec, model: Any,
             tokenizer: Any, device: Any, ir: IRGraph, plan: Any, values: dict[str, Any],
             seconds: dict[str, float], naive: bool, clock: Clock, group: Any = None,
             inputs: dict[str, str] | None = None, given: bool = False) -> Results:
    """The run's Results: its tables now, its manifest when first asked for. What pins
    the run is taken now (the hashes of the weights and tokenizer, the paths, the timings:
    the model or the working directory may change after the run); what only describes the
    tables (plot info, baselines, unpatched values, the pydantic round trip) is assembled
    from the run's own values when the manifest is first read (saving reads it)."""
    options = checked.options
    assembling = time.perf_counter()
    tables = {t.name: {"rows": t.n_rows(), "columns": list(t.columns), "keys": _keys(t),
                       "seconds": round(seconds.get(t.name, 0.0), 4)} for t in ir.tables}
    from patchc.runtime.adapters.inferred import layout_of

    hf_map = getattr(model, "hf_device_map", None)
    ran = what_ran(spec, decl, model, tokenizer, given, options.dtype)
    pinned = dict(
        spec_text=spec.source.text, spec_sha256=sha256_text(spec.source.text),
        spec_file=ran.spec_file, spec_dir=ran.spec_dir, model_id=decl.model_id,
        model_path=ran.model_path, revision=decl.revision, weights_sha256=weights_hash(model),
        tokenizer_sha256=ran.tokenizer_sha256, inputs=inputs or {},
        versions=versions(), device=str(device),
        device_map={str(k): v for k, v in hf_map.items()} if hf_map else None,
        workers=group.world if group is not None else 1, threads=_threads(clock),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), seed=options.seed,
        options=options.model_dump(), plan=_pass_counts(ir, plan, clock.sparse),
        interpreter="naive" if naive else "optimized", total_seconds=0.0,
        layout=layout_of(model))
    timings: dict[str, float] = {}

    def manifest(results: Results) -> dict[str, Any]:
        from patchc.plotinfo import describe_tables

        plot = describe_tables(ir, checked, tokenizer, values)  # titles, scales, tokens
        for name, info in tables.items():
            info["plot"] = plot[name]
        made = Manifest(**pinned, tables=tables).model_dump()
        made["timings"] = timings
        made["total_seconds"] = timings["total"]
        made["compile_reused"] = clock.reused
        observe_manifest(made, results, spec)
        return made

    results = Results(ir, values, manifest, warnings=[*checked.warnings, *ran.warnings])
    for w in results.warnings:  # the tables' own warnings point into the spec too
        w.with_source(spec.source)
    clock.seconds["assemble"] = time.perf_counter() - assembling
    timings.update(clock.timings())
    return results


def _threads(clock: Clock) -> int:
    """The threads torch computed with (runtime/threads.py restores its own setting after)."""
    import torch

    return clock.threads or torch.get_num_threads()


def _table_seconds(ir: IRGraph, node_seconds: dict[str, float]) -> dict[str, float]:
    """Where the run's time went, by table: each node's seconds are charged once, to the
    first table (in spec order) that depends on it, so the tables' seconds add up to the
    nodes' (a clean run read by many swaps counts toward the first). One walk up the graph
    from all tables together: every node and edge is visited once (linear in the graph)."""
    seen: set[str] = set()
    seconds = {}
    for table in ir.tables:
        stack = [nid for row in table.rows for _, nid in row.values]
        stack += [r for row in table.rows for _, pair in row.normalize for r in pair if r]
        stack += [n for p in table.pairs for n in (p.estimate, p.metric)]
        stack += [n for b in table.sweeps for _, n in b.values]
        stack += [r for b in table.sweeps for _, pair in b.normalize for r in pair if r]
        total = 0.0
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            total += node_seconds.get(nid, 0.0)
            stack.extend(p for p in ir.g.predecessors(nid) if p not in seen)
        seconds[table.name] = total
    return seconds


def _keys(table) -> list[str]:
    """The sweep-variable columns of a table (what its plot's axes are)."""
    keys: list[str] = []
    for row in table.rows:
        keys += [k for k, _ in row.key if k not in keys]
    for block in table.sweeps:  # compact sweeps: the columns their index sets bind
        keys += [k for k in bound_columns(block.space) if k not in keys]
    return keys


def _pass_counts(ir: IRGraph, plan=None, sparse: dict[str, int] | None = None
                 ) -> dict[str, int]:
    counts = {"forwards": ir.count(Forward), "backwards": ir.count(Backward),
              "nodes": ir.g.number_of_nodes()}
    if plan is not None:  # model passes actually run (a batched chunk is one)
        counts["passes"] = plan.optimized.forwards
    if sparse and sparse["planned"]:  # latent sweeps: skipped experiments, packed passes
        counts["passes"] += sparse["passes"] - sparse["planned"]
        counts["sparse_skipped"] = sparse["skipped"]
        counts["sparse_passes"] = sparse["passes"]
    return counts
