"""oodpl.core — see packages/oodpl-core/README.md."""

__version__ = "0.1.0"
