"""swe: sparse weight editing that closes the multilingual safety gap of open-weight LLMs."""

__version__ = "0.1.0"
# The name to `pip install` (the import package is swe_cli, the command swe).
DISTRIBUTION = "swe-multilingual-safety"
