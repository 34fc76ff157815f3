"""A Pygments lexer for `.patch` specs, for highlighted specs in docs, papers (minted) and
notebooks. Registered as the entry point `patchc` (pygments.lexers), so
`pygmentize -l patchc spec.patch` and `\\begin{minted}{patchc}` work once patchc is installed.

It claims no file name and no content (it never guesses): `*.patch` is the name of diff
files (`git format-patch`; Pygments' DiffLexer claims it), and a plugin that claimed it too
would highlight diffs as specs. Nor does it take the alias `patch`, which readers take to
mean a diff. Pick it by alias (`-l patchc`), or, without installing patchc, by class:
`pygmentize -l patchc/pygments_lexer.py:PatchcLexer -x spec.patch`.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text

STATEMENTS = ("model", "revision", "set", "data", "run", "metric", "vector", "swap", "ablate",
              "backpatch", "steer", "scale", "attribute", "compare", "trace", "dla", "transcoder",
              "circuit", "evaluate")
CLAUSES = ("from", "into", "in", "with", "by", "using", "against", "on", "measure",
           "normalized", "as", "where", "and", "all", "contains", "freeze", "ln", "at", "top",
           "of")
BUILTINS = ("logit", "logprob", "prob", "rank", "kl", "loss", "generate", "id", "mean",
            "resample", "zero", "noise", "std", "load", "sae", "normalize", "last", "each",
            "true", "false", "null", "key", "feature")


class PatchcLexer(RegexLexer):
    name = "patchc"
    aliases = ["patchc"]
    filenames: list[str] = []  # `*.patch` is diff's (see the module docstring)
    mimetypes = ["text/x-patchc"]

    tokens = {
        "root": [
            (r"#.*$", Comment.Single),
            (r'"(?:[^"\\\n]|\\.)*"', String.Double),
            (words(STATEMENTS, prefix=r"(?<![\w.$])", suffix=r"\b"), Keyword.Declaration),
            (words(CLAUSES, prefix=r"(?<![\w.$])", suffix=r"\b"), Keyword),
            (words(BUILTINS, prefix=r"(?<![\w.$])", suffix=r"\b"), Name.Builtin),
            # Sites: L12.H3.z, L*.mlp.out, L$l.resid_post, L3.E*.out, blocks.3.attn.hook_z
            (r"([LHE])(\*|\$[A-Za-z_]\w*|\{[-\d,\s]*\}|-?\d+(?:\.\.-?\d+)?)(?=[.\s\[@,)]|$)",
             bygroups(Name.Tag, Number)),
            (r"\$[A-Za-z_]\w*", Name.Variable),
            (r"\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"->|\.\.|>=|<=|==|!=|[-+*/=<>@%]", Operator),
            (r"[()\[\]{},:.]", Punctuation),
            (r"[A-Za-z_]\w*", Name),
            (r"\s+", Text),
        ]
    }


# The class's former name, for code that imported it.
PatchLexer = PatchcLexer
