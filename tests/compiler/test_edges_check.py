"""Edges in the compiler: parsing and printing `S -> R`, the checker's located errors, how
patterns expand to existing edges (parallel blocks, grouped-query k/v), and the IR an edge
sweep lowers to (receiver-input Writes that share_prefix starts at the receiver's layer)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402
from test_check_errors import HEADS  # noqa: E402

from patchc.compiler import printer  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.ir import Forward, Write  # noqa: E402
from patchc.compiler.lower import count_rows, lower  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.pipeline import optimize  # noqa: E402


@pytest.fixture(scope="module")
def models() -> Models:
    return build()


LLAMA = '''model "./llama"
run a = ["I love this"]
run b = ["I hate this"]
metric m = logit(" great")
#
'''


def _checked(models: Models, head: str, body: str):
    text = (LLAMA if head == "llama" else HEADS[head]) + body + "\n"
    return check(parse(text, "case.patch", models.spec_dir()))


def _errors(models: Models, head: str, body: str) -> list[PatchcError]:
    with pytest.raises(PatchcError) as info:
        _checked(models, head, body)
    return info.value.errors


CASES = [  # (head, body, code, col, message fragment); the body is line 6
    ("gpt2", "swap L0.mlp.post -> L1.H0.q from clean into corrupt  measure ld", "E390", 6,
     "L0.mlp.post is not an edge sender"),
    ("gpt2", "swap L0.H0.out -> L1.H0.z from clean into corrupt  measure ld", "E390", 19,
     "L1.H0.z is not an edge receiver"),
    ("gpt2", "swap L0.H0.out[0:4] -> logits from clean into corrupt  measure ld", "E391", 6,
     "takes no feature slice"),
    ("gpt2", "swap L2.H0.out -> L1.H0.q from clean into corrupt  measure ld", "E392", 6,
     "there is no edge L2.H0.out -> L1.H0.q"),
    ("neox", "swap L1.H0.out -> L1.mlp.in from a into b  measure m", "E392", 6,
     "in parallel"),
    ("gpt2", "swap L3.mlp.out -> L*.H*.q from clean into corrupt  measure ld",
     "E393", 6, "matches no edge"),
    ("gpt2", "read L0.H0.out -> logits in clean", "E394", 1, "`read` does not take edges"),
    ("gpt2", "steer L0.H0.out -> logits in clean by {1, 2} * v  measure ld", "E394", 1,
     "`steer` does not take edges"),
    ("gpt2", "swap L0.mlp.out, L0.H0.out -> logits from clean into corrupt  measure ld",
     "E395", 6, "sites or edges, not both"),
    ("gpt2", "attribute * -> * from clean into corrupt using atp  measure ld", "E396", 48,
     "unknown edge method `atp`"),
    ("gpt2", "swap all(L0.mlp.out, embed -> logits) from clean into corrupt  measure ld",
     "E113", 6, "sites or edges, not both"),
    ("gpt2", "swap L9.H0.out -> logits from clean into corrupt  measure ld", "E201", 6,
     "model has 4 layers"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_edge_errors_are_located(models: Models, case) -> None:
    head, body, code, col, fragment = case
    if "by {1, 2} * v" in body:
        body = "vector v = mean(clean.L0.resid_post @ last)\n" + body
        line = 7
    else:
        line = 6
    errors = _errors(models, head, body)
    found = [(e.code, e.line, e.col) for e in errors]
    assert (code, line, col) in found, [e.render() for e in errors]
    err = next(e for e in errors if (e.code, e.line, e.col) == (code, line, col))
    assert fragment in err.message, err.render()
    if code == "E392":  # what a sender reaches: its own layer's MLP only when sequential
        assert "later layers" in err.hint and ("own layer's MLP" in err.hint) == (head == "gpt2")


def test_edges_print_back_as_written(models: Models) -> None:
    text = "swap L0.H3.out -> L$l.H$h.q, * -> logits, all(embed -> L1.mlp.in, " \
        "L0.mlp.out -> L2.H1.k) @ last from clean into corrupt"
    spec = parse(HEADS["gpt2"] + text + "  measure ld\n", "case.patch", models.spec_dir())
    op = next(iter(spec.operations()))
    assert printer.sites(op.sites) == text.split(" from ")[0][5:]


def test_every_edge_of_the_model(models: Models) -> None:
    """* -> *: every sender at the finest grain into every receiver it feeds."""
    checked = _checked(models, "gpt2", "swap * -> * from clean into corrupt  measure ld as e")
    layers, heads = 4, 4
    senders_before = [1 + (heads + 1) * layer for layer in range(layers)]  # into layer l attn
    count = sum(3 * heads * s + (s + heads) for s in senders_before)  # q/k/v + mlp.in
    count += 1 + (heads + 1) * layers  # logits
    assert count_rows(checked)["e"] == count


def test_grouped_query_kv_receivers_dedupe(models: Models) -> None:
    checked = _checked(models, "llama", "swap embed -> L1.H*.k from a into b  measure m as e")
    ir = lower(checked, compact=False)
    (table,) = ir.tables
    assert [dict(r.key)["receiver"] for r in table.rows] == ["L1.H0.k", "L1.H4.k"]
    (block,) = lower(checked).tables[0].sweeps  # an edge sweep (two edges into layer 1)
    assert [str(r) for r in block.space.receivers] == ["L1.H0.k.in", "L1.H4.k.in"]


def test_grouped_query_kv_receiver_keeps_the_head_as_written(models: Models) -> None:
    """`L1.H5.k` (kv head 1 of 2, 8 query heads) is shown as written; with a capture each
    row shows its own query head, beside the capture's value; the input is the kv head's."""
    checked = _checked(models, "llama", "swap embed -> L1.H5.k from a into b  measure m as e\n"
                       "swap embed -> L1.H$h.v from a into b  measure m as c")
    ir = lower(checked, compact=False)
    one, caps = ir.tables
    assert [dict(r.key)["receiver"] for r in one.rows] == ["L1.H5.k"]
    keys = [dict(r.key) for r in caps.rows]
    assert [(k["receiver"], k["h"]) for k in keys] == [(f"L1.H{h}.v", h) for h in range(8)]
    writes = {ir.node(w).site for _, f in ir.of_type(Forward) if f.experiment is not None
              for w in f.writes}
    assert {str(s) for s in writes} == {"L1.H4.k.in", "L1.H0.v.in", "L1.H4.v.in"}


def test_an_edge_sweep_starts_at_the_receivers_layer(models: Models) -> None:
    body = "swap L0.H1.out -> L2.H0.q, L1.mlp.out -> logits from clean into corrupt  measure ld"
    ir = optimize(lower(_checked(models, "gpt2", body)))
    starts = {}
    for _, f in ir.of_type(Forward):
        if f.experiment is None:
            continue
        (w,) = [ir.node(x) for x in f.writes]
        assert isinstance(w, Write) and w.mode == "edge" and w.live == ()
        starts[w.site.kind] = f.start_layer
    assert starts == {"q.in": 2, "logits.in": 4}  # logits: after the last of 4 blocks


def test_a_joint_patch_reads_changed_senders_in_its_own_forward(models: Models) -> None:
    """In all(L0.H1.out -> L1.H2.q, L1.H0.out -> L2.mlp.in), writing L1.H2.q's input can
    change L1.H0.out's layer, so that sender's current value is read live (Write.live), and
    the IR dump marks it."""
    from patchc.compiler.dump import dump_ir

    body = ("swap all(L0.H1.out -> L1.H2.q, L1.H0.out -> L2.mlp.in) from clean into corrupt"
            "  measure ld")
    ir = lower(_checked(models, "gpt2", body))
    writes = {w.site.kind: w for _, w in ir.of_type(Write) if w.senders}
    assert writes["q.in"].live == () and len(writes["q.in"].inputs) == 2
    assert writes["mlp.in"].live == (0,) and len(writes["mlp.in"].inputs) == 1
    assert "from L1.H0.out*" in dump_ir(ir)
