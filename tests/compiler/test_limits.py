"""Nothing a spec asks for is unbounded: each limit of compiler/limits.py is a located error
from `check`, and a spec just inside the limits compiles (lowering does not meet Python's
recursion limit)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time  # noqa: E402

import pytest  # noqa: E402
from checkmodels import build  # noqa: E402

from patchc.compiler import limits  # noqa: E402
from patchc.compiler.check import check  # noqa: E402
from patchc.compiler.errors import CheckError, PatchcError, SpecErrors  # noqa: E402
from patchc.compiler.lower import lower  # noqa: E402
from patchc.compiler.parse import parse  # noqa: E402

HEAD = '''model "./gpt2"
data ioi = "data/ioi.jsonl"
run clean = ioi.clean
run corrupt = ioi.corrupt
metric ld = logit(ioi.answer) - logit(ioi.distractor)
'''


def checked(body: str):
    return check(parse(HEAD + body, "case.patch", build().spec_dir()))


def one_error(body: str) -> PatchcError:
    with pytest.raises(SpecErrors) as info:
        checked(body)
    errs = info.value.errors
    assert len(errs) == 1, info.value.render()
    return errs[0]


def where(body: str, fragment: str) -> tuple[int, int]:
    """(line, col) of `fragment` in HEAD + body."""
    lines = (HEAD + body).split("\n")
    for i, line in enumerate(lines, start=1):
        if fragment in line:
            return i, line.index(fragment) + 1
    raise AssertionError(fragment)


@pytest.mark.parametrize("body,code,at,fragment", [
    ("run n = ioi.clean with noise(embed, std=1, samples=100000000)\n"
     "ablate L0.mlp.out in n  measure ld\n", "E336", "samples=", "an integer from 1 to 1000"),
    ("run n = ioi.clean with noise(embed, std=1, seed=99999999999999999999)\n"
     "ablate L0.mlp.out in n  measure ld\n", "E336", "seed=", "a 64-bit integer"),
    ("attribute L0.mlp.out from clean into corrupt using ig(steps=100000000)  measure ld\n",
     "E335", "steps=", "an integer from 1 to 1000"),
    ("set seed = 99999999999999999999\n", "E306", "set seed", "64-bit integer"),
    ('set memory = "' + "9" * 400 + 'GB"\n', "E306", "set memory", "at most 1 EiB"),
    ('set memory = "2000000TB"\n', "E306", "set memory", "at most 1 EiB"),
    ("swap L0.mlp.out from clean into corrupt  measure generate(60) contains ioi.answer\n",
     "E340", "generate(60)", "needs 73 positions; the model has 64"),
    ("swap L0.mlp.out from clean into corrupt  measure says = text(60)\n",
     "E340", "text(60)", "needs 73 positions; the model has 64"),
    ("measure s = seqlogprob(\"" + " Mary" * 52 + "\") in clean\n",
     "E340", "seqlogprob(", "a 52-token answer after the 14-token prompts"),
])
def test_limits_are_located_errors(body: str, code: str, at: str, fragment: str):
    e = one_error(body)
    assert e.code == code and fragment in e.message, e.render()
    assert (e.line, e.col) == where(body, at), e.render()
    assert len(e.render()) < 600


def test_generate_up_to_the_context_is_fine():
    checked("swap L0.mlp.out from clean into corrupt  measure generate(51) contains "
            "ioi.answer\n")


def chain(kind: str, n: int) -> str:
    if kind == "metric":
        return "".join(f"metric m{i + 1} = m{i} + 1\n" for i in range(n)).replace(
            "= m0 +", "= ld +") + f"swap L0.mlp.out from clean into corrupt  measure m{n}\n"
    if kind == "vector":
        return ("vector v0 = mean(clean.L0.resid_post @ last)\n"
                + "".join(f"vector v{i + 1} = v{i} - v0\n" for i in range(n))
                + f"steer L0.resid_post in clean by v{n}  measure ld\n")
    if kind == "doubling":
        return ("vector v0 = mean(clean.L0.resid_post @ last)\n"
                + "".join(f"vector v{i + 1} = v{i} + v{i}\n" for i in range(n))
                + f"steer L0.resid_post in clean by v{n}  measure ld\n")
    return ("".join(f"run r{i + 1} = ioi.clean with swap L0.mlp.out from r{i}\n"
                    for i in range(n)).replace("from r0", "from clean")
            + f"ablate L0.mlp.out in r{n}  measure ld\n")


@pytest.mark.parametrize("kind,code,first,fragment", [
    ("metric", "E354", "metric m99 ", "nests 201 levels deep"),
    ("vector", "E354", "vector v99 ", "nests 202 levels deep"),
    ("doubling", "E354", "vector v11 ", "grows to 16381 terms"),
    ("run", "E355", "run r100 ", "reads a chain of 101 runs"),
])
def test_long_chains_are_located_errors(kind: str, code: str, first: str, fragment: str):
    body = chain(kind, 1000)
    e = one_error(body)
    assert e.code == code and fragment in e.message, e.render()
    line, col = where(body, first)
    assert (e.line, e.col) == (line, col + len(first.split()[0]) + 1), e.render()


@pytest.mark.parametrize("kind,n", [("metric", 95), ("vector", 95), ("run", 99)])
def test_chains_inside_the_limits_lower(kind: str, n: int):
    lower(checked(chain(kind, n)))


def test_cycle_messages_are_abbreviated():
    body = "".join(f"metric c{i} = c{(i + 1) % 3000} + 1\n" for i in range(3000))
    e = one_error(body)
    assert e.code == "E324" and "(2994 more)" in e.message and len(e.message) < 200


def test_limits_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text("utf-8")
    for name in ("MAX_NESTING", "MAX_EXPANDED", "MAX_RUN_CHAIN", "MAX_SAMPLES",
                 "MAX_IG_STEPS", "SEED_RANGE", "MAX_MEMORY_BYTES"):
        assert name in doc, name
    assert limits.MAX_SAMPLES == 1000


def test_unreachable_hub_fails_fast(monkeypatch):
    from patchc.compiler import hub
    from patchc.compiler.modelspec import load_config

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://patchc-unreachable.invalid")
    monkeypatch.setenv("HF_HUB_CACHE", str(build().root / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(CheckError) as info:
        load_config("patchc-nonexistent-org/no-such-model-xyz")
    assert time.perf_counter() - start < 2.0
    assert info.value.code == "E213" and "unreachable" in info.value.message
    assert "not found" not in info.value.message
    assert not hub.reachable("https://patchc-unreachable.invalid", timeout=0.5)


def test_generate_beyond_the_context_without_a_tokenizer():
    spec = parse(HEAD + "metric g = generate(65) contains ioi.answer\n", "case.patch",
                 build().spec_dir())
    with pytest.raises(SpecErrors) as info:
        check(spec, tokenizer=None)
    (e,) = info.value.errors
    assert e.code == "E340" and "more positions than the model has (64)" in e.message
