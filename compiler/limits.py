"""Bounds on what a spec may ask for: far above what an experiment needs, they let `check`
reject with a located error what would otherwise exhaust the recursion limit, the memory or
the time of a run. Listed in docs/errors.md ("Limits").
"""

# Levels of one expression: a statement's own nesting (E111, parse.py), and a metric or
# vector once the metrics/vectors it names are written out (E354, check_limits.py).
MAX_NESTING = 200
# Terms of a metric or vector once the metrics/vectors it names are written out (E354).
MAX_EXPANDED = 10_000
# Runs (and vectors) that read one another in a chain (E355).
MAX_RUN_CHAIN = 100
# noise(..., samples=N): each example runs N times (E336).
MAX_SAMPLES = 1000
# ig(steps=N): N forward and backward passes per example (E335).
MAX_IG_STEPS = 1000
# A seed is a signed 64-bit integer (`set seed`, noise(seed=...); E306, E336).
SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)
# `set memory`: 1 EiB (E306).
MAX_MEMORY_BYTES = 2 ** 60
