"""Optimization passes over the IR, one per file, each a pure function IRGraph -> IRGraph that
never mutates its input (docs/architecture.md, "The optimizer"). compiler/pipeline.py runs
them in order and verifies the graph around each."""
