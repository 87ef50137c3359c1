"""Opening the ledger a config names, with the mistakes a user can make reported as such.

An unopenable SQLite ``ledger.path`` (a directory, a path under a regular file, a folder that
cannot be written) is a ``ConfigError`` naming ``ledger.path``, found by ``cascade validate``
(without creating anything), ``cascade serve`` and ``Cascade.from_yaml`` alike. A PostgreSQL
ledger that cannot be reached is a ``LedgerError`` naming user, host, port and database, never
the password (``ledger.url_env`` naming an unset variable is a ``ConfigError``).

A relative ``ledger.path`` is relative to the config file's folder, not to the working
directory, so a config means the same ledger wherever it is run from.
"""

from __future__ import annotations

import os
from pathlib import Path

from cascade.config import LedgerConfig, resolve_path
from cascade.errors import ConfigError, LedgerError
from cascade.ledger.core import Ledger

__all__ = ["check_ledger_config", "check_ledger_path", "open_ledger"]


def _unopenable(path: str, why: str, config_path: str | None) -> ConfigError:
    return ConfigError(
        f"cannot open the ledger {path!r}: {why}", path=config_path, location="ledger.path"
    )


def check_ledger_path(path: str, *, config_path: str | None = None) -> None:
    """Check, without creating anything, that a SQLite ledger could be opened at ``path``.

    Raises:
        ConfigError: one line naming ``ledger.path`` (a directory, a read-only place...).
    """
    if path == ":memory:":
        return
    target = Path(path)
    if target.is_dir():
        raise _unopenable(path, "it is a directory", config_path)
    if target.exists():
        if not os.access(target, os.R_OK | os.W_OK):
            raise _unopenable(path, "the file is not readable and writable", config_path)
        return
    parent = target.parent
    while not parent.exists():  # the ledger creates missing folders
        parent = parent.parent
    if not parent.is_dir():
        raise _unopenable(path, f"{str(parent)!r} is not a directory", config_path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _unopenable(path, f"cannot create files in {str(parent)!r}", config_path)


def check_ledger_config(config: LedgerConfig, *, config_path: str | None = None) -> None:
    """What ``cascade validate`` can check of the ``ledger:`` section without opening it.

    Raises:
        ConfigError: an unopenable ``ledger.path``, or ``ledger.url_env`` naming an unset
            variable.
    """
    if config.url_env is not None and not os.environ.get(config.url_env):
        raise ConfigError(
            f"environment variable {config.url_env} (the ledger's PostgreSQL URL) is not set",
            path=config_path,
            location="ledger.url_env",
        )
    if not config.postgres and config.path:
        check_ledger_path(resolve_path(config.path, config_path), config_path=config_path)


def open_ledger(config: LedgerConfig, *, config_path: str | None = None) -> Ledger | None:
    """The ledger a config's ``ledger:`` section describes (None when turned off).

    A relative ``path`` is resolved against ``config_path``'s folder (as given without one).

    Raises:
        ConfigError: an unopenable ``ledger.path``, or an unset ``ledger.url_env``.
        LedgerError: the PostgreSQL database cannot be reached or upgraded (no password in
            the message).
    """
    if config.postgres:
        return Ledger.from_config(config, path=config_path)
    if not config.path:
        return None
    path = resolve_path(config.path, config_path)
    check_ledger_path(path, config_path=config_path)
    try:
        return Ledger(path, busy_timeout_s=config.busy_timeout_s)
    except LedgerError as exc:
        why = exc.message.removeprefix(f"{path}: ")
        raise _unopenable(path, why, config_path) from exc
