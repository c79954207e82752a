"""oodpl.data — see packages/oodpl-data/README.md."""

__version__ = "0.1.0"
