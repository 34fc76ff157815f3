"""A process that has imported torch, transformers, matplotlib and patchc once, and forks a
`patchc` command line on request: a test can start real runs, kill -9 them at chosen moments
or race two of them, without paying those imports per run. It can also compute a spec's
Results once and fork writers of that result folder, so that kills land in the writing.
torch runs on one thread here (no OpenMP thread team exists at a fork)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_FORKER = r"""
import json, os, sys
import torch, transformers, pandas, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import warnings
import patchc.api, patchc.cli, patchc.runner, patchc.plots, patchc.outputs, patchc.verify
torch.set_num_threads(1)
computed = {}
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "compute":
        name, spec = json.loads(arg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            computed[name] = patchc.api.run(spec)
        print("done", flush=True)
    elif cmd in ("run", "save"):
        job = json.loads(arg)
        pid = os.fork()
        if pid == 0:
            os.chdir(job["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
            try:
                if cmd == "run":
                    rc = patchc.cli.main(job["argv"])
                else:
                    patchc.outputs.save_result(computed[job["name"]], job["out"], plots=True)
                    rc = 0
            except BaseException:
                rc = 3
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        print(pid, flush=True)
    elif cmd == "wait":
        _, status = os.waitpid(int(arg), 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Forker:
    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self._read() == "ready"

    def _read(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the forker died")
        return line

    def _send(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, argv: list[str], cwd: Path, logs: Path) -> int:
        """Fork `patchc ARGV` in cwd; its stdout/stderr go to logs.out / logs.err."""
        job = {"argv": argv, "cwd": str(cwd), "stdout": f"{logs}.out",
               "stderr": f"{logs}.err"}
        return int(self._send("run " + json.dumps(job)))

    def compute(self, name: str, spec: Path) -> None:
        """Run `spec` in the forker, keeping its Results as `name` for `save`."""
        assert self._send("compute " + json.dumps([name, str(spec)])) == "done"

    def save(self, name: str, out: Path, logs: Path) -> int:
        """Fork a writer of the computed result `name` as the folder `out` (with plots)."""
        job = {"name": name, "out": str(out), "cwd": str(out.parent),
               "stdout": f"{logs}.out", "stderr": f"{logs}.err"}
        return int(self._send("save " + json.dumps(job)))

    def wait(self, pid: int) -> int:
        """The exit code (-9 for a process killed by SIGKILL)."""
        return int(self._send(f"wait {pid}"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
