"""Compact sweeps: one IR value for many experiments that differ only in where they write.

A statement such as `swap L*.mlp.post[*] @ each from clean into corrupt` is, per layer, one
Forward whose `sweep` field (a `SweepSpec`) stands for every experiment of that layer: the
member forwards are the run's baked writes followed by ONE write made from the spec's
template (mode, scale, source) at one member site and position. Members are never nodes:
they are the product sites x positions x variants (scalar values of `scale`/`steer`),
filtered by the statement's `where`, in that order (sites outermost, variants innermost,
the order the per-experiment lowering made rows in). Everything that needs members makes
them from the index set on demand, as numpy arrays:

  - `members(space)`: the flat indices (into the product) of the kept members, row order;
  - `split(space, flat)`: (site, position, variant) index arrays of flat indices;
  - `key_columns(space, ...)`: the table's sweep columns as arrays (results assembly);
  - `member_write(forward, spec, j, ...)`: member j's Write, for the reference interpreter.

A Forward with a sweep carries in `inputs` the values its writes gather from: for
`replace`/`mean`/`resample`, one Read per whole site (kind, layer, head; every feature, all
positions) of the source forward, in the order of `SweepSpec.whole`; for `add`, one Vector
per variant. Its Metrics evaluate to [members, examples]; a Table lists it in `sweeps`
(a `SweepRows`), not one `Row` per member.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .ir import Positions, Site, Write

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where members are made (not at import: `patchc check` of a spec without
# `where` never needs it and starts faster).

Key = tuple[tuple[str, Any], ...]

# The modes a sweep's template may have (ir.Write's meaning, one write per member); the
# edge modes are those of an edge sweep, whose space is an ir_edges.EdgeSet.
MODES = ("replace", "zero", "mean", "resample", "mul", "add")
EDGE_MODES = ("edge", "edge_mean", "edge_zero")
# Modes whose new value comes from a Read of a whole site (sliced per member).
READ_MODES = ("replace", "mean", "resample")


@dataclass(frozen=True, slots=True)
class Space:
    """The index set of a sweep: sites x positions x variants, filtered by `where`.

    `site_keys[i]` are site i's sweep columns (`layer`, `head`, `neuron`...), `pos_keys[p]`
    the `pos` column of position p (None: the op binds no `pos`), `variants[v]` the `scale`
    column of variant v (None: no scalar sweep). `prefix` is bound in every row (`site`,
    when an operation lists several site items). `where` holds the ast.Cond filters."""

    sites: tuple[Site, ...]
    site_keys: tuple[Key, ...]
    positions: tuple[Positions, ...]
    pos_keys: tuple[int | None, ...] = (None,)
    variants: tuple[float | None, ...] = (None,)
    prefix: Key = ()
    where: tuple[Any, ...] = ()

    def __hash__(self) -> int:
        # Cheap: the member functions below are cached by Space, and a layer has thousands
        # of sites (equality still compares everything; tuples compare by identity first).
        return hash((len(self.sites), self.sites[:1], self.sites[-1:], self.positions,
                     self.pos_keys, self.variants, self.prefix, len(self.where)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.sites), len(self.positions), len(self.variants)

    @property
    def size(self) -> int:
        s, p, v = self.shape
        return s * p * v


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """What a sweep Forward's members write: `mode` at each member's site and position, with
    `scales[v]` (the write's scale for variant v) and the `seed` of `resample`. `whole` lists
    the whole sites (kind, layer, head) the Forward's Read inputs are of, in input order."""

    space: Space
    mode: str
    scales: tuple[float, ...] = (1.0,)
    seed: int | None = None
    whole: tuple[Site, ...] = ()

    def __len__(self) -> int:
        return count(self.space)


@dataclass(frozen=True, slots=True)
class SweepRows:
    """A table's rows that are a sweep Forward's members: `values` and `normalize` as in
    ir.Row (the Metric ids, now of [members, examples] values), `count` members of `space`
    (the sweep's own index set: its row keys). The members of a compact edge Estimate
    (ir_edges.py) are listed the same way: `forward` is then that Estimate, `values` its
    Estimates (one per measure) and `space` its ir_edges.EdgeSet."""

    forward: str
    values: tuple[tuple[str, str], ...]
    normalize: tuple[tuple[str, tuple[str, str | None]], ...] = ()
    count: int = 0
    space: Any = None  # Space, or ir_edges.EdgeSet


def whole_site(site: Site) -> Site:
    """The site every feature of `site` belongs to (what a sweep's Read input is of)."""
    return Site(site.kind, site.layer, site.head)


# ---------------------------------------------------------------------------------------------
# Members

_OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}


def _columns(space: Space) -> dict[str, np.ndarray]:
    """Each bound sweep column as an array broadcastable over (sites, positions, variants)."""
    import numpy as np

    s, p, v = space.shape
    out: dict[str, np.ndarray] = {}
    for col, val in space.prefix:
        out[col] = np.array(val, dtype=object).reshape(1, 1, 1)
    names = dict.fromkeys(c for key in space.site_keys[:1] for c, _ in key)
    for col in names:
        out[col] = np.array([dict(k)[col] for k in space.site_keys]).reshape(s, 1, 1)
    if space.pos_keys[0] is not None:
        out["pos"] = np.array(space.pos_keys).reshape(1, p, 1)
    if space.variants[0] is not None:
        out["scale"] = np.array(space.variants, dtype=float).reshape(1, 1, v)
    return out


def bound_columns(space: Space) -> tuple[str, ...]:
    """The sweep columns a member's key binds, in key order."""
    if not isinstance(space, Space):  # an edge set (ir_edges.py) lists its members' keys
        return space.bound_columns()
    cols = [c for c, _ in space.prefix] + [c for key in space.site_keys[:1] for c, _ in key]
    if space.pos_keys[0] is not None:
        cols.append("pos")
    if space.variants[0] is not None:
        cols.append("scale")
    return tuple(cols)


@lru_cache(maxsize=64)
def members(space: Space) -> np.ndarray:
    """Flat indices into the product (sites, positions, variants) of the members kept by
    `where`, in row order (int64)."""
    import numpy as np

    shape = space.shape
    keep = np.ones(shape, dtype=bool)
    cols = _columns(space) if space.where else {}
    for c in space.where:
        if c.left not in cols or isinstance(c.right, str) and c.right not in cols:
            continue  # a column this sweep does not bind does not filter it
        right = cols[c.right] if isinstance(c.right, str) else c.right
        keep &= np.broadcast_to(_OPS[c.op](cols[c.left], right), shape).astype(bool)
    out = np.flatnonzero(keep.ravel())
    out.flags.writeable = False
    return out


def count(space: Space) -> int:
    if not space.where:
        return space.size
    return int(members(space).size)


def split(space: Space, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(site, position, variant) indices of flat member indices."""
    _, p, v = space.shape
    return flat // (p * v), (flat // v) % p, flat % v


def key_columns(space: Space) -> dict[str, np.ndarray]:
    """The sweep columns of every member, in row order, as arrays (object for `site`)."""
    import numpy as np

    if not isinstance(space, Space):  # an edge set (ir_edges.py)
        return space.key_columns()

    s_idx, p_idx, v_idx = split(space, members(space))
    n = s_idx.size
    out: dict[str, np.ndarray] = {}
    for col, val in space.prefix:
        out[col] = np.full(n, val, dtype=object)
    names = dict.fromkeys(c for key in space.site_keys[:1] for c, _ in key)
    for col in names:
        out[col] = np.array([dict(k)[col] for k in space.site_keys])[s_idx]
    if space.pos_keys[0] is not None:
        out["pos"] = np.array(space.pos_keys)[p_idx]
    if space.variants[0] is not None:
        out["scale"] = np.array(space.variants, dtype=float)[v_idx]
    return out


def member_key(space: Space, j: int) -> Key:
    """Row key of member j (row order)."""
    s, p, v = (int(x[0]) for x in split(space, members(space)[j:j + 1]))
    key = space.prefix + space.site_keys[s]
    if space.pos_keys[0] is not None:
        key += (("pos", space.pos_keys[p]),)
    if space.variants[0] is not None:
        key += (("scale", space.variants[v]),)
    return key


def layer_of(spec: SweepSpec) -> int | None:
    """The first decoder block a member's write changes (`embed`: 0), for share_prefix."""
    layers = [0 if s.kind == "embed" else s.layer for s in spec.space.sites]
    known = [x for x in layers if x is not None]
    return min(known) if known else None


@lru_cache(maxsize=64)
def site_wholes(space: Space) -> tuple[tuple[Site, ...], np.ndarray]:
    """The distinct whole sites of the space's sites (in first appearance) and, per site,
    the index of its own among them: made once per space (a dictionary's 16k latents share
    one whole site; a layer's heads have one each)."""
    import numpy as np

    at: dict[tuple, int] = {}
    idx = np.fromiter((at.setdefault((s.kind, s.layer, s.head), len(at)) for s in space.sites),
                      dtype=np.int64, count=len(space.sites))
    idx.flags.writeable = False
    return tuple(Site(k, layer, h) for k, layer, h in at), idx


@lru_cache(maxsize=64)
def whole_index(spec: SweepSpec) -> np.ndarray:
    """Per site of the space, the index of its whole site in `spec.whole` (-1: none)."""
    import numpy as np

    wholes, idx = site_wholes(spec.space)
    at = {w: i for i, w in enumerate(spec.whole)}
    out = np.array([at.get(w, -1) for w in wholes], dtype=np.int64)[idx]
    out.flags.writeable = False
    return out


@lru_cache(maxsize=64)
def execution_order(space: Space) -> np.ndarray:
    """Row indices of the members in the order they run: by position variant (an `@ each`
    chunk then starts at its position), then row order (compiler/schedule_sweep.py)."""
    import numpy as np

    _, p_idx, _ = split(space, members(space))
    out = np.argsort(p_idx, kind="stable")
    out.flags.writeable = False
    return out


def member_write(spec: SweepSpec, s: int, p: int, v: int, inputs: tuple[str, ...] = ()
                 ) -> Write:
    """The Write member (site s, position p, variant v) applies after the run's writes, as
    the per-experiment lowering would make it (inputs: the ids it would read; the reference
    interpreter passes their values itself)."""
    return Write(spec.space.sites[s], spec.space.positions[p], spec.mode, inputs,
                 spec.scales[v], spec.seed)


def _ints(values: list[int]) -> str:
    """`3`, `0..11` for a run of consecutive integers, else `{1, 5, 9}` (8 shown at most)."""
    if len(values) == 1:
        return str(values[0])
    if len(values) > 1 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    shown = ", ".join(map(str, values[:8]))
    return "{" + shown + (f", ... ({len(values)})" if len(values) > 8 else "") + "}"


def describe(spec: SweepSpec) -> str:
    """One line: `sweep 36 x replace mlp.post L3 [0..3071] @ {0..15} where ...`."""
    space = spec.space
    if not isinstance(space, Space):  # an edge sweep (ir_edges.py)
        return space.describe_sweep(spec.mode)
    first = space.sites[0]
    # (a dictionary's latents carry its host's layer: its name says where it is)
    layers = [] if first.kind.startswith("dict:") else \
        sorted({s.layer for s in space.sites if s.layer is not None})
    heads = sorted({s.head for s in space.sites if s.head is not None})
    kind = first.kind.split(":", 1)[1] if first.kind.startswith("dict:") else first.kind
    text = f"sweep {count(space)} x {spec.mode} {kind}"
    if layers:
        text += f" L{_ints(layers)}"
    if heads:
        text += f" H{_ints(heads)}"
    feats = sorted({s.features for s in space.sites if s.features is not None})
    if feats and all(b - a == 1 for a, b in feats):
        text += f" [{_ints([a for a, _ in feats])}]"
    elif feats:
        text += " [" + ", ".join(f"{a}:{b}" for a, b in feats[:4]) + \
            (" ..." if len(feats) > 4 else "") + "]"
    poss = [str(p) for p in space.positions]
    if len(poss) > 1 and all(p.kind == "index" for p in space.positions):
        text += " @ each " + _ints([p.lo for p in space.positions])
    else:
        text += " @ " + (poss[0] if len(poss) == 1 else "{" + ", ".join(poss[:4]) +
                         (f", ... ({len(poss)})" if len(poss) > 4 else "") + "}")
    if space.variants[0] is not None:
        text += " scale {" + ", ".join(f"{v:g}" for v in space.variants) + "}"
    elif spec.mode in ("mul", "add") and spec.scales[0] != 1.0:
        text += f" scale={spec.scales[0]:g}"
    if spec.seed is not None:
        text += f" seed={spec.seed}"
    if space.where:
        text += " where " + " and ".join(
            f"${c.left} {c.op} {c.right if isinstance(c.right, int) else '$' + c.right}"
            for c in space.where)
    return text
