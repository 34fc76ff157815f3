"""The passes on the statements of §11 (read, lens, measure ... in RUN): golden before/after
dumps, and the facts they must keep: a `read` of a run that a sweep already runs adds no
model pass; lens metrics of different sites stay distinct under dedupe; a forward measured
only through a lens skips the unembedding; the Reads a table reports are never pruned or
freed."""

import json

from passcases import ROOT, before_after, golden, lowered

from patchc.compiler import costs as C
from patchc.compiler.ir import Forward, Metric, Positions, Read
from patchc.compiler.modelspec import spec_from_config
from patchc.compiler.passes.dedupe import dedupe
from patchc.compiler.passes.prune_reads import prune_reads
from patchc.compiler.passes.trim_logits import trim_logits
from patchc.compiler.pipeline import optimize
from patchc.compiler.schedule import result_nodes, schedule

SWEEP = """
swap L*.H0.z @ last from clean into corrupt
    measure ld normalized
    as heads
"""
READS = """
read L0.resid_post @ {1, 3}, L1.H2.pattern in clean
    as acts
"""
LENS = """
lens L{0,1}.resid_post, L2.mlp.out @ d.p in clean
    measure ld, logprob(d.answer)
    as lensed
measure ld, acc = rank(d.answer) == 0 in corrupt
    as base
"""


def _passes(body: str) -> int:
    cfg = json.loads((ROOT / "examples/models/tiny-gpt2/config.json").read_text())
    runs = {"clean": C.RunShape((11, 9), {("d", "p"): (2, 4)}),
            "corrupt": C.RunShape((11, 9), {("d", "p"): (2, 4)})}
    ir = lowered(body)
    return schedule(optimize(ir), spec_from_config(cfg), runs, None, naive_ir=ir
                    ).optimized.forwards


def test_read_of_a_swept_run_adds_no_pass() -> None:
    assert _passes(SWEEP + READS) == _passes(SWEEP)
    # ... and a read of a run nothing else runs costs one pass.
    assert _passes(READS) == 1


def test_dedupe_keeps_lens_metrics_of_each_site() -> None:
    before, after = before_after(LENS + READS, dedupe)
    golden("reading_dedupe", before, after)
    lens = [m for _, m in after.of_type(Metric) if m.lens is not None]
    assert len(lens) == 6  # 3 sites x 2 measures
    assert len({m.lens for m in lens}) == 3
    (t,) = [t for t in after.tables if t.name == "lensed"]
    assert len({nid for row in t.rows for _, nid in row.values}) == 6


def test_trim_logits_skips_the_unembedding_of_lens_only_forwards() -> None:
    before, after = before_after(LENS, trim_logits)
    golden("reading_trim_logits", before, after)
    by_run = {f.run: f for _, f in after.of_type(Forward)}
    assert by_run["clean"].logit_positions == ()  # decoded through its Reads only
    assert by_run["corrupt"].logit_positions == (Positions("last"),)


def test_reported_reads_survive_prune_and_are_never_freed() -> None:
    ir = optimize(lowered(READS))
    assert prune_reads(ir) is ir
    reads = {nid for nid, _ in ir.of_type(Read)}
    assert reads and reads <= result_nodes(ir)


CONTINUED = """
swap L{1,2}.H0.z @ last from clean into corrupt
    measure s = seqlogprob(d.answer), t = text(2)
    as continued
"""


def test_text_and_seqlogprob_forwards_run_whole() -> None:
    """A forward whose metric continues past the prompt runs every layer (decoding needs
    every layer's keys and values), narrowed to the positions from its first write (a twin
    gives the earlier keys and values); forwards that continue alike batch together (the
    golden shows the whole pipeline's output)."""
    ir = lowered(CONTINUED)
    after = optimize(ir)
    golden("reading_continued", ir, after)
    swept = [f for _, f in after.of_type(Forward) if f.experiment is not None]
    assert len(swept) == 2
    for f in swept:
        assert f.narrow and f.twin and f.start_layer == 0 and f.start is None
    assert swept[0].group is not None and swept[0].group == swept[1].group


def test_forwards_that_continue_differently_do_not_batch() -> None:
    ir = optimize(lowered(CONTINUED + """swap L{1,2}.H1.z @ last from clean into corrupt
    measure t = text(3)
    as longer
"""))
    groups = {}
    for _, f in ir.of_type(Forward):
        if f.experiment is not None:
            groups.setdefault(f.group, set()).add(f.experiment)
    assert len([g for g in groups if g is not None]) == 2, groups
