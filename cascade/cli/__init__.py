"""The ``cascade`` command: every subcommand lives in this package, and nothing imports it."""

from cascade.cli.entry import main

__all__ = ["main"]
