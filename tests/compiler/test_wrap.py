"""Line wrapping of the canonical layout (compiler/wrap.py): at 100 columns, onto
continuation lines two levels deeper, at the least nested break (after a comma when there is
one), round-trip stable. And every bundled spec is in that layout (`patchc fmt --check`)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_fuzz import spec_text  # noqa: E402  (tests/compiler is on sys.path under pytest)

from patchc.compiler import wrap as W  # noqa: E402
from patchc.compiler.dump import strip_spans  # noqa: E402
from patchc.compiler.fmt import format_source, name_tables  # noqa: E402
from patchc.compiler.parse import parse, parse_file  # noqa: E402
from patchc.compiler.printer import format_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "examples").rglob("*.patch"))

HEAD = '''model "m"
data ioi = "ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''


def fmt(text: str) -> str:
    return format_source(parse(text))


def body(text: str) -> str:
    """The formatted text after the common head."""
    out = fmt(HEAD + text)
    return out[out.index("metric ld = ") :].split("\n", 2)[2]


# ---- golden layouts ------------------------------------------------------------------------


def test_short_lines_are_kept():
    assert body("swap L0.mlp.out from clean into corrupt measure ld as a\n") == (
        "swap L0.mlp.out from clean into corrupt\n    measure ld\n    as a\n")


def test_site_list_breaks_after_a_comma():
    src = ("compare atp, relp against swap on L*.mlp.out @ each, L*.attn.out @ each, "
           "L*.resid_pre @ each from clean into corrupt measure ld normalized as c\n")
    assert body(src) == (
        "compare atp, relp against swap on L*.mlp.out @ each, L*.attn.out @ each,\n"
        "        L*.resid_pre @ each from clean into corrupt\n"
        "    measure ld normalized\n"
        "    as c\n")


def test_long_clause_breaks_two_levels_deeper_than_the_clause():
    metrics = "".join(f"metric metric_number_{i} = logit(ioi.answer)\n" for i in range(8))
    measures = ", ".join(f"metric_number_{i}" for i in range(8))
    out = body(metrics + f"ablate L0.mlp.out in clean measure {measures} as t\n")
    clause = out.split("ablate L0.mlp.out in clean\n", 1)[1]
    assert clause == (
        "    measure metric_number_0, metric_number_1, metric_number_2, metric_number_3, "
        "metric_number_4,\n"
        "            metric_number_5, metric_number_6, metric_number_7\n"
        "    as t\n")


def test_run_breaks_before_with_and_between_interventions():
    src = ("run n = ioi.clean with noise(embed @ ioi.pos, std=3*std(embed), samples=10, "
           "seed=1), ablate all(L0.H0.z, L0.H3.z, L1.H2.z) @ last, scale L2.mlp.out by 0.5\n")
    assert body(src) == (
        "run n = ioi.clean with noise(embed @ ioi.pos, std=3 * std(embed), samples=10, seed=1),\n"
        "        ablate all(L0.H0.z, L0.H3.z, L1.H2.z) @ last, scale L2.mlp.out by 0.5\n")


def test_a_list_breaks_inside_its_brackets_not_after_the_equals_sign():
    src = 'run neutral = ["I saw this movie . It is", "We watched this film . It is", ' \
          '"They tried this meal . It is"]\n'
    assert body(src) == (
        'run neutral = ["I saw this movie . It is", "We watched this film . It is",\n'
        '        "They tried this meal . It is"]\n')


def test_an_expression_breaks_after_an_operator_never_before():
    terms = " + ".join(f"logit(ioi.answer_column_{i})" for i in range(5))
    line = W.wrap_line(f"metric total = {terms}")
    assert line == [
        "metric total = logit(ioi.answer_column_0) + logit(ioi.answer_column_1) +",
        "        logit(ioi.answer_column_2) + logit(ioi.answer_column_3) + "
        "logit(ioi.answer_column_4)"]
    assert all(not part.lstrip().startswith(("+", "-", "*", "/", "@", "=")) for part in line)


def test_no_break_after_an_introducing_word_or_inside_a_string():
    long = "x" * 120
    assert W.wrap_line(f'run r = "{long}"') == [f'run r = "{long}"']  # nothing to break
    assert W.wrap_line(f'run r = "a b {long}" with scale L0.mlp.out by 2') == [
        f'run r = "a b {long}"', "        with scale L0.mlp.out by 2"]


def test_every_line_fits_unless_one_word_is_too_long():
    text = format_spec(parse(HEAD + (
        "swap L0.mlp.out, L1.mlp.out, L2.mlp.out, L3.mlp.out, L0.attn.out, L1.attn.out, "
        "L2.attn.out, L3.attn.out, L0.resid_pre, L1.resid_pre, L2.resid_pre from clean into "
        "corrupt measure ld as t\n")))
    assert max(map(len, text.splitlines())) <= 100
    assert text.endswith(
        "swap L0.mlp.out, L1.mlp.out, L2.mlp.out, L3.mlp.out, L0.attn.out, L1.attn.out, "
        "L2.attn.out,\n"
        "        L3.attn.out, L0.resid_pre, L1.resid_pre, L2.resid_pre from clean into corrupt\n"
        "    measure ld\n    as t\n")


def test_a_set_inside_a_site_path_is_never_split():
    line = "swap L{0, 1, 2, 3}.H{0, 1, 2, 3}.z from clean into corrupt"
    assert W.wrap_line(line, 20) == [  # and no break right after `swap` or `from`
        "swap L{0, 1, 2, 3}.H{0, 1, 2, 3}.z", "        from clean", "        into corrupt"]


# ---- properties ----------------------------------------------------------------------------


@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=50)
@given(spec_text(), st.integers(20, 100))
def test_any_width_keeps_the_ast_and_is_idempotent(text, width):
    saved, W.WIDTH = W.WIDTH, width  # narrow widths break lines everywhere they can
    try:
        spec = parse(text)
        once = format_source(spec)
        again = parse(once)
        assert strip_spans(name_tables(again)) == strip_spans(name_tables(spec)), once
        assert format_source(again) == once
    finally:
        W.WIDTH = saved


# ---- the bundled specs ---------------------------------------------------------------------


def test_bundled_specs_found():
    assert len(BUNDLED) >= 19 and any(p.parent.name == "language" for p in BUNDLED)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_bundled_spec_is_in_fmt_layout(path: Path):
    text = path.read_text("utf-8")
    assert format_source(parse_file(path)) == text
    assert max(len(line) for line in text.splitlines()) <= 100
