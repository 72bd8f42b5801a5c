"""The library's version, kept in one place (read by pyproject.toml and written into saved models)."""

__version__ = "0.1.0"
