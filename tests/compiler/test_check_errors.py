"""Invalid specs: each is reported with its code, line, column and a telling message, and
several mistakes in one spec are all reported, in line order."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from checkmodels import Models, build  # noqa: E402

from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import PatchcError, SpecErrors  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

HEADS = {
    # lines 1-5; a case's own lines start at line 6
    "gpt2": '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
''',
    "neox": '''model "./neox"
run a = ["I love this"]
run b = ["I hate this"]
metric m = logit(" great")
#
''',
    "ragged": '''model "./gpt2"
data r = "data/ioi_ragged.jsonl"
run a = r.clean
run b = r.corrupt
metric ld = logit(r.answer) - logit(r.distractor)
''',
    "none": "",
}

LONG = " ".join(["the"] * 70)

# (id, head, body, code, line, col, message fragment)
CASES = [
    ("measured_twice", "gpt2", "swap L0.mlp.out from clean into corrupt  measure ld, ld normalized",
     "E327", 6, 54, "the result column `ld` is measured twice"),
    ("swap_from_noised_run", "gpt2",
     "run noisy = ioi.clean with noise(embed @ 1, std=0.1, samples=3, seed=1)\n"
     "swap L0.mlp.out from noisy into clean  measure ld",
     "E352", 7, 22, "run `noisy` is noised with 3 samples per example, `clean` with 1"),
    ("layer_out_of_range", "gpt2", "swap L12.H0.z from clean into corrupt  measure ld",
     "E201", 6, 6, "model has 4 layers (L0..L3); got L12"),
    ("head_out_of_range", "gpt2", "swap L1.H9.z from clean into corrupt  measure ld",
     "E202", 6, 6, "model has 4 heads (H0..H3); got H9"),
    ("negative_layer_out_of_range", "gpt2", "ablate L-5.mlp.out in clean  measure ld",
     "E201", 6, 8, "got L-5"),
    ("feature_out_of_range", "gpt2", "ablate L0.mlp.post[300] in clean  measure ld",
     "E203", 6, 8, "256"),
    ("empty_layer_range", "gpt2", "ablate L3..1.mlp.out in clean  measure ld",
     "E204", 6, 8, "empty range 3..1"),
    ("site_needs_head", "gpt2", "ablate L0.z in clean  measure ld",
     "E205", 6, 8, "site z needs a head"),
    ("site_takes_no_layer", "gpt2", "ablate L0.embed in clean  measure ld",
     "E206", 6, 8, "site embed has no layer index"),
    ("empty_position_range", "gpt2", "ablate L0.mlp.out @ 5..2 in clean  measure ld",
     "E304", 6, 21, "empty position range 5..2"),
    ("resid_mid_parallel", "neox", "swap L0.resid_mid from a into b  measure m",
     "E207", 6, 6, "resid_mid is not defined"),
    ("unknown_site", "gpt2", "swap L0.mlp.outt from clean into corrupt  measure ld",
     "E200", 6, 6, "unknown site 'L0.mlp.outt'"),
    ("unknown_run", "gpt2", "swap L0.mlp.out from clena into corrupt  measure ld",
     "E309", 6, 22, "unknown run `clena`"),
    ("unknown_target_run", "gpt2", "ablate L0.mlp.out in nope  measure ld",
     "E309", 6, 22, "unknown run `nope`"),
    ("keyword_as_run", "gpt2", "run swap = ioi.clean",
     "E307", 6, 5, "`swap` is a keyword and cannot name a run"),
    ("keyword_as_metric", "gpt2", "metric normalized = logit(ioi.answer)",
     "E307", 6, 8, "cannot name a metric"),
    ("keyword_as_table", "gpt2", "ablate L0.mlp.out in clean  measure ld  as from",
     "E307", 6, 44, "cannot name a result table"),
    ("duplicate_run", "gpt2", "run clean = ioi.corrupt",
     "E308", 6, 5, "`clean` is already declared on line 3"),
    ("duplicate_across_kinds", "gpt2", "vector ld = load(\"vecs.safetensors\", key=\"love\")",
     "E308", 6, 8, "already declared as a metric on line 5"),
    ("duplicate_table", "gpt2", "ablate L0.mlp.out in clean  measure ld  as t\n"
     "ablate L1.mlp.out in clean  measure ld  as t",
     "E308", 7, 44, "`t` is already declared on line 6"),
    ("missing_model", "none", 'run a = ["I love this"]\nablate L0.mlp.out in a  measure loss',
     "E300", 1, 1, "no `model` statement"),
    ("two_models", "gpt2", 'model "./llama"',
     "E301", 6, 1, "exactly one `model` statement"),
    ("model_dir_missing", "none", 'model "./nope"\nrun a = ["I love this"]',
     "E212", 1, 7, "no model directory"),
    ("missing_data_file", "gpt2", 'data d2 = "data/nope.jsonl"',
     "E314", 6, 11, "data file not found"),
    ("data_bad_extension", "gpt2", 'data d2 = "data/ioi.txt"',
     "E315", 6, 11, "unsupported type '.txt'"),
    ("data_malformed_line", "gpt2", 'data d2 = "data/bad.jsonl"',
     "E316", 6, 11, "line 2 of bad.jsonl is not valid JSON"),
    ("data_different_keys", "gpt2", 'data d2 = [{"a": "x"}, {"b": "y"}]',
     "E317", 6, 1, "row 1 of inline data lacks a and has extra b"),
    ("data_empty", "gpt2", "data d2 = []",
     "E318", 6, 1, "inline data has no rows"),
    ("unknown_data", "gpt2", "run x = iox.clean",
     "E310", 6, 9, "unknown data table `iox`"),
    ("unknown_column", "gpt2", "metric m2 = logit(ioi.answr)",
     "E311", 6, 23, "data `ioi` has no column `answr`"),
    ("prompt_column_not_strings", "gpt2", 'data d2 = [{"p": 3}]\nrun x = d2.p',
     "E319", 7, 9, "must hold strings; row 0 is 3"),
    ("position_column_not_ints", "gpt2",
     'data d2 = [{"p": "I love this", "i": "x"}]\nrun x = d2.p\n'
     "ablate embed @ d2.i in x  measure loss",
     "E319", 8, 16, "must hold integers"),
    ("position_column_out_of_range", "gpt2",
     'data d2 = [{"p": "I love this", "i": 7}]\nrun x = d2.p\n'
     "ablate embed @ d2.i in x  measure loss",
     "E320", 8, 16, "row 0: position d2.i = 7 is outside its 3 tokens"),
    ("unequal_example_counts", "gpt2",
     'data d2 = "data/ioi2.jsonl"\nrun two = d2.clean\n'
     "swap L0.mlp.out from two into corrupt  measure ld",
     "E321", 8, 22, "run `two` has 2 examples but `corrupt` has 3"),
    ("swapped_unequal_lengths", "ragged", "swap L0.mlp.out from a into b  measure ld",
     "E322", 6, 22, "row 1 (line 2 of ioi_ragged.jsonl) has 14 tokens in `a`"),
    ("negative_position_unequal_lengths", "ragged", "ablate L0.mlp.out @ -2 in b  measure ld",
     "E323", 6, 21, "a negative position needs"),
    ("position_out_of_range", "gpt2", "swap L0.mlp.out @ 20 from clean into corrupt  measure ld",
     "E303", 6, 19, "prompts have 14 tokens (positions 0..13); got @ 20"),
    ("position_range_out_of_range", "ragged", "ablate L0.mlp.out @ 2..14 in b  measure ld",
     "E303", 6, 21, "the shortest prompt has 14 tokens"),
    ("unknown_metric", "gpt2", "swap L0.mlp.out from clean into corrupt  measure ldd",
     "E312", 6, 50, "unknown metric `ldd`"),
    ("unknown_vector", "gpt2", "steer L0.resid_post in clean by lovee  measure ld",
     "E313", 6, 33, "unknown vector `lovee`"),
    ("metric_cycle", "gpt2", "metric a = b + 1\nmetric b = a * 2",
     "E324", 6, 8, "metrics refer to each other in a cycle: a -> b -> a"),
    ("where_unbound_capture", "gpt2",
     "swap L$l.mlp.out from clean into corrupt  measure ld  where $k > 1",
     "E325", 6, 61, "`where` uses $k, which no site of this statement binds"),
    ("where_unbound_right", "gpt2",
     "swap L$l.mlp.out from clean into corrupt  measure ld  where $l > $m",
     "E325", 6, 66, "uses $m"),
    ("capture_bound_twice", "gpt2", "swap L$i.H$i.z from clean into corrupt  measure ld",
     "E326", 6, 11, "capture $i is bound twice in L$i.H$i.z"),
    ("capture_collides_with_metric", "gpt2",
     "swap L$ld.mlp.out from clean into corrupt  measure ld",
     "E327", 6, 52, "both a sweep column and a measured metric"),
    ("capture_collides_with_default_column", "gpt2",
     "swap L$head.H*.z from clean into corrupt  measure ld",
     "E327", 6, 14, "L$head.H*.z fills the result column `head` twice"),
    ("vector_file_missing", "gpt2", 'vector v = load("nope.safetensors", key="x")',
     "E328", 6, 12, "vector file not found"),
    ("vector_key_missing", "gpt2", 'vector v = load("vecs.safetensors", key="lov")',
     "E329", 6, 12, "has no tensor 'lov'"),
    ("vector_not_1d", "gpt2", 'vector v = load("vecs.safetensors", key="mat")',
     "E330", 6, 12, "a vector must be 1-D"),
    ("vector_not_finite", "gpt2", 'vector v = load("vecs.safetensors", key="inf")',
     "E330", 6, 12, "holds 64 NaN or infinite value(s)"),
    ("sae_feature_out_of_range", "gpt2", 'vector v = sae("sae.safetensors", feature=16)',
     "E331", 6, 12, "the SAE has 16 features (0..15); got feature=16"),
    ("mean_of_pattern", "gpt2", "vector v = mean(clean.L*.resid_post @ last)",
     "E332", 6, 23, "needs exactly one site; L*.resid_post matches 4"),
    ("mean_without_position", "gpt2", "vector v = mean(clean.L0.resid_post)",
     "E332", 6, 23, "averages at one position; L0.resid_post names none"),
    ("mean_at_range", "gpt2", "vector v = mean(clean.L0.resid_post @ 1..3)",
     "E332", 6, 39, "a range or set is several"),
    ("mean_at_set", "gpt2", "vector v = mean(clean.L0.resid_post @ {1, 3})",
     "E332", 6, 39, "a range or set is several"),
    ("vector_dim_mismatch_steer", "gpt2",
     'vector v = load("vecs.safetensors", key="love")\n'
     "steer L0.mlp.post in clean by v  measure ld",
     "E333", 7, 31, "the vector has 64 features but L0.mlp.post has 256"),
    ("vector_dim_mismatch_sum", "gpt2",
     'vector v = load("vecs.safetensors", key="love") + load("vecs.safetensors", key="big")',
     "E333", 6, 12, "cannot add vectors of different sizes (64 and 256 features)"),
    ("vector_dim_mismatch_subspace", "gpt2",
     'vector v = load("vecs.safetensors", key="love")\n'
     "swap L0.mlp.post[v] from clean into corrupt  measure ld",
     "E333", 7, 6, "vector `v` has 64 features but L0.mlp.post has 256"),
    ("unknown_method", "gpt2",
     "attribute L*.mlp.out from clean into corrupt using atpp  measure ld",
     "E334", 6, 52, "unknown method `atpp`"),
    ("ig_steps_zero", "gpt2",
     "attribute L*.mlp.out from clean into corrupt using ig(steps=0)  measure ld",
     "E335", 6, 55, "must be an integer from 1 to 1000"),
    ("relp_unknown_kwarg", "gpt2",
     "attribute L*.mlp.out from clean into corrupt using relp(foo=true)  measure ld",
     "E335", 6, 57, "method `relp` has no argument `foo`"),
    ("noise_samples_zero", "gpt2",
     "run n = ioi.clean with noise(embed, std=3, samples=0)",
     "E336", 6, 44, "noise samples must be an integer from 1 to 1000"),
    ("noise_without_std", "gpt2", "run n = ioi.clean with noise(embed, samples=2)",
     "E336", 6, 24, "noise needs std="),
    ("no_measure", "gpt2", "swap L0.mlp.out from clean into corrupt",
     "E337", 6, 1, "`swap` measures nothing"),
    ("compare_duplicate_method", "gpt2",
     "compare atp, atp against swap on L*.mlp.out from clean into corrupt  measure ld",
     "E338", 6, 14, "method `atp` is listed twice"),
    ("dla_not_residual_write", "gpt2", "dla L0.resid_post in clean  measure ld",
     "E339", 6, 5, "dla needs a site that writes to the residual stream"),
    ("dla_nonlinear_metric", "gpt2", "dla L0.mlp.out in clean  measure ld, prob(ioi.answer)",
     "E465", 6, 38, "prob(...) is not"),
    ("dla_product_of_logits", "gpt2", "dla L0.mlp.out in clean  measure ld * ld",
     "E465", 6, 34, "a product of logit terms is not"),
    ("generate_zero", "gpt2",
     "ablate L0.mlp.out in clean  measure generate(0) contains ioi.answer",
     "E340", 6, 37, "generate(0) must generate at least one token"),
    ("empty_answer", "gpt2", 'ablate L0.mlp.out in clean  measure logit("")',
     "E341", 6, 43, "tokenizes to no tokens"),
    ("token_id_out_of_vocab", "gpt2", "ablate L0.mlp.out in clean  measure logit(id(99999))",
     "E342", 6, 43, "token id 99999 is outside the vocabulary"),
    ("subspace_on_steer", "gpt2",
     'vector v = load("vecs.safetensors", key="love")\n'
     "steer L0.resid_post[v] in clean by v  measure ld",
     "E343", 7, 7, "steer cannot be restricted to a subspace [v]"),
    ("subspace_on_noise", "gpt2",
     'vector v = load("vecs.safetensors", key="love")\n'
     "run n = ioi.clean with noise(embed[v], std=1)",
     "E343", 7, 30, "noise cannot be restricted to a subspace"),
    ("run_reads_itself", "gpt2", "run n = ioi.clean with swap L0.mlp.out from n",
     "E344", 6, 5, "a run would read its own value: run n -> run n"),
    ("metric_position_range", "gpt2", 'metric m2 = logit(" Paris") @ 1..2',
     "E345", 6, 31, "a metric is read at one position"),
    ("prompt_longer_than_context", "gpt2", f'run long = ["{LONG}"]',
     "E346", 6, 12, "has 70 tokens; the model takes at most 64"),
    ("backpatch_size_mismatch", "gpt2",
     "backpatch L1.mlp.post -> L0.resid_post in clean  measure ld",
     "E347", 6, 1, "their sizes differ"),
    ("metric_rows_mismatch", "gpt2",
     'data d2 = "data/ioi2.jsonl"\nrun two = d2.clean\nablate L0.mlp.out in two  measure ld',
     "E348", 8, 35, "reads `ioi.answer` (3 rows) on run `two`, which has 2 examples"),
    ("scalar_sweep_in_vector", "gpt2",
     'vector w = load("vecs.safetensors", key="love")\nvector v = {1, 2} * w',
     "E349", 7, 12, "a scalar sweep {...} is not allowed here"),
    ("metrics_at_different_positions", "gpt2",
     'metric a = logit(" Paris") @ 3\nmetric b = logit(" Rome") @ 4\n'
     "ablate L0.mlp.out in clean  measure a - b",
     "E350", 8, 37, "combines metrics read at different positions (a, b)"),
    ("two_kl_runs", "gpt2", "ablate L0.mlp.out in clean  measure kl(clean) - kl(corrupt)",
     "E351", 6, 37, "one measure compares with one run in kl(...)"),
    ("unknown_set_option", "gpt2", "set dtyp = float32",
     "E302", 6, 5, "unknown option `dtyp`; options are dtype"),
    ("bad_set_value", "gpt2", "set dtype = float8",
     "E306", 6, 1, "invalid value for `dtype`"),
    ("bad_device", "gpt2", "set device = gpu",
     "E306", 6, 1, "device must be cpu, cuda, cuda:N"),
    ("ablate_mean_unknown_run", "gpt2",
     "ablate L0.mlp.out in clean with mean(corupt)  measure ld",
     "E309", 6, 28, "unknown run `corupt`"),
    ("kl_unequal_counts", "gpt2",
     'data d2 = "data/ioi2.jsonl"\nrun two = d2.clean\n'
     "ablate L0.mlp.out in clean  measure kl(two)",
     "E321", 8, 37, "kl(two) compares run `two` (2 examples)"),
    ("freeze_ln_unaligned", "ragged", "run c = r.clean with freeze ln from b",
     "E322", 6, 37, "runs need equal token lengths per example"),
    ("mean_source_too_short", "ragged", "ablate L0.mlp.out in b with mean(a)  measure ld",
     "E455", 6, 24, "mean(`a`) has no example with position 14"),
    ("mean_source_too_short_edges", "ragged",
     "ablate L0.mlp.out -> logits in b with mean(a)  measure ld",
     "E455", 6, 34, "the longest prompt of `a` has 14 tokens"),
    ("mean_source_too_short_baked", "ragged",
     "run c = r.corrupt with ablate L0.mlp.out with mean(a)",
     "E455", 6, 42, "`c` is written up to position 14"),
    ("mean_source_too_short_evaluate", "ragged",
     "attribute * -> * from b into b using eap  measure ld  as edges\n"
     "circuit c = top 5 of edges\nevaluate c in b with mean(a)  measure ld",
     "E455", 8, 22, "mean(`a`) has no example with position 14"),
    ("resample_no_other_length", "ragged", "ablate L0.mlp.out in b with resample(a)  measure ld",
     "E456", 6, 24, "no other example with 15 tokens to give row 1 (line 2"),
]


@pytest.fixture(scope="session")
def models() -> Models:
    return build()


def _errors(models: Models, text: str) -> list[PatchcError]:
    spec = parse(text, "case.patch", models.spec_dir())
    with pytest.raises(PatchcError) as info:
        check(spec)
    return info.value.errors


def test_every_compiler_code_is_documented():
    """docs/errors.md lists every code the parser and the checker can raise."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "errors.md").read_text("utf-8")
    documented = set(re.findall(r"\b([EW]\d{3})\b", doc))
    for lo, hi in re.findall(r"E(\d{3})–E(\d{3})", doc):
        documented |= {f"E{i}" for i in range(int(lo), int(hi) + 1)}
    files = ["check*.py", "data.py", "tokens.py", "resolve.py", "modelspec.py", "sites.py",
             "parse.py", "ir.py", "build_*.py", "hub.py"]
    used = {code for pattern in files for f in (root / "compiler").glob(pattern)
            for code in re.findall(r'"([EW]\d{3})"', f.read_text("utf-8"))}
    assert used and not used - documented, sorted(used - documented)
    for _id, _head, _body, code, *_ in CASES:
        assert code in documented


def test_at_least_forty_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40
    assert len({c[3] for c in CASES}) >= 40  # distinct codes


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_invalid_spec(models: Models, case):
    _id, head, body, code, line, col, fragment = case
    errors = _errors(models, HEADS[head] + body + "\n")
    found = [(e.code, e.line, e.col) for e in errors]
    assert (code, line, col) in found, [e.render() for e in errors]
    err = next(e for e in errors if (e.code, e.line, e.col) == (code, line, col))
    assert fragment in err.message, err.render()
    # Every diagnostic renders with its location and a caret under the source line.
    assert f"case.patch:{line}:{col}: error[{code}]" in err.render()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_only_the_expected_error(models: Models, case):
    """Each case has one mistake, so it yields exactly one error: no cascades."""
    _id, head, body, code, *_ = case
    errors = _errors(models, HEADS[head] + body + "\n")
    assert [e.code for e in errors] == [code], [e.render() for e in errors]


def test_suggestions(models: Models):
    head = HEADS["gpt2"]
    cases = {
        "swap L0.mlp.outt from clean into corrupt  measure ld": "did you mean mlp.out?",
        "swap L0.mlp.out from clena into corrupt  measure ld": "did you mean clean?",
        "run x = iox.clean": "did you mean ioi?",
        "metric m2 = logit(ioi.answr)": "did you mean answer?",
        "set dtyp = float32": "did you mean dtype?",
        "attribute L*.mlp.out from clean into corrupt using atpp  measure ld":
            "did you mean atp?",
        'vector v = load("vecs.safetensors", key="lov")': "did you mean love?",
        "swap L0.mlp.out from clean into corrupt  measure ldd": "did you mean ld?",
        "swap L0.mlp.out from ioi into corrupt  measure ld": "ioi is a data table",
    }
    for body, hint in cases.items():
        (err,) = _errors(models, head + body + "\n")
        assert err.hint and hint in err.hint, (body, err.render())


def test_many_errors_are_all_reported_in_line_order(models: Models):
    text = '''model "./gpt2"
set dtyp = float32
data ioi = "data/ioi.jsonl"
data nope = "data/missing.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
run swap = ioi.clean
metric ld = logit(ioi.answer) - logit(ioi.distractor)
swap L12.H0.z from clean into corrupt  measure ld
swap L0.H9.z from clean into corrupt  measure ld
ablate L0.mlp.out in clena  measure ld
ablate L0.mlp.out in clean
'''
    errors = _errors(models, text)
    got = [(e.code, e.line) for e in errors]
    assert got == [("E302", 2), ("E314", 4), ("E307", 7), ("E201", 9), ("E202", 10),
                   ("E309", 11), ("E337", 12)]
    with pytest.raises(SpecErrors) as info:
        check(parse(text, "case.patch", models.spec_dir()))
    rendered = info.value.render()
    assert rendered.count("error[") == 7
    assert "  9 | swap L12.H0.z" in rendered or " 9 | swap L12.H0.z" in rendered


def test_errors_after_a_bad_model_still_reported(models: Models):
    """A model that cannot be read stops the site checks, not the name checks."""
    text = 'model "./nope"\nrun a = ["x"]\nablate L0.mlp.out in b  measure loss\n'
    got = [(e.code, e.line) for e in _errors(models, text)]
    assert got == [("E212", 1), ("E309", 3)]


def test_ablation_sources_that_have_every_position(models: Models):
    """mean(A)/resample(A) pass `check` when A can fill every position they write: A at
    least as long (mean), another example of the same length (resample), `@ last`."""
    for body in ("ablate L0.mlp.out in a with mean(b)  measure ld",
                 "ablate L0.mlp.out @ 3 in b with mean(a)  measure ld",
                 "ablate L0.mlp.out in a with resample(b)  measure ld",
                 "ablate L0.mlp.out @ last in b with resample(a)  measure ld",
                 "ablate L0.mlp.out @ each in a with resample(b)  measure ld"):
        check(parse(HEADS["ragged"] + body + "\n", "case.patch", models.spec_dir()))
