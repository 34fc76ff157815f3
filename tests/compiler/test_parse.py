"""The parser on the worked examples (examples/language/, docs/language.md §17) and on
malformed specs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from patchc.compiler import ast as A  # noqa: E402
from patchc.compiler.errors import ParseError, PatchcError  # noqa: E402
from patchc.compiler.parse import parse, parse_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "language").glob("*.patch"))
LANGUAGE_EXAMPLES = {"ioi_heads", "causal_tracing", "circuit_ablation", "backpatch", "steering",
                     "attribution"}


def example(name: str) -> A.Spec:
    return parse_file(ROOT / "examples" / "language" / f"{name}.patch")


def test_every_language_example_has_a_file():
    assert LANGUAGE_EXAMPLES <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_parses(path: Path):
    spec = parse_file(path)
    models = [s for s in spec.statements if isinstance(s, A.ModelDecl)]
    assert [m.model_id for m in models] == ["../models/tiny-gpt2"]
    assert spec.operations()
    assert spec.source.filename == str(path)
    assert spec.source.base_dir == str(path.parent)


def test_ioi_heads_swap():
    spec = example("ioi_heads")
    (swap,) = spec.operations()
    assert isinstance(swap, A.Swap)
    (site,) = swap.sites
    assert isinstance(site, A.SiteRef)
    assert isinstance(site.layer, A.Star) and isinstance(site.head, A.Star)
    assert site.kind == "z" and site.text == "L*.H*.z" and site.pos is None
    assert (swap.source.value, swap.target.value) == ("clean", "corrupt")
    (m,) = swap.clauses.measures
    assert m.normalized and m.expr == A.MRef("ld", m.expr.span)
    assert A.table_name(swap) == "heads"
    metric = next(s for s in spec.statements if isinstance(s, A.MetricDecl))
    assert isinstance(metric.expr, A.MBin) and metric.expr.op == "-"
    assert isinstance(metric.expr.left, A.MCall) and metric.expr.left.fn == "logit"
    assert metric.expr.left.tok.column == "answer"
    runs = {s.name.value: s.text for s in spec.statements if isinstance(s, A.RunDecl)}
    assert {k: (v.data, v.column) for k, v in runs.items()} == {
        "clean": ("ioi", "clean"), "corrupt": ("ioi", "corrupt")}


def test_backpatch_trailing_pos_applies_to_both_sides():
    (bp,) = example("backpatch").operations()
    assert isinstance(bp, A.Backpatch)
    assert isinstance(bp.src.pos, A.PosLast) and isinstance(bp.dst.pos, A.PosLast)
    assert isinstance(bp.src.layer, A.Capture) and bp.src.layer.name == "j"
    assert isinstance(bp.dst.layer, A.Capture) and bp.dst.layer.name == "i"
    assert bp.target.value == "q" and bp.source is None
    (cond,) = bp.clauses.where
    assert (cond.left, cond.op, cond.right) == ("j", ">", "i")
    (m,) = bp.clauses.measures
    assert isinstance(m.expr, A.MGenerate) and m.expr.n == 10
    assert (m.expr.answer.data, m.expr.answer.column) == ("hops", "answer")


def test_backpatch_own_positions_are_kept():
    (bp,) = parse("backpatch L3.resid_post @ 2 -> L1.resid_post in q").operations()
    assert isinstance(bp.src.pos, A.PosIndex) and bp.src.pos.value == 2
    assert bp.dst.pos is None


def test_steering_sweep_and_vector():
    spec = example("steering")
    (steer,) = spec.operations()
    assert isinstance(steer, A.Steer) and isinstance(steer.by, A.VScale)
    assert isinstance(steer.by.factor, A.ScalarSweep)
    assert steer.by.factor.values == (1, 4, 8)
    (vec,) = [s for s in spec.statements if isinstance(s, A.VectorDecl)]
    assert isinstance(vec.expr, A.VBin) and vec.expr.op == "-"
    left = vec.expr.left
    assert isinstance(left, A.VMean) and left.of.run == "pos"
    assert left.of.site.kind == "resid_post" and isinstance(left.of.site.pos, A.PosLast)
    texts = {s.name.value: s.text.texts for s in spec.statements if isinstance(s, A.RunDecl)}
    assert texts["neutral"] == ("I think this movie is",)
    (m,) = steer.clauses.measures
    assert isinstance(m.expr.tok, A.TokString) and m.expr.tok.text == " great"


def test_causal_tracing_noise_and_trace():
    spec = example("causal_tracing")
    data = next(s for s in spec.statements if isinstance(s, A.DataDecl))
    assert data.path == "../data/facts.jsonl" and data.rows is None
    noisy = next(s for s in spec.statements if isinstance(s, A.RunDecl) and s.interventions)
    (noise,) = noisy.interventions
    assert isinstance(noise, A.INoise) and noise.site.kind == "embed"
    assert isinstance(noise.site.pos, A.ColumnRef) and noise.site.pos.column == "subject_pos"
    kw = {k.name: k.value for k in noise.kwargs}
    assert kw["samples"] == 10 and kw["seed"] == 1
    assert isinstance(kw["std"], A.StdOf) and kw["std"].factor == 3
    (trace,) = spec.operations()
    assert isinstance(trace, A.Trace)
    (site,) = trace.sites
    assert isinstance(site.pos, A.PosEach) and site.layer.name == "l"
    assert A.table_name(trace) == f"op_{trace.span.line}"


def test_circuit_ablation():
    circuit, mlps = example("circuit_ablation").operations()
    (group,) = circuit.sites
    assert isinstance(group, A.Group)
    assert [(m.layer.value, m.head.value) for m in group.members] == [(9, 6), (9, 9), (10, 0)]
    assert (circuit.how.kind, circuit.how.run) == ("mean", "corrupt")
    assert A.table_name(circuit) == "circuit"
    assert mlps.how.kind == "zero" and mlps.sites[0].kind == "mlp.out"
    assert A.table_name(mlps) == "mlps"


def test_attribution_and_compare():
    attr, cmp = example("attribution").operations()
    assert isinstance(attr, A.Attribute) and attr.method.name == "relp"
    assert isinstance(attr.sites[0].pos, A.PosEach) and A.table_name(attr) == "relp_mlp"
    assert isinstance(cmp, A.Compare)
    assert [m.name for m in cmp.methods] == ["atp", "relp"]
    assert [s.kind for s in cmp.sites] == ["mlp.out", "attn.out", "resid_pre"]
    assert cmp.clauses.measures[0].normalized


def test_site_details():
    spec = parse("swap L0..3.mlp.post[0:512][v, w] @ 2..5, L{1, 5}.H-1.q, blocks.3.attn.hook_z"
                 " from a into b")
    s1, s2, s3 = spec.operations()[0].sites
    assert s1.layer.lo == 0 and s1.layer.hi == 3 and s1.kind == "mlp.post"
    assert isinstance(s1.features, A.Slice) and (s1.features.lo, s1.features.hi) == (0, 512)
    assert s1.subspace == ("v", "w") and (s1.pos.lo, s1.pos.hi) == (2, 5)
    assert s2.layer.values == (1, 5) and s2.head.value == -1 and s2.kind == "q"
    assert s3.kind == "attn.z" and s3.layer.value == 3


# ---- syntax errors -----------------------------------------------------------------------------


def error(text: str) -> PatchcError:
    with pytest.raises(PatchcError) as info:
        parse(text)
    return info.value


@pytest.mark.parametrize("text, code, line, col", [
    # unexpected token: points at the token
    ('model "m"\nswap L1.H2.z from clean corrupt\n', "E100", 2, 25),
    # an unindented `measure` starts a `measure ... in RUN` statement (which lacks `in`)
    ('model "m"\nswap L1.H2.z from clean into corrupt\nmeasure ld\n', "E100", 3, 11),
    ('run a = x.y\nmetric m = logit(x.y) +* 2\n', "E100", 2, 24),
    # bad characters and unterminated strings
    ('model "abc\n', "E101", 1, 7),
    ("model 'x'\n", "E101", 1, 7),
    ('model "m"\nrun a = x.y ~\n', "E101", 2, 13),
    ('metric m = logit("\\q")\n', "E101", 1, 18),
    # unexpected end of file
    ('model "m"\nswap L1.H1.z from clean into', "E104", 2, 29),
    ('model "m"\nmetric m = (a - b', "E104", 2, 18),
    # a plain name was required
    ("run a.b = x.y\n", "E105", 1, 5),
    ("swap L1.H1.z from a.b into c\n", "E105", 1, 19),
    # other parse-time checks
    ("swap L1.H{1,,2}.z from a into b\n", "E103", 1, 10),
    ("run a = x\n", "E106", 1, 9),
    ("data d = [1, 2]\n", "E107", 1, 1),
    ("swap L1.z from a into b as x as y\n", "E108", 1, 33),
])
def test_syntax_error_location(text: str, code: str, line: int, col: int):
    e = error(text)
    assert isinstance(e, ParseError) or all(isinstance(x, ParseError) for x in e.errors)
    assert (e.code, e.line, e.col) == (code, line, col), e.render()
    rendered = e.render()
    assert f"<spec>:{line}:{col}: error[{code}]" in rendered


def test_unindented_clause_hint():
    e = error("swap L1.z from a into b\nmeasure ld\n")
    assert e.hint and "indented" in e.hint


def test_single_quotes_hint():
    assert "double quotes" in error("model 'x'\n").message


def test_several_errors_reported_together():
    e = error("run a.b = x.y\nrun c.d = x.y\n")
    assert [(x.code, x.line) for x in e.errors] == [("E105", 1), ("E105", 2)]
    assert e.render().count("error[E105]") == 2


def test_caret_under_span():
    e = error('model "m"\nswap L1.H2.z from clean corrupt\n')
    lines = e.render().splitlines()
    assert lines[1].endswith("swap L1.H2.z from clean corrupt")
    assert lines[2].endswith(" " * 24 + "^" * 7)


def test_missing_file():
    with pytest.raises(ParseError) as info:
        parse_file(ROOT / "examples" / "language" / "no_such_spec.patch")
    assert info.value.code == "E001"


@pytest.mark.parametrize("text, code", [
    ('metric m = logit("a\tb")\n', "E101"),  # raw control character in a string
    ('data d = [{"a\\x": 1}]\n', "E101"),
    ("metric m = 1" + "0" * 400 + "\n", "E110"),  # an int beyond float range
    ("swap L1" + "0" * 5000 + ".z from a into b\n", "E110"),  # beyond int() digit limit
    ("metric m = " + "-" * 2000 + "a\n", "E111"),
])
def test_literal_and_nesting_errors_are_parse_errors(text: str, code: str):
    assert error(text).code == code


def test_comment_lines_inside_a_statement():
    spec = parse("swap L1.z from a into b\n# why\n    measure m\n  # more\n    as t\n# end")
    (op,) = spec.operations()
    assert [m.expr.name for m in op.clauses.measures] == ["m"] and op.clauses.name.value == "t"
    spec = parse('model "m"\r\n# c\r\n\r\nrun r = d.x  # trailing\r\n')
    assert len(spec.statements) == 2


def test_a_spec_is_read_up_to_a_cap():
    """/dev/zero used to be read forever; a pipe (`<(cat s.patch)`) is still a spec."""
    import os

    import pytest

    from patchc.compiler.errors import ParseError
    from patchc.compiler.parse import parse_file

    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with pytest.raises(ParseError) as e:
        parse_file("/dev/zero")
    assert e.value.code == "E002" and "over 64 MB" in e.value.message
    read, write = os.pipe()
    os.write(write, b'model "m"\r\n')
    os.close(write)
    try:
        spec = parse_file(f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert spec.source.text == 'model "m"\n'  # (newlines as text mode reads them)
