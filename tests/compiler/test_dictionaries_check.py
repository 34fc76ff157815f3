"""`sae` and `transcoder` declarations and latent sites in the checker and the lowerer:
cfg.json alone is read (the weight files here are empty: check never opens them), every
mistake is a located error, and latents resolve and lower like other sites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from checkmodels import Models, build

from patchc.compiler.check import check
from patchc.compiler.errors import PatchcError
from patchc.compiler.ir import Forward, Read, Site, Write
from patchc.compiler.ir_sweep import key_columns
from patchc.compiler.lower import lower
from patchc.compiler.parse import parse
from patchc.compiler.printer import format_spec


def _folder(root: Path, name: str, cfg: dict, weights: str = "sae_weights.safetensors"
            ) -> str:
    path = root / "saes" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    if weights:
        (path / weights).write_bytes(b"")
    return f"saes/{name}"


@pytest.fixture(scope="module")
def models() -> Models:
    m = build()
    root = m.root
    _folder(root, "relu64", {"architecture": "standard", "d_in": 64, "d_sae": 128,
                             "apply_b_dec_to_input": True,
                             "metadata": {"hook_name": "blocks.1.hook_resid_post"}})
    _folder(root, "topk64", {"architecture": "topk", "d_in": 64, "d_sae": 256, "k": 8})
    _folder(root, "legacy", {"d_in": 64, "d_sae": 32, "hook_point": "blocks.0.hook_mlp_out",
                             "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
                             "normalize_activations": True})
    _folder(root, "narrow", {"architecture": "standard", "d_in": 16, "d_sae": 32})
    _folder(root, "gated", {"architecture": "gated", "d_in": 64, "d_sae": 32})
    _folder(root, "tc", {"architecture": "transcoder", "d_in": 64, "d_out": 64, "d_sae": 96,
                         "apply_b_dec_to_input": False})
    _folder(root, "tc_hook", {"architecture": "transcoder", "d_in": 64, "d_out": 64,
                              "d_sae": 32, "hook_name": "blocks.2.ln2.hook_normalized"})
    _folder(root, "tc_far", {"architecture": "transcoder", "d_in": 64, "d_out": 64,
                             "d_sae": 32, "hook_name": "blocks.7.ln2.hook_normalized"})
    _folder(root, "z_hook", {"architecture": "standard", "d_in": 64, "d_sae": 32,
                             "metadata": {"hook_name": "blocks.0.attn.hook_z"}})
    _folder(root, "noweights", {"architecture": "standard", "d_in": 64, "d_sae": 8}, "")
    _folder(root, "badnorm", {"architecture": "standard", "d_in": 64, "d_sae": 8,
                              "normalize_activations": "whiten"})
    (root / "saes" / "broken").mkdir(exist_ok=True)
    (root / "saes" / "broken" / "cfg.json").write_text("{not json")
    (root / "saes" / "broken" / "sae_weights.safetensors").write_bytes(b"")
    return m


HEAD = """model "gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
"""


def _check(models: Models, body: str):
    return check(parse(HEAD + body, "case.patch", models.spec_dir()))


def _errors(models: Models, body: str) -> list[PatchcError]:
    with pytest.raises(PatchcError) as info:
        _check(models, body)
    return info.value.errors


CASES = [  # id, body, code, line, col, message fragment
    ("missing_folder", 'sae s1 = "saes/nope" at L1.resid_post', "E381", 6, 10,
     "no dictionary folder"),
    ("folder_typo", 'sae s1 = "saes/relu46" at L1.resid_post', "E381", 6, 10,
     "saes/relu46"),
    ("broken_json", 'sae s1 = "saes/broken" at L1.resid_post', "E382", 6, 10,
     "not valid JSON"),
    ("unknown_architecture", 'sae s1 = "saes/gated" at L1.resid_post', "E383", 6, 10,
     '"gated" is not supported'),
    ("bad_normalization", 'sae s1 = "saes/badnorm" at L1.resid_post', "E383", 6, 10,
     '"whiten"'),
    ("transcoder_as_sae", 'sae s1 = "saes/tc" at L1.resid_post', "E383", 6, 10,
     'a sae with architecture "transcoder"'),
    ("width", 'sae s1 = "saes/narrow" at L1.resid_post', "E384", 6, 27,
     "d_in = 16, but L1.resid_post is 64 wide"),
    ("width_head", 'sae s1 = "saes/relu64" at L0.H1.z', "E384", 6, 27, "L0.H1.z is 16 wide"),
    ("pattern_host", 'sae s1 = "saes/relu64" at L*.resid_post', "E385", 6, 28,
     "is a pattern"),
    ("position_host", 'sae s1 = "saes/relu64" at L1.resid_post @ last', "E385", 6, 27,
     "without [...] or @"),
    ("transcoder_site", 'transcoder t = "saes/tc" at L1.mlp.out', "E385", 6, 29,
     "one layer's MLP, Ll.mlp"),
    ("logits_host", 'sae s1 = "saes/relu64" at logits', "E385", 6, 27, "fixed-width"),
    ("site_name", 'sae L1 = "saes/relu64" at L1.resid_post', "E386", 6, 5,
     "reads as a site"),
    ("kind_name", 'sae embed = "saes/relu64" at L1.resid_post', "E386", 6, 5,
     "reads as a site"),
    ("latent_range", 'sae s1 = "saes/relu64" at L1.resid_post\n'
     "swap s1[128] from clean into corrupt  measure ld", "E387", 7, 9, "s1 has 128 latents"),
    ("latent_slice", 'sae s1 = "saes/relu64" at L1.resid_post\n'
     "swap s1[100:200] from clean into corrupt  measure ld", "E387", 7, 9,
     "outside s1's 128 latents"),
    ("latent_layer", 'sae s1 = "saes/relu64" at L1.resid_post\n'
     "swap L0.s1 from clean into corrupt  measure ld", "E387", 7, 6, "no layer or head"),
    ("duplicate_host", 'sae s1 = "saes/relu64" at L1.resid_post\n'
     'sae s2 = "saes/topk64" at L1.resid_post', "E385", 7, 27, "already has the sae `s1`"),
    ("duplicate_name", 'sae ioi = "saes/relu64" at L1.resid_post', "E308", 6, 5,
     "already declared"),
    ("no_at_no_hook", 'sae s1 = "saes/topk64"', "E385", 6, 10, "needs `at SITE`"),
    ("hook_out_of_range", 'sae s1 = "saes/relu64"\nsae s2 = "saes/legacy"\n'
     'transcoder t = "saes/tc_far"', "E201", 8, 16, "got L7"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_located_errors(models, case):
    _id, body, code, line, col, fragment = case
    errors = _errors(models, body + "\n")
    found = [(e.code, e.line, e.col) for e in errors]
    assert (code, line, col) in found, [e.render() for e in errors]
    err = next(e for e in errors if (e.code, e.line, e.col) == (code, line, col))
    assert fragment in err.message, err.render()
    if _id == "folder_typo":  # a close name in the folder is proposed; the path is normal
        assert "/./" not in err.message and err.hint and err.hint.endswith('saes/relu64"?')
    assert len(errors) == 1, [e.render() for e in errors]


def test_latents_resolve_and_lower(models):
    checked = _check(models, 'sae s1 = "saes/relu64" at L1.resid_post\n'
                     "swap s1[*] @ last from clean into corrupt  measure ld  as feats\n"
                     "swap s1[3:7], s1.err from clean into corrupt  measure ld  as joint\n")
    (info,) = checked.model.dictionaries
    assert (info.d_in, info.d_sae, info.architecture, info.host) == (
        64, 128, "standard", Site("resid_post", 1))
    assert info.apply_b_dec_to_input and not checked.warnings
    ir = lower(checked)
    feats, joint = ir.tables
    # The latent sweep is one compact Forward (its index set: 128 latents at `last`), not
    # one Forward per latent; the slice and the error term are an experiment each.
    assert feats.columns[0] == "feature" and not feats.rows
    (block,) = feats.sweeps
    assert block.count == 128
    assert key_columns(block.space)["feature"].tolist() == list(range(128))
    sweep = ir.node(block.forward)
    assert [str(s) for s in sweep.sweep.space.sites[:2]] == ["s1[0]", "s1[1]"]
    writes = {str(w.site) for _, w in ir.of_type(Write)}
    assert {"s1[3:7]", "s1.err"} <= writes
    # One Read of the whole latent vector per run serves the sweep: no Read per latent (the
    # runtime cuts it to each member's latent and position). Sites carry the host's layer, L1.
    reads = [r for _, r in ir.of_type(Read) if r.site.kind == "dict:s1"]
    assert {r.site for r in reads} == {Site("dict:s1", 1)} and len(reads) == 2
    forwards = dict(ir.of_type(Forward))
    assert len(forwards) == 5  # clean, corrupt, the sweep, the slice's and the error's swaps
    # The sweep is gated on the whole latents of both runs, and stands for the corrupt run's
    # base forward; a swap of the error term is not gated.
    assert len({ir.node(r).forward for r in sweep.sparse}) == len(sweep.sparse) == 2
    assert {ir.node(r).site for r in sweep.sparse} == {Site("dict:s1", 1)}
    assert forwards[sweep.same_as].run == "corrupt" and not forwards[sweep.same_as].writes
    sliced, err = (ir.node(ir.node(r.values[0][1]).forward) for r in joint.rows)
    assert len(sliced.sparse) == 2 and not err.sparse and err.same_as is None


def test_legacy_config_and_hook_warning(models):
    """A pre-6.0 SAELens config (hook_point, activation_fn_str topk, a boolean
    normalize_activations) is read as SAELens reads it; a hook_name naming another site
    than `at` warns (W381)."""
    checked = _check(models, 'sae s1 = "saes/legacy" at L1.resid_post\n')
    (info,) = checked.model.dictionaries
    assert (info.architecture, info.k, info.normalize_activations) == (
        "topk", 4, "expected_average_only_in")
    assert [w.code for w in checked.warnings] == ["W381"]
    assert "blocks.0.hook_mlp_out" in checked.warnings[0].message


def test_transcoder_host_and_tl_names(models):
    checked = _check(models, 'transcoder t = "saes/tc" at L1.mlp\n'
                     'sae s1 = "saes/relu64" at blocks.1.hook_resid_post\n'
                     "attribute t[*] @ last from clean into corrupt using atp  measure ld\n")
    tc, s1 = checked.model.dictionaries
    assert tc.host == Site("mlp.out", 1) and tc.reads_mlp_input and tc.d_out == 64
    assert s1.host == Site("resid_post", 1) and not checked.warnings


def test_printer_round_trip(models):
    text = HEAD + ('sae s1 = "saes/relu64" at L1.resid_post\n'
                   'transcoder t = "saes/tc" at L1.mlp\n\n'
                   "swap s1[*] @ last, s1[2:4], s1.err @ {1, 2} from clean into corrupt\n")
    spec = parse(text, "case.patch", models.spec_dir())
    again = format_spec(spec)
    assert 'sae s1 = "saes/relu64" at L1.resid_post' in again
    assert 'transcoder t = "saes/tc" at L1.mlp' in again
    assert "s1[*] @ last, s1[2:4], s1.err @ {1, 2}" in again
    assert format_spec(parse(again, "case.patch", models.spec_dir())) == again


def test_site_from_hook_name(models):
    """Without `at`, the site is the one cfg.json's TransformerLens hook_name names."""
    checked = _check(models, 'sae s1 = "saes/relu64"\nsae zs = "saes/z_hook"\n'
                     'sae m = "saes/legacy"\ntranscoder t = "saes/tc_hook"\n'
                     "swap s1[0], zs[1], m[2], t[3] from clean into corrupt  measure ld\n")
    hosts = {d.name: d.host for d in checked.model.dictionaries}
    assert hosts == {"s1": Site("resid_post", 1), "zs": Site("attn.z", 0),
                     "m": Site("mlp.out", 0), "t": Site("mlp.out", 2)}
    assert not checked.warnings
    text = 'sae s1 = "saes/relu64"\n'
    assert format_spec(parse(text, "x.patch", models.spec_dir())).endswith(text)


def test_no_cascade_after_a_failed_declaration(models):
    """A dictionary whose declaration failed reports once: its latents in later statements
    raise nothing more."""
    errors = _errors(models, 'sae s1 = "saes/narrow" at L1.resid_post\n'
                     "swap s1[*] @ last from clean into corrupt  measure ld\n"
                     "read s1, s1.err in clean\n"
                     "swap embed from clean into corrupt  measure ld\n")
    assert [e.code for e in errors] == ["E384"], [e.render() for e in errors]


def test_latents_of_a_shared_kv_head_warn(models):
    """On a grouped-query model, writing latents of an SAE at a query head's k writes the kv
    head other query heads share (W302, as for the site itself)."""
    _folder(models.root, "k16", {"architecture": "standard", "d_in": 8, "d_sae": 16})
    spec = parse('model "llama"\ndata ioi = "data/ioi.jsonl"\nrun clean = ioi.clean\n'
                 'run corrupt = ioi.corrupt\nmetric ld = logit(ioi.answer) - '
                 'logit(ioi.distractor)\nsae sk = "saes/k16" at L0.H1.k\n'
                 "swap sk[*] @ last from clean into corrupt  measure ld\n"
                 "read sk in clean\n", "case.patch", models.spec_dir())
    checked = check(spec)
    assert [w.code for w in checked.warnings] == ["W302"]
    assert checked.warnings[0].span.line == 7


@pytest.mark.parametrize("site, hint", [
    ("s2[6]", "no site or dictionary is called s2; the dictionaries declared are s1"),
    ("s11[6]", "did you mean s1?"),
    ("s1.error", "did you mean s1.err?"),
    ("s1.er", "did you mean s1.err?"),
    ("foo[3]", None),  # checked below: no dictionary declared in that spec
])
def test_dictionary_name_typos_are_hinted(models, site, hint):
    """A new user's typo in a dictionary's name or its error term names the right one."""
    if hint is None:
        [e] = _errors(models, f"swap {site} from clean into corrupt  measure ld\n")
        assert e.code == "E200" and "sae NAME" in (e.hint or ""), e.render()
        return
    [e] = _errors(models, 'sae s1 = "saes/relu64" at L1.resid_post\n'
                  f"swap {site} from clean into corrupt  measure ld\n")
    assert (e.line, e.col) == (7, 6)
    assert e.hint == hint, e.render()


@pytest.mark.parametrize("trained, warns", [
    ("llama-gqa", True),
    ("gpt2-small", False),  # SAELens names models the TransformerLens way
    ("openai-community/gpt2", False),
    (None, False),  # no model_name: nothing to compare
])
def test_dictionary_trained_on_another_model_warns(models, trained, warns):
    cfg = {"architecture": "standard", "d_in": 64, "d_sae": 16}
    if trained is not None:
        cfg["metadata"] = {"model_name": trained}
    folder = _folder(models.root, f"from_{str(trained).replace('/', '_')}", cfg)
    checked = _check(models, f'sae s1 = "{folder}" at L1.resid_post\n')
    found = [w for w in checked.warnings if w.code == "W473"]
    assert bool(found) == warns, [w.render() for w in checked.warnings]
    if warns:
        assert found[0].message == (f"sae `s1` was trained on the model '{trained}', but the "
                                    "spec's model is 'gpt2'")
        assert (found[0].line, found[0].col) == (6, 10)


def test_check_reads_only_cfg_json_and_a_run_needs_the_weights(models: Models, tmp_path):
    """A folder with cfg.json alone checks (check never reads the weights); running it
    is E381 at the dictionary's path, before any model weight loads, unless the caller
    passes the SAELens object for it."""
    from patchc.compiler.check_dicts import require_weights

    checked = _check(models, 'sae s1 = "saes/noweights" at L1.resid_post')
    (info,) = checked.model.dictionaries
    assert info.ok and info.weights == ""
    spec = parse(HEAD + 'sae s1 = "saes/noweights" at L1.resid_post\n', "case.patch",
                 models.spec_dir())
    with pytest.raises(PatchcError) as got:
        require_weights(spec, checked.model.dictionaries, set())
    e = got.value
    assert (e.code, e.line, e.col) == ("E381", 6, 10) and "a run needs the weights" in e.message
    require_weights(spec, checked.model.dictionaries, {"s1"})  # the object stands in
