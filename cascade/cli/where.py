"""Which ledger a command reads: one rule for ``report``, ``feedback`` and ``ledger recover``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cascade.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from cascade.ledger import Ledger

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "DEFAULT_LEDGER",
    "default_config",
    "ledger_at_url",
    "ledger_file",
    "open_for_cli",
    "where_args",
]

DEFAULT_LEDGER = "cascade-ledger.sqlite"


CONFIG_ENV = "CASCADE_CONFIG"
DEFAULT_CONFIG = "cascade.yaml"


def default_config(args: argparse.Namespace) -> str | None:
    """The config whose ledger a command means: ``--config``; else, with no ``--ledger``
    either, ``$CASCADE_CONFIG``, else ``./cascade.yaml`` when it exists."""
    if args.config or args.ledger:
        return str(args.config) if args.config else None
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


def open_for_cli(args: argparse.Namespace, *, create: bool = False) -> Ledger:
    """The ledger the command line names.

    One rule for every command that reads the ledger: ``--url-env``, ``--ledger``, the ledger of
    ``--config``, of ``$CASCADE_CONFIG``, of ``./cascade.yaml``, else ``./cascade-ledger.sqlite``.
    ``create``: a SQLite file that does not exist yet is created (``cascade keys create``, which
    may come before the first run); otherwise it is an error.

    Raises:
        ConfigError: no such file (naming the ledgers tried), an unset variable, or a file that
            is not a ledger.
        LedgerError: the database cannot be reached.
    """
    from cascade.config import load_config, resolve_path
    from cascade.ledger import open_ledger

    if args.url_env:
        return ledger_at_url(args.url_env)
    config_path = default_config(args)
    if config_path is not None:
        config = load_config(config_path).ledger
        if not config.postgres and config.path and not create:
            # Reading must not create an empty ledger where the config's runs never wrote.
            path = Path(resolve_path(config.path, config_path))
            if not path.exists():
                raise ConfigError(
                    f"ledger file not found (tried {path}, the ledger of {config_path}); run "
                    "something first",
                    path=str(path),
                )
        ledger = open_ledger(config, config_path=config_path)
        if ledger is None:
            raise ConfigError(
                "the config turns the ledger off (ledger.path: null)",
                path=config_path,
                location="ledger",
            )
        return ledger
    path = Path(args.ledger or DEFAULT_LEDGER)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        tried = (
            str(path)
            if args.ledger
            else (
                f"${CONFIG_ENV} (unset), ./{DEFAULT_CONFIG} (absent), ./{DEFAULT_LEDGER} (absent)"
            )
        )
        raise ConfigError(
            f"ledger file not found (tried {tried}); pass --config CONFIG to read the ledger "
            "its runs wrote, or --ledger FILE",
            path=str(path),
        )
    return ledger_file(path)


def ledger_at_url(env: str) -> Ledger:
    """The PostgreSQL ledger whose URL the variable ``env`` holds (``--url-env``)."""
    from cascade.ledger import Ledger

    url = os.environ.get(env, "")
    if not url:
        raise ConfigError(f"environment variable {env} is not set", location="--url-env")
    return Ledger(url=url)


def ledger_file(path: Path) -> Ledger:
    """An existing SQLite ledger file; a file that is not one is a ConfigError naming it."""
    from cascade.ledger import Ledger

    try:
        return Ledger(path)
    except LedgerError as exc:
        raise ConfigError(f"not a cascade ledger: {exc.message}", path=str(path)) from exc


def where_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger",
        help="SQLite ledger file (default: the ledger of --config, "
        f"${CONFIG_ENV} or ./{DEFAULT_CONFIG}, else ./{DEFAULT_LEDGER})",
    )
    parser.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL")
    parser.add_argument(
        "--config",
        help="read the ledger from this config's ledger: section "
        "(report: also show spend against its budgets)",
    )
