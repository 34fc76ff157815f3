"""patchc: a declarative intervention language and compiler for mechanistic interpretability.

    import patchc
    program = patchc.compile("examples/ioi_heads.patch")   # parse + check + lower, no weights
    program.experiments                                     # rows per result table

Importing patchc does not import torch; only running a spec does.
"""

from patchc.compiler.errors import (
    CheckError,
    ParseError,
    PatchcError,
    PlanError,
    RuntimeInterventionError,
    SpecErrors,
)

from patchc.version import __version__

__all__ = [
    "__version__",
    "CheckError",
    "ParseError",
    "PatchcError",
    "PlanError",
    "Program",
    "RuntimeInterventionError",
    "SpecErrors",
    "compile",
    "run",
]


def __getattr__(name: str):
    # The API pulls in the whole compiler; load it on first use so `import patchc` stays cheap.
    if name in ("compile", "Program", "run"):
        from patchc import api

        return getattr(api, name)
    raise AttributeError(f"module 'patchc' has no attribute {name!r}")
