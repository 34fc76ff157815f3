"""resolve.expand_site: every match of a pattern, with its sweep-column key, equal to the
expansion written plainly (one tuple of the index columns per site, as before it built keys
a level at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchc.compiler import ast as A
from patchc.compiler.ir import Site
from patchc.compiler.modelspec import load_model_spec
from patchc.compiler.parse import parse
from patchc.compiler.resolve import Match, expand_index, expand_site, slice_bounds

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ["L*.H*.z", "L{0,1}.mlp.post[*]", "L1.mlp.post[3:7]", "L0.mlp.post[-4:-1]",
            "L*.mlp.post[0..5]", "embed", "L*.resid_pre", "L0.H1.z", "L1.H{0,1}.q",
            "L$l.mlp.out"]


def _plain(ref: A.SiteRef, model) -> list[Match]:
    kinds = {"layer": (ref.layer, model.n_layers), "head": (ref.head, model.n_heads)}
    layers = expand_index(*kinds["layer"], "layer", "layer") if ref.layer is not None \
        else [(None, None)]
    heads = expand_index(*kinds["head"], "head", "head") if ref.head is not None \
        else [(None, None)]
    width = model.d_mlp if ref.kind.startswith("mlp.") else model.d_model
    feats = [(None, None)] if ref.features is None or isinstance(ref.features, A.Slice) \
        else expand_index(ref.features, width, "features", "neuron")
    out = []
    for layer, lcol in layers:
        for head, hcol in heads:
            for feat, fcol in feats:
                key = tuple((c, v) for c, v in ((lcol, layer), (hcol, head), (fcol, feat))
                            if c is not None and v is not None)
                fsel = None if feat is None else (feat, feat + 1)
                if isinstance(ref.features, A.Slice):
                    fsel = slice_bounds(ref.features, width)
                out.append(Match((Site(ref.kind, layer, head, fsel),), key))
    return out


@pytest.mark.parametrize("pattern", PATTERNS)
def test_expand_site_equals_the_plain_expansion(pattern: str) -> None:
    model = load_model_spec("examples/models/tiny-gpt2", base_dir=str(ROOT))
    spec = parse(f"swap {pattern} @ last from a into b measure m\n")
    ref = spec.statements[0].sites[0]
    got = expand_site(ref, model)
    assert got == _plain(ref, model) and len(got) >= 1


def test_a_compile_expands_each_pattern_once(monkeypatch) -> None:
    """check keeps each pattern's matches (CheckedSpec.sites); lowering reuses them for the
    same pattern object and model, and expands anew for another model object."""
    import patchc.compiler.resolve as resolve
    from patchc.api import compile as compile_spec

    calls: list[str] = []
    real = resolve.expand_site
    monkeypatch.setattr(resolve, "expand_site",
                        lambda ref, model: calls.append(ref.text) or real(ref, model))
    text = (f'model "{ROOT}/examples/models/tiny-gpt2"\n'
            'data d = [{"clean": "When Mark and Lucy went to the station , Lucy gave", '
            '"corrupt": "When James and Mary went to the station , David gave", '
            '"answer": " Mark", "x": " Lucy"}]\n'
            "run clean = d.clean\nrun corrupt = d.corrupt\n"
            "metric ld = logit(d.answer) - logit(d.x)\n"
            "swap L*.mlp.post[0..7] @ each from clean into corrupt measure ld as t\n"
            "attribute L*.resid_pre @ each from clean into corrupt using atp measure ld as a\n")
    prog = compile_spec(text)
    assert sorted(calls) == ["L*.mlp.post", "L*.resid_pre"]
    memo = prog.checked.sites
    ref = prog.spec.statements[-1].sites[0]
    assert memo.expand(ref, prog.checked.model) is memo.expand(ref, prog.checked.model)
    other = load_model_spec("examples/models/tiny-gpt2", base_dir=str(ROOT))
    assert memo.expand(ref, other) == real(ref, prog.checked.model)
    assert calls.count("L*.resid_pre") == 2  # (another model object: expanded again)
