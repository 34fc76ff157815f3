"""What every `patchc` subcommand shares: exit codes, the usage error (exit 1, not
argparse's 2, which this CLI keeps for internal errors) and printing a program's warnings."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK, EXIT_USER, EXIT_INTERNAL = 0, 1, 2


class UsageError(Exception):
    """A bad command line: a user error (exit 1), not argparse's default exit 2, which this
    CLI keeps for internal errors."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.endswith("arguments are required: command"):  # (`patchc -x`, `patchc`)
            message = "name a command first: check, compile, run, verify, plot, sites or fmt"
        raise UsageError(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


def print_warnings(program) -> None:
    for w in program.warnings:
        print(w.render(), file=sys.stderr)
