"""patchc: a declarative intervention language and compiler for mechanistic interpretability."""
