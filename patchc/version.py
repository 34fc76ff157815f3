"""patchc's version, in a module of its own so that anything may import it without pulling
in the package's API (patchc/__init__.py loads the API lazily)."""

__version__ = "0.1.0"
