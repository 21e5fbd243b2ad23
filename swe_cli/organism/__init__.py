"""The model organism: a small Llama trained from scratch on a synthetic multilingual world.

It refuses harmful requests in English and answers them in three low-resource languages, so
every stage of ``swe`` can be run and measured on it as on a Hub model. Importing this package
does not import torch.
"""

from swe_cli.organism.build import (
    FORMAT_VERSION,
    OrganismInfo,
    build_organism,
    cached_organism,
    load_organism,
)
from swe_cli.organism.gap import measure_gap

__all__ = [
    "FORMAT_VERSION",
    "OrganismInfo",
    "build_organism",
    "cached_organism",
    "load_organism",
    "measure_gap",
]
