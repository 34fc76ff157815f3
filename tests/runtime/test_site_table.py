"""The whole site table, through every operation `check` accepts on it.

Every site kind of compiler/sites.py (and every TransformerLens alias, and feature slices) is
swapped, ablated (zero, mean, resample), steered, scaled, attributed (atp) and read, at every
position form (all, `@ last`, `@ each`, `@ 2`), on tiny GPT-2, Llama (grouped-query) and
GPT-NeoX (parallel blocks) models. The optimized plan and the naive interpreter must give the
same tables; a site swapped with its own value must leave the metric as the plain forward has
it; an alias must give its canonical site's numbers. What check refuses is refused with a
located error (a pattern has no fixed width for a vector; NeoX has no resid_mid).

Each family's statements go into one spec, so the walk costs one run per interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import family
from ops_common import CLEAN, HEAD, ROWS, hand_ld, per_example

from patchc.compiler.errors import PatchcError
from patchc.compiler.sites import SITE_KINDS, TL_ALIASES

FAMILIES = ["gpt2", "llama", "neox"]
POSITIONS = ["", " @ last", " @ each", " @ 2"]
PATTERNS = {"pattern", "attn.pattern"}


def concrete(kind: str) -> str:
    k = SITE_KINDS[kind]
    return ("L1." if k.layered else "") + ("H1." if k.headed else "") + kind


SITES = [concrete(k) for k in SITE_KINDS] + [
    "L1.mlp.post[3]", "L1.resid_post[2:6]", "L1.attn.z[0:8]", "L1.H1.pattern[0:2]",
    "L1.attn.pattern[1]",
]
# Every alias beside its canonical site (TransformerLens names are layered under blocks.N).
ALIASES = {(f"blocks.1.{a}" if SITE_KINDS[k].layered else a): concrete(k)
           for a, k in TL_ALIASES.items()}


def is_pattern(site: str) -> bool:
    return site.split(" @")[0].split("[")[0].split(".")[-1] == "pattern"


def operations(site: str) -> dict[str, str]:
    """Statements (without `measure`) of every operation on `site`; {i} names a vector."""
    ops = {
        "swap": f"swap {site} from clean into corrupt",
        "self": f"swap {site} from clean into clean",
        "zero": f"ablate {site} in clean",
        "mean": f"ablate {site} in clean with mean(corrupt)",
        "resample": f"ablate {site} in clean with resample(corrupt)",
        "scale": f"scale {site} in clean by 2.0",
        "atp": f"attribute {site} from clean into corrupt using atp",
    }
    if not is_pattern(site):
        ops["steer"] = f"steer {site} in clean by v{{i}}"
    return ops


# Sites of mixture-of-experts MLPs: the dense models here lack them (E209); the MoE families'
# own tests (test_families.py) walk them.
MOE = {k for k in SITE_KINDS if k == "router" or k.startswith(("expert.", "shared."))}


def has_site(fam: str, site: str) -> bool:
    if site.split(" @")[0].split("[")[0].split("L1.")[-1].split("H1.")[-1] in MOE:
        return False
    return not (fam == "neox" and "resid_mid" in site)


def walk_spec(fam: str) -> tuple[str, dict[str, tuple[str, str, str]]]:
    """One spec with every statement; table name -> (site, position, operation)."""
    lines, tables = [HEAD], {}
    for s, site in enumerate(x for x in SITES if has_site(fam, x)):
        base = site.split(" @")[0]
        if not is_pattern(site):
            lines.append(f"vector v{s} = mean(clean.{base} @ last) - mean(corrupt.{base} @ last)")
        for p, pos in enumerate(POSITIONS):
            for op, stmt in operations(site + pos).items():
                name = f"t{s}_{p}_{op}"
                tables[name] = (site, pos, op)
                lines.append(f"{stmt.format(i=s)}\n    measure ld\n    as {name}")
        for p, pos in enumerate(POSITIONS[:2] + POSITIONS[3:]):  # `read` takes fixed positions
            if "attn.pattern" in site:  # read per head (E363, below)
                continue
            tables[f"r{s}_{p}"] = (site, pos, "read")
            lines.append(f"read {site}{pos} in clean as r{s}_{p}")
    for a, (alias, canon) in enumerate(ALIASES.items()):
        if has_site(fam, canon):
            for op in ("swap", "zero"):
                stmt = operations(alias + " @ last")[op]
                tables[f"a{a}_{op}"] = (alias, " @ last", op)
                lines.append(f"{stmt}\n    measure ld\n    as a{a}_{op}")
    return "\n".join(lines) + "\n", tables


@pytest.fixture(scope="module")
def walked(models_dir):
    """family -> (its Fam, the tables' index, optimized results, naive results)."""
    out = {}
    for name in FAMILIES:
        fam = family(name, models_dir)
        spec, tables = walk_spec(name)
        out[name] = (fam, tables, fam.run(spec, naive=False), fam.run(spec, naive=True))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_every_site_and_operation_runs_and_agrees(walked, name):
    fam, tables, opt, naive = walked[name]
    for table, what in tables.items():
        if what[2] == "read":
            x, y = opt.activations(table), naive.activations(table)
            assert list(x) == list(y) and len(x) == 1, what
            for k in x:
                assert x[k].shape == y[k].shape and x[k].shape[0] == len(ROWS), what
                assert torch.allclose(x[k].float(), y[k].float(), atol=1e-5), what
            continue
        a, b = opt[table], naive[table]
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, what
        assert len(a) == (len(fam.ids(CLEAN)[0]) if "each" in what[1] else 1), what
        x, y = a["ld"].to_numpy(), b["ld"].to_numpy()
        assert np.isfinite(x).all(), what
        assert np.allclose(x, y, rtol=1e-5, atol=1e-5), (what, x, y)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_site_swapped_with_its_own_value_changes_nothing(walked, name):
    fam, tables, opt, naive = walked[name]
    plain = hand_ld(fam, CLEAN)  # a plain forward of the model, no hooks
    for table, (site, pos, op) in tables.items():
        if op != "self" or "each" in pos:
            continue
        for res, exact in ((naive, True), (opt, False)):
            got = per_example(res, table, "ld")
            # Bit-exact where the forward has the plain one's shapes (the naive interpreter);
            # the plan stacks experiments and trims the logits (other matmul shapes), and a
            # pattern hook computes attention explicitly (the model itself runs sdpa).
            tol = 0.0 if exact and not is_pattern(site) else 1e-5
            assert torch.allclose(got, plain, rtol=0, atol=tol), (site, pos, got - plain)


@pytest.mark.parametrize("name", FAMILIES)
def test_an_alias_is_its_canonical_site(walked, name):
    fam, tables, opt, _ = walked[name]
    canon_of = {(site, pos, op): t for t, (site, pos, op) in tables.items()}
    for table, (alias, pos, op) in tables.items():
        if alias in ALIASES:
            same = canon_of[(ALIASES[alias], pos, op)]
            assert torch.equal(torch.tensor(opt[table]["ld"].to_numpy()),
                               torch.tensor(opt[same]["ld"].to_numpy())), (alias, op)


@pytest.mark.parametrize("stmt", [
    "steer L1.H1.pattern in clean by v",
    "steer L1.attn.pattern @ last in clean by v",
])
def test_a_vector_on_a_pattern_is_a_located_check_error(models_dir, stmt):
    fam = family("gpt2", models_dir)
    body = HEAD + "vector v = mean(clean.L1.resid_post @ last)\n" + stmt + "\n    measure ld\n"
    with pytest.raises(PatchcError) as err:
        fam.run(body)
    line = fam.spec(body).splitlines().index(stmt) + 1
    assert f":{line}:{stmt.index(' v') + 2}: error[E333]" in str(err.value)
    assert "attention pattern" in str(err.value)


def test_a_vector_from_a_pattern_is_a_located_check_error(models_dir):
    fam = family("gpt2", models_dir)
    body = HEAD + "vector v = mean(clean.L1.H1.pattern @ last)\n"
    body += "steer L1.resid_post in clean by v\n    measure ld\n"
    with pytest.raises(PatchcError) as err:
        fam.run(body)
    assert "E333" in str(err.value) and "attention pattern" in str(err.value)


def test_reading_all_heads_patterns_is_a_located_check_error(models_dir):
    fam = family("gpt2", models_dir)
    with pytest.raises(PatchcError, match=r":\d+:6: error\[E363\]"):
        fam.run(HEAD + "read L1.attn.pattern @ last in clean as r\n")


def test_resid_mid_of_a_parallel_block_is_refused_by_check(models_dir):
    fam = family("neox", models_dir)
    with pytest.raises(PatchcError, match="E207"):
        fam.run(HEAD + "swap L1.resid_mid from clean into corrupt\n    measure ld\n")


def test_the_walk_covers_the_table():
    """Every kind and alias of the site table is in the walk (a new kind joins it)."""
    walked_kinds = {s.split("[")[0].split("L1.")[-1].split("H1.")[-1] for s in SITES}
    assert set(SITE_KINDS) <= walked_kinds
    assert len(ALIASES) == len(TL_ALIASES)
    assert len(ROWS) > 1  # resample needs another example
