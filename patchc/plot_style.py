"""How the plots look: colour scales by what a column measures, text that never turns into
mathtext, tick labels that never smear, and figures drawn on Agg without pyplot.

Colour scales (the `scale` of a column, decided by patchc/plotinfo.py at run time):

  signed       an effect whose sign matters (a normalized measure, a logit difference, a
               direct logit attribution): diverging `RdBu_r`, symmetric limits, centred on
               the value that means "no effect": 0 for a normalized measure or a
               contribution, and for a raw measure of an operation on run B, B's own
               unpatched value (the column's `centre`; the colorbar says so)
  ratio        a measure normalized as m / m_target (zero ablation, steer, scale without a
               source run): 1 is no effect, so diverging `RdBu_r` centred at 1
  correlation  Pearson/Spearman r: diverging `RdBu_r`, fixed at -1..1
  probability  probabilities and 0/1 outcomes averaged over examples (accuracy, `contains`):
               sequential `viridis`
  rank         a token's rank (0 is the top): sequential `viridis_r` (bright = good)
  nonneg       KL, loss: sequential `viridis`
  level        a raw logit or log-probability: sequential `viridis`

Probabilities, ranks and KL start at their natural 0, unless every value lies within 20%
of the largest (0.011..0.013 on a random model): then the scale spans the data, or it would
show one flat colour; the colorbar says where it starts. Levels always span the data (so does a
heatmap of a raw signed measure whose no-effect value the plan never measured: centred on 0
its values would all lie on one side, one colour). A sequential scale whose data go negative
(an estimate can overshoot) falls back to signed.
"""

from __future__ import annotations

import math
import textwrap
from functools import lru_cache
from typing import Any, Iterable

CMAPS = {"signed": "RdBu_r", "ratio": "RdBu_r", "correlation": "RdBu_r", "probability": "viridis",
         "rank": "viridis_r", "nonneg": "viridis", "level": "viridis"}

MAX_TICKS = 40  # more labels than this on one axis are thinned to about this many
MAX_TOKEN_TICKS = 80  # beyond this many positions, token labels give way to numbers


def baseline_label(b: dict[str, Any]) -> str:
    """`0 = corrupt (-0.68), 1 = clean (7.12)` for a column's baselines."""
    def side(k: str) -> str:
        run, v = b[k]["run"], b[k]["value"]
        return f"{k} = {run} ({v:.4g})" if run else f"{k} = zero"
    return f"{side('0')}, {side('1')}"


def unpatched_label(col: str, u: dict[str, Any]) -> str:
    """`ld(corrupt) = -0.6781 (target, no effect), ld(clean) = 7.121 (source)` for a raw
    column's unpatched values (tables.table_unpatched)."""
    what = {"target": "target, no effect", "source": "source"}
    return ", ".join(f"{on_run(col, u[k]['run'])} = {u[k]['value']:.4g} ({what[k]})"
                     for k in ("target", "source") if k in u)


def new_figure(width: float, height: float):
    """A Figure on the Agg canvas, never through pyplot: no global state, no GUI, and a
    notebook's own backend is left alone (a returned Figure still displays inline)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def text(s: Any) -> str:
    """Text as written: `$` would start mathtext (and an unmatched one raises)."""
    return str(s).replace("$", r"\$")


@lru_cache(maxsize=1)
def _charmap() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    return frozenset(font.get_charmap())


def token_text(tok: str) -> str:
    """A token as a tick label: whitespace and control characters spelled out, characters
    the plotting font lacks as `\\uXXXX` (a missing glyph is a matplotlib warning)."""
    shown = tok.strip() or tok.replace(" ", "\u2423") or "''"  # a blank token: ␣
    have = _charmap()
    out = []
    for ch in shown:
        if not ch.isprintable():
            out.append(repr(ch)[1:-1])
        elif ord(ch) in have:
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def limits(scale: str, values: Iterable[Any], mid: float | None = None
           ) -> tuple[str, float, float, str]:
    """(scale actually used, vmin, vmax, colormap name) for values drawn on one scale; a
    signed scale is symmetric about `mid` (default 0), see `centre`."""
    finite = [float(v) for v in values
              if isinstance(v, (int, float)) and math.isfinite(float(v))]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if scale in ("probability", "rank", "nonneg") and lo < 0:
        scale = "signed"
    if scale == "correlation":
        return scale, -1.0, 1.0, CMAPS[scale]
    if scale == "ratio":
        lim = max(abs(lo - 1), abs(hi - 1)) or 1.0
        return scale, 1 - lim, 1 + lim, CMAPS[scale]
    if scale == "signed" or scale not in CMAPS:
        m = mid if mid is not None and math.isfinite(mid) else 0.0
        lim = max(abs(lo - m), abs(hi - m)) or 1.0
        return "signed", m - lim, m + lim, CMAPS["signed"]
    if scale != "level" and lo <= 0.8 * hi:
        lo = 0.0  # a natural zero, close enough to the data to keep
    if hi <= lo:  # one value: a unit-wide range around it
        lo, hi = lo - 0.5, hi + 0.5
    return scale, lo, hi, CMAPS[scale]


def thin(n: int, limit: int = MAX_TICKS) -> list[int]:
    """Which of n tick positions to label: all up to `limit`, else every k-th."""
    step = max(1, math.ceil(n / limit))
    return list(range(0, n, step))


LINE_IN = 0.17  # the room one line of tick text needs across it, in inches
LABEL_CHARS = 32  # longer tick labels are broken into lines of this many characters


def set_ticks(ax, axis: str, labels: list[str]) -> None:
    """Label the categories 0..n-1 of one axis: every one when up to MAX_TOKEN_TICKS lines
    of text fit along the axis (the 58 receivers of an edge table: thinned to every other
    one, half the rows of a heatmap went unnamed), else thinned; x labels turn upright only
    when they would not fit side by side in the axes' width."""
    box = ax.get_position()
    along = (box.width * ax.figure.get_figwidth() if axis == "x"
             else box.height * ax.figure.get_figheight())
    n = len(labels)
    fits = n <= MAX_TOKEN_TICKS and n * LINE_IN <= along
    keep = list(range(n)) if fits else thin(n)
    # (long labels, an `all(...)` group's text, in lines: one line of 80 characters left
    # the axes no room)
    shown = [textwrap.fill(text(labels[i]), LABEL_CHARS, break_on_hyphens=False)
             for i in keep]
    if axis == "x":
        slot_in = ax.get_position().width * ax.figure.get_figwidth() / max(1, len(keep))
        longest = max((len(line) for s in shown for line in s.split("\n")), default=0)
        need_in = (longest + 1) * 0.08  # ~0.08 in a char
        ax.set_xticks(keep, shown, rotation=90 if need_in > slot_in else 0)
    else:
        ax.set_yticks(keep, shown)


def centre(scale: str, cinfo: dict[str, Any] | None = None) -> float | None:
    """The value a diverging scale is centred on, "no effect" (None for a sequential one):
    1 for a ratio, a raw signed column's `centre` (its target run's unpatched value), else 0."""
    if scale == "ratio":
        return 1.0
    if scale == "signed":
        mid = (cinfo or {}).get("centre")
        return float(mid) if isinstance(mid, (int, float)) and math.isfinite(mid) else 0.0
    return 0.0 if scale == "correlation" else None


def numeric_keys(keys: list[str], info: dict[str, Any]) -> list[str]:
    """The sweep columns that are numbers on a scale (a steering coefficient, a scale
    factor: the `scale` column), drawn as lines against the value itself. Layers, heads,
    positions and neurons are indices: categories."""
    named = info.get("numeric_keys", ["scale"])
    return [k for k in keys if k in named]


def _num(x: Any) -> str:
    return f"{float(x):.3g}" if isinstance(x, (int, float)) else str(x)


def value_label(col: str, cinfo: dict[str, Any], baselines: bool = True,
                colorbar: bool = False) -> str:
    """What a column's numbers mean, for a colorbar or a y axis:
    `ld normalized: 0 = corrupt (-0.68), 1 = clean (7.12)`; a colorbar also says when its
    colours are not centred on a no-effect value."""
    base = cinfo.get("baselines", {})

    def run(r: str) -> str:
        return f"{r} ({_num(base[r])})" if baselines and r in base else r

    if "zero" in cinfo and "one" in cinfo:
        return f"{col} normalized:\n0 = {run(cinfo['zero'])}, 1 = {run(cinfo['one'])}"
    if "ratio_to" in cinfo:
        r = cinfo["ratio_to"]
        return f"{col} normalized:\n0 = zero, 1 = {run(r)}"  # m / m_target
    if "centre_run" in cinfo and baselines:
        # the colour scale's centre, the bars' base, the dotted line of a line chart
        what = unpatched_value(col, cinfo["centre_run"], cinfo.get("centre"))
        # (a bar chart's title lists the unpatched values: its axis can be short)
        return f"{col}\n{'centred on the unpatched' if colorbar else 'no effect:'} {what}"
    if "uncentred" in cinfo and colorbar:
        return f"{col}\n(not centred: {cinfo['uncentred']} unpatched is not measured)"
    return col


def on_run(col: str, run: str) -> str:
    """`ld(corrupt)`: a column measured on a run; `logprob(" great") on neutral` for a
    column named by an expression (`logprob(" great")(neutral)` reads as a call)."""
    return f"{col}({run})" if col.isidentifier() else f"{col} on {run}"


def unpatched_value(col: str, run: str, value: Any) -> str:
    """`ld(corrupt) = −0.68`: a column's value on a run as it is, unpatched."""
    number = _num(value).replace("-", "\u2212", 1)  # a true minus, as the ticks have
    return f"{on_run(col, run)} = {number}"


def unpatched_note(col: str, cinfo: dict[str, Any]) -> str | None:
    """`unpatched: ld(corrupt) = −0.68, ld(clean) = 7.12` for a raw column whose runs'
    unpatched values are known (`unpatched`, as tables.table_unpatched gives them: a
    title's last line), else None."""
    sides = cinfo.get("unpatched") or {}
    parts = [unpatched_value(col, sides[k]["run"], sides[k]["value"])
             for k in ("target", "source") if k in sides]
    return "unpatched: " + ", ".join(parts) if parts else None


CHAR_IN = 0.085  # about the width of one character of medium text, in inches


def fit_colorbar_labels(fig) -> None:
    """Rewrap each colorbar's label to the colorbar's length once the figure is laid out:
    a label longer than a short colorbar (a heatmap of two rows) ran past both its ends."""
    bars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    labels = [ax.get_ylabel() for ax in bars]
    if not any(labels):
        return
    fig.draw_without_rendering()  # the layout, without drawing pixels
    for ax, label in zip(bars, labels):
        length = ax.get_position().height * fig.get_figheight()
        chars = max(12, int(1.25 * length / CHAR_IN))  # a little past its ends reads well
        lines = [w for line in label.split("\n") for w in (wrap(line, chars) or [line])]
        ax.set_ylabel("\n".join(lines))


def wrap(s: str, chars: int) -> list[str]:
    """`s` in lines of at most `chars` characters, balanced: as few lines as a greedy wrap
    needs, but each about as long as the others, so no word is left alone on a line."""
    import textwrap

    # `L*.attn.out @ last`, an edge `L0.H3.out -> L0.mlp.in` and `1 = clean (7.12)` stay on
    # one line (textwrap splits at ASCII spaces only); one longer than a line overflows it
    s = s.replace(" @ ", "\u00a0@\u00a0").replace(" -> ", "\u00a0->\u00a0")
    s = s.replace(" = ", "\u00a0=\u00a0")

    def lines_of(w: int) -> list[str]:
        return [line.replace("\u00a0", " ")
                for line in textwrap.wrap(s, w, break_long_words=False)]

    lines = lines_of(chars)
    if len(lines) <= 1:
        return lines
    for w in range(math.ceil(len(s) / len(lines)), chars + 1):
        balanced = lines_of(w)
        if len(balanced) == len(lines):
            return balanced
    return lines


def title(info: dict[str, Any], col: str | None, name: str, width: float = 6.0) -> str:
    """The operation, then what the column measures (normalization without baselines),
    wrapped to a figure `width` inches wide (a title is never clipped)."""
    chars = max(30, int(width * 9.5))
    head = info.get("title") or name
    lines = wrap(head, chars) or [name]
    if col is not None:
        cinfo = info.get("columns", {}).get(col, {})
        what = value_label(col, cinfo, baselines=False).replace("\n", " ")
        # a bare column name would be one word on a line of its own: say what it is
        lines += wrap(what if what != col else f"measured: {col}", chars)
        note = unpatched_note(col, cinfo)  # a raw column: its runs as they are, unbroken
        lines += wrap(note, chars) if note else []
    return text("\n".join(lines))


# Readable names of the site kinds a legend or panel title shows, the pattern after them.
_SITE_NAMES = {
    "embed": "embedding", "resid_pre": "residual stream (pre)",
    "resid_mid": "residual stream (mid)", "resid_post": "residual stream (post)",
    "attn.out": "attention outputs", "mlp.out": "MLP outputs", "mlp.pre": "MLP pre-activations",
    "mlp.post": "MLP activations", "attn.z": "attention z", "out": "head outputs",
    "z": "head z", "q": "head queries", "k": "head keys", "v": "head values",
    "pattern": "head patterns", "expert.out": "expert outputs", "shared.out": "shared expert",
    "logits": "logits",
}


def site_name(item: Any) -> str:
    """A site item as a legend entry or panel title: `residual stream (post): L*.resid_post`;
    a site the table names otherwise (or a kind without a name here) as written."""
    s = str(item)
    parts = s.split(" @")[0].split(".")
    while parts and (parts[0][:1] in ("L", "H", "E") and parts[0][1:2] in ("*", "{", "$")
                     or parts[0][:1] in ("L", "H", "E") and parts[0][1:].isdigit()):
        parts = parts[1:]
    name = _SITE_NAMES.get(".".join(parts))
    if name is None or name == s:
        return s
    return f"{name}: {s}"


def category_labels(key: str, values: list[Any], info: dict[str, Any]) -> tuple[list[str], str]:
    """Tick labels for the values of one sweep column, and the axis title. Positions get
    their tokens (when the run's prompts line up and the axis is not too long to read)."""
    positions = info.get("positions") or {}
    tokens = positions.get("tokens")
    if key == "pos" and tokens and len(values) <= MAX_TOKEN_TICKS and all(
            isinstance(v, (int, float)) and 0 <= int(v) < len(tokens) for v in values):
        labels = [token_text(tokens[int(v)]) for v in values]
        varies = any(str(tokens[int(v)]).endswith("*") for v in values)
        note = "; * varies across prompts" if varies else ""
        return labels, f"position ({positions.get('run', 'the run')} tokens{note})"
    return [_label(v) for v in values], key_title(key, info)


def key_title(key: str, info: dict[str, Any]) -> str:
    """An axis title for a sweep column (`steering coefficient` for steer's `scale`)."""
    return info.get("key_labels", {}).get(key) or {"pos": "position"}.get(key, key)


def _label(v: Any) -> str:
    """A sweep value as a tick label: `2` not `2.0`, and a true minus sign (as matplotlib's
    own numeric ticks have)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).replace("-", "\u2212", 1) if isinstance(v, (int, float)) else str(v)
