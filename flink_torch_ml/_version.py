"""The library's version, in one place (read by pyproject.toml, written into saved models)."""

__version__ = "0.1.0"
