"""oodpl.cli — see packages/oodpl-cli/README.md."""

__version__ = "0.1.0"
