"""oodpl.models — see packages/oodpl-models/README.md."""

__version__ = "0.1.0"
