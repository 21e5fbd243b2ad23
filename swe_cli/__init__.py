"""swe: sparse weight editing that closes the multilingual safety gap of open-weight LLMs."""

__version__ = "0.1.0"
