"""A Pygments lexer for `.patch` specs, for highlighted specs in docs, papers (minted) and
notebooks. Registered as the entry point `patch` (pygments.lexers), so
`pygmentize -l patch spec.patch` and `\\begin{minted}{patch}` work once patchc is installed.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text

STATEMENTS = ("model", "revision", "set", "data", "run", "metric", "vector", "swap", "ablate",
              "backpatch", "steer", "scale", "attribute", "compare", "trace", "dla")
CLAUSES = ("from", "into", "in", "with", "by", "using", "against", "on", "measure",
           "normalized", "as", "where", "and", "all", "contains", "freeze", "ln")
BUILTINS = ("logit", "logprob", "prob", "rank", "kl", "loss", "generate", "id", "mean",
            "resample", "zero", "noise", "std", "load", "sae", "normalize", "last", "each",
            "true", "false", "null", "key", "feature")


class PatchLexer(RegexLexer):
    name = "patch"
    aliases = ["patch", "patchc"]
    filenames = ["*.patch"]
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
            (r"->|\.\.|>=|<=|==|!=|[-+*/=<>@]", Operator),
            (r"[()\[\]{},:.]", Punctuation),
            (r"[A-Za-z_]\w*", Name),
            (r"\s+", Text),
        ]
    }
