"""Property tests of the parser and the printer (hypothesis).

(a) Random valid specs, written with random layout (spacing, redundant parentheses, clauses
    inline or on continuation lines, comments, blank lines): formatting is a fixed point after
    one round and keeps the AST.
(b) Random mutations of the example specs: the parser either succeeds or raises a PatchcError
    (never a Lark exception, a VisitError, a JSONDecodeError, ...); what it accepts round-trips.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from patchc.compiler.errors import PatchcError  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402
from patchc.compiler.dump import strip_spans  # noqa: E402
from patchc.compiler.printer import format_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TEXTS = [p.read_text("utf-8") for p in sorted(
    [*(ROOT / "examples" / "language").glob("*.patch"),
     *(ROOT / "tests" / "fixtures" / "specs").glob("*.patch")])]

KEYWORDS = set(re.findall(r'"([a-z]+)"', (ROOT / "grammar" / "patch.lark").read_text("utf-8")))
# PATCHC_FUZZ_SCALE=50 runs 50x the examples (a longer hunt than the default < 30 s run).
SCALE = int(os.environ.get("PATCHC_FUZZ_SCALE", "1"))
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck),
                    max_examples=300 * SCALE)


def fmt(text: str) -> str:
    return format_spec(parse(text))


def check_round_trip(text: str) -> None:
    spec = parse(text)
    once = format_spec(spec)
    again = parse(once)
    assert strip_spans(again) == strip_spans(spec), once
    assert format_spec(again) == once


# ---- (a) strategies for valid spec text ---------------------------------------------------------

names = st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
ws = st.sampled_from(["", " ", "  ", "\t"])
sp = st.sampled_from([" ", "  ", "\t"])
ints = st.integers(0, 40)
sints = st.integers(-5, 40)
floats = st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(repr)
numbers = st.one_of(ints.map(str), floats, st.sampled_from(["1e-3", "2E5", "0.5", "3.0"]))
strings = st.text(st.characters(exclude_categories=("Cs",)), max_size=8).flatmap(
    lambda s: st.sampled_from([json.dumps(s), json.dumps(s, ensure_ascii=False)]))
columns = st.builds(lambda d, c: f"{d}.{c}", names, names)


@st.composite
def index(draw, signed=True, spaced_set=True):
    kind = draw(st.sampled_from(["int", "star", "range", "set", "capture"]))
    n = sints if signed else ints
    if kind == "int":
        return str(draw(n))
    if kind == "star":
        return "*"
    if kind == "range":
        return f"{draw(n)}..{draw(n)}"
    if kind == "set":
        sep = draw(st.sampled_from([",", ", "])) if spaced_set else ","
        return "{" + sep.join(map(str, draw(st.lists(n, min_size=1, max_size=3)))) + "}"
    return "$" + draw(names)


KINDS = ["resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "mlp.post", "mlp.pre",
         "attn.z", "ln1.scale"]
HEAD_KINDS = ["z", "q", "k", "v", "pattern", "out"]
TOP_KINDS = ["embed", "logits", "ln_final.scale"]
TL_HOOKS = ["hook_resid_pre", "hook_resid_post", "attn.hook_z", "mlp.hook_post"]


@st.composite
def pos(draw):
    kind = draw(st.sampled_from(["last", "each", "int", "range", "column"]))
    if kind in ("last", "each"):
        return kind
    if kind == "int":
        return str(draw(sints))
    if kind == "range":
        return f"{draw(sints)}..{draw(sints)}"
    return draw(columns)


@st.composite
def site_path(draw):
    kind = draw(st.sampled_from(["layer", "head", "top", "tl"]))
    if kind == "top":
        return draw(st.sampled_from(TOP_KINDS))
    if kind == "tl":
        i = draw(st.sampled_from(["*", "3", "0..2", "$l"]))
        return f"blocks.{i}.{draw(st.sampled_from(TL_HOOKS))}"
    layer = "L" + draw(index())
    if kind == "head":
        return f"{layer}.H{draw(index())}.{draw(st.sampled_from(HEAD_KINDS))}"
    return f"{layer}.{draw(st.sampled_from(KINDS))}"


@st.composite
def site(draw, with_pos=True):
    out = draw(site_path())
    if draw(st.booleans()):
        if draw(st.booleans()):
            out += f"[{draw(sints)}{draw(ws)}:{draw(ws)}{draw(sints)}]"
        else:
            out += f"[{draw(ws)}{draw(index(spaced_set=False))}{draw(ws)}]"
    if draw(st.integers(0, 3)) == 0:
        out += "[" + ", ".join(draw(st.lists(names, min_size=1, max_size=2))) + "]"
    if with_pos and draw(st.booleans()):
        out += f"{draw(ws)}@{draw(ws)}{draw(pos())}"
    return out


@st.composite
def site_item(draw):
    if draw(st.integers(0, 3)) == 0:
        members = draw(st.lists(site(), min_size=1, max_size=3))
        out = "all(" + ", ".join(members) + ")"
        return out + (f" @ {draw(pos())}" if draw(st.booleans()) else "")
    return draw(site())


sites = st.lists(site_item(), min_size=1, max_size=3).map(", ".join)


def paren(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return s.map(lambda x: f"({x})")


toks = st.one_of(columns, strings, ints.map(lambda i: f"id({i})"))
m_leaves = st.one_of(
    numbers, names,
    st.builds(lambda f, t: f"{f}({t})", st.sampled_from(["logit", "logprob", "prob", "rank"]),
              toks),
    names.map(lambda n: f"kl({n})"), st.just("loss"),
    st.builds(lambda n, c: f"generate({n}) contains {c}", ints, columns))
mexprs = st.recursive(m_leaves, lambda inner: st.one_of(
    st.builds(lambda a, op, b: f"{a}{op}{b}", inner,
              st.sampled_from([" + ", " - ", " * ", " / ", "-", "*"]), inner.map(lambda x: x)),
    st.builds(lambda a, op, b: f"{a} {op} ({b})", inner, st.sampled_from("+-*/"), inner),
    inner.map(lambda x: f"-({x})"), paren(inner)), max_leaves=6)

scalars = st.one_of(
    st.builds(lambda neg, n: neg + n, st.sampled_from(["", "-"]), numbers),
    st.lists(st.builds(lambda neg, n: neg + n, st.sampled_from(["", "-"]), numbers),
             min_size=1, max_size=3).map(lambda v: "{" + ", ".join(v) + "}"))
v_leaves = st.one_of(
    names, st.builds(lambda f, k: f"load({f}, key={k})", strings, strings),
    st.builds(lambda f, n: f"sae({f}, feature={n})", strings, ints),
    st.builds(lambda r, s: f"mean({r}.{s})", names, site()))
vexprs = st.recursive(v_leaves, lambda inner: st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} ({b})", inner, st.sampled_from("+-"), inner),
    st.builds(lambda s, v: f"{s} * ({v})", scalars, inner),
    inner.map(lambda x: f"-({x})"), inner.map(lambda x: f"normalize({x})"), paren(inner)),
    max_leaves=5)

kwvalues = st.one_of(numbers, strings, names, st.sampled_from(["true", "false", "-2", "-0.5"]),
                     st.builds(lambda n, s: f"{n}*std({s})", numbers, site()))
kwargs = st.lists(st.builds(lambda k, v: f"{k}={v}", names, kwvalues), min_size=1, max_size=3)
methods = st.one_of(st.sampled_from(["atp", "relp", "ig"]),
                    st.builds(lambda m, k: f"{m}({', '.join(k)})", names, kwargs))
ablations = st.sampled_from(["", " with zero"]) | names.map(
    lambda n: f" with mean({n})") | names.map(lambda n: f" with resample({n})")
interventions = st.one_of(
    st.builds(lambda s, k: f"noise({s}, {', '.join(k)})", site(), kwargs),
    st.builds(lambda s, a: f"ablate {s}{a}", site_item(), ablations),
    st.builds(lambda s, v: f"steer {s} by {v}", site_item(), vexprs),
    st.builds(lambda s, x: f"scale {s} by {x}", site_item(), scalars),
    st.builds(lambda s, n: f"swap {s} from {n}", site_item(), names),
    names.map(lambda n: f"freeze ln from {n}"))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3), max_leaves=6)
rows = st.lists(st.dictionaries(st.text(max_size=4), json_values, max_size=3), max_size=3)
texts = st.one_of(columns, strings,
                  st.lists(strings, min_size=1, max_size=3).map(lambda s: f"[{', '.join(s)}]"))

declarations = st.one_of(
    st.builds(lambda m, r: f"model {m}" + (f" revision {r}" if r else ""), strings,
              st.none() | strings),
    st.builds(lambda n, v: f"set {n} = {v}", names,
              st.one_of(numbers, strings, names, st.sampled_from(["true", "false", "-3"]))),
    st.builds(lambda n, p: f"data {n} = {p}", names, strings),
    st.builds(lambda n, r: f"data {n} = {json.dumps(r, ensure_ascii=False)}", names, rows),
    st.builds(lambda n, t, i: f"run {n} = {t}" + (f" with {', '.join(i)}" if i else ""),
              names, texts, st.lists(interventions, max_size=2)),
    st.builds(lambda n, e, p: f"metric {n} = {e}" + (f" @ {p}" if p else ""), names, mexprs,
              st.none() | pos()),
    st.builds(lambda n, e: f"vector {n} = {e}", names, vexprs))

heads = st.one_of(
    st.builds(lambda s, a, b: f"swap {s} from {a} into {b}", sites, names, names),
    st.builds(lambda s, b, a: f"ablate {s} in {b}{a}", sites, names, ablations),
    st.builds(lambda s, d, b, a: f"backpatch {s} -> {d} in {b}" + (f" from {a}" if a else ""),
              site(), site(), names, st.none() | names),
    st.builds(lambda s, b, v: f"steer {s} in {b} by {v}", sites, names, vexprs),
    st.builds(lambda s, b, x: f"scale {s} in {b} by {x}", sites, names, scalars),
    st.builds(lambda s, a, b, m: f"attribute {s} from {a} into {b} using {m}",
              sites, names, names, methods),
    st.builds(lambda m, s, a, b: f"compare {', '.join(m)} against swap on {s} from {a} into {b}",
              st.lists(methods, min_size=1, max_size=3), sites, names, names),
    st.builds(lambda s, a, b: f"trace {s} from {a} into {b}", sites, names, names),
    st.builds(lambda s, b: f"dla {s} in {b}", sites, names))
conds = st.builds(lambda a, op, b: f"${a} {op} {b}", names,
                  st.sampled_from([">", "<", ">=", "<=", "==", "!="]),
                  st.one_of(names.map(lambda n: "$" + n), sints.map(str)))
measures = st.lists(st.builds(lambda e, n: e + (" normalized" if n else ""), mexprs,
                              st.booleans()), min_size=1, max_size=2).map(", ".join)
clause = st.one_of(measures.map(lambda m: f"measure {m}"), names.map(lambda n: f"as {n}"),
                   st.lists(conds, min_size=1, max_size=2).map(
                       lambda c: "where " + " and ".join(c)))


@st.composite
def operation(draw):
    out = draw(heads)
    cls = draw(st.lists(clause, max_size=3))
    if sum(c.startswith("as ") for c in cls) > 1:  # one `as` per statement
        cls = [c for c in cls if not c.startswith("as ")]
    for c in cls:
        if draw(st.booleans()):
            out += draw(sp) + c
        else:
            out += "\n" + draw(st.sampled_from(["", "# note\n", "\n"])) + draw(
                st.sampled_from(["    ", "  ", "\t", "        "])) + c
    return out


@st.composite
def spec_text(draw):
    stmts = draw(st.lists(st.one_of(declarations, operation()), min_size=1, max_size=6))
    seps = [draw(st.sampled_from(["\n", "\n\n", "  # c\n", "\n# c\n\n"])) for _ in stmts]
    lead = draw(st.sampled_from(["", "\n", "# head\n"]))
    return lead + "".join(s + sep for s, sep in zip(stmts, seps))


@SETTINGS
@given(spec_text())
def test_fmt_round_trips_random_specs(text: str):
    spec = parse(text)  # every generated spec is valid
    once = format_spec(spec)
    again = parse(once)
    assert strip_spans(again) == strip_spans(spec), once
    assert format_spec(again) == once


@settings(SETTINGS, max_examples=200 * SCALE)
@given(st.lists(st.one_of(site_item(), mexprs.map(lambda m: f"metric m = {m}")), max_size=1))
def test_small_pieces(pieces: list[str]):
    for p in pieces:
        text = p if p.startswith("metric") else f"swap {p} from a into b"
        check_round_trip(text)


# ---- (b) mutations of the examples --------------------------------------------------------------

TOKENS = sorted(KEYWORDS) + list("@.,*$-+/=<>:()[]{}#\"'\\~") + [
    "..", "->", "\n", "\n    ", "\t", "L1", "H*", "$l", "1e-3", "-1", '"s"', "{1, 2}", "all(",
    "clean", "ioi.answer", "\\u12", "\\q", "L{1,,2}", "blocks.3.", "[0:5]", "\r\n"]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["del", "ins", "rep", "tok_ins", "tok_del", "swap_lines",
                                   "dedent", "indent", "dup_line"]))
        i = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "del":
            text = text[:i] + text[i + draw(st.integers(1, 5)):]
        elif op == "ins":
            text = text[:i] + draw(st.characters(exclude_categories=("Cs",))) + text[i:]
        elif op == "rep":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i + 1:]
        elif op == "tok_ins":
            text = text[:i] + " " + draw(st.sampled_from(TOKENS)) + " " + text[i:]
        elif op == "tok_del":
            spans = [m.span() for m in re.finditer(r"\S+", text)]
            if spans:
                a, b = spans[draw(st.integers(0, len(spans) - 1))]
                text = text[:a] + text[b:]
        else:
            j, k = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
            if op == "swap_lines":
                lines[j], lines[k] = lines[k], lines[j]
            elif op == "dedent":
                lines[j] = lines[j].lstrip()
            elif op == "indent":
                lines[j] = draw(st.sampled_from(["    ", " ", "\t"])) + lines[j]
            else:
                lines.insert(j, lines[k])
            text = "\n".join(lines)
    return text


@settings(SETTINGS, max_examples=1000 * SCALE)
@given(mutated())
def test_mutations_raise_only_patchc_errors(text: str):
    try:
        parse(text)
    except PatchcError as e:
        assert e.code and e.render()
        return
    check_round_trip(text)
