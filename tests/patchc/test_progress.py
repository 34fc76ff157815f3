"""The run's progress bar: drawn before the model loads, with the total of forward passes as
soon as the plan is made and an estimated time left."""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import patchc  # noqa: E402
import patchc.api  # noqa: E402
from patchc.cli_run import _run_with_bar, progress_bar  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "ioi_heads.patch"


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_bar_is_drawn_before_the_run_starts(monkeypatch) -> None:
    console = _console()
    seen: dict = {}

    def fake_run(spec, progress, **kw):
        seen["drawn"] = console.file.getvalue()
        seen["after"] = time.perf_counter() - started
        progress(0, 8)
        progress(2, 8)
        return None

    monkeypatch.setattr(patchc.api, "run", fake_run)
    args = argparse.Namespace(quiet=False, spec=str(SPEC), naive=False,
                              trust_remote_code=False)
    started = time.perf_counter()
    assert _run_with_bar(args, 1, {}, console=console) is None
    assert "forward passes" in seen["drawn"] and seen["after"] < 1.0


def test_bar_shows_done_of_total_and_eta() -> None:
    console = _console()
    with progress_bar(False, console) as bar:
        task = bar.add_task("forward passes", total=None)
        bar.update(task, completed=0, total=10)
        bar.update(task, completed=1, total=10)
        time.sleep(0.05)
        bar.update(task, completed=5, total=10)  # 4 passes in 0.05 s: 5 more take ~0.06 s
        bar.refresh()
        text = console.file.getvalue()
    assert "5/10" in text and "eta" in text
    assert any(f"0:00:0{d}" in text.split("eta")[-1] for d in range(10)), text


TINY = f"""model "{ROOT / 'examples' / 'models' / 'tiny-gpt2'}"
data d = [{{"clean": "When Mark and Lucy went", "corrupt": "When James and Mary went"}}]
run clean = d.clean
run corrupt = d.corrupt
metric p = prob(" the")
swap L*.H0.z from clean into corrupt
    measure p
"""


def test_executor_reports_the_total_first() -> None:
    calls: list[tuple[int, int]] = []
    patchc.run(TINY, progress=lambda done, total: calls.append((done, total)))
    assert calls[0][0] == 0 and calls[0][1] > 0
    assert calls[-1][0] == calls[-1][1] == calls[0][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
