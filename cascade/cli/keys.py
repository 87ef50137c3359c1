"""``cascade keys create | list | show | update | revoke``: the gateway's named keys.

The keys live in the ledger (``cascade.ledger.keys``), found as every ledger command finds it
(``cascade.cli.where``): ``--url-env``, ``--ledger``, ``--config`` (its ``ledger:`` section),
``$CASCADE_CONFIG`` or ``./cascade.yaml``, else ``./cascade-ledger.sqlite``. ``create`` prints
the key once; only its hash is stored. See docs/keys.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cascade.cli.where import open_for_cli, where_args
from cascade.errors import ConfigError, KeyStoreError
from cascade.formatting import to_json, usd, utc_minute

__all__ = ["register"]

# ``update --clear FIELD`` names a limit by its flag's name.
_CLEARABLE = {
    "tasks": "tasks",
    "daily-usd": "daily_usd",
    "monthly-usd": "monthly_usd",
    "rpm": "rpm",
    "tpm": "tpm",
    "expires": "expires",
}


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limits the flags set (those not given are left out), checked before the ledger is
    opened, so that a refused command writes nothing."""
    from cascade.ledger.keys import check_limits
    from cascade.replay.export import parse_since

    out: dict[str, Any] = {}
    if args.tasks is not None:
        out["tasks"] = [t for t in args.tasks.split(",") if t.strip()]
        if not out["tasks"]:
            raise KeyStoreError("name at least one task, e.g. --tasks faq,summary", param="tasks")
    for field in ("daily_usd", "monthly_usd", "rpm", "tpm"):
        value = getattr(args, field)
        if value is not None:
            out[field] = value
    if args.expires is not None:
        try:
            out["expires"] = parse_since(args.expires, "--expires")
        except ConfigError as exc:
            raise KeyStoreError(exc.message, param="expires") from None
        if out["expires"] <= time.time():
            raise KeyStoreError(f"{args.expires!r} has already passed", param="expires")
    check_limits(out)
    return out


def _when(ts: float | None) -> str:
    return "-" if ts is None else utc_minute(ts)


def _limit_text(record: Any) -> str:
    parts = [
        f"tasks {','.join(sorted(record.tasks))}" if record.tasks is not None else "all tasks",
        f"daily {usd(record.daily_usd)}" if record.daily_usd is not None else "",
        f"monthly {usd(record.monthly_usd)}" if record.monthly_usd is not None else "",
        f"{record.rpm} rpm" if record.rpm is not None else "",
        f"{record.tpm} tpm" if record.tpm is not None else "",
        f"expires {_when(record.expires)}" if record.expires is not None else "",
    ]
    return ", ".join(p for p in parts if p)


def _store(args: argparse.Namespace, *, create: bool = False) -> Any:
    from cascade.ledger.keys import KeyStore

    return KeyStore(open_for_cli(args, create=create))


def _one(args: argparse.Namespace, change: str, **changes: Any) -> Any:
    """``KeyStore.<change>(args.name, **changes)`` on the command line's ledger, closed after."""
    store = _store(args)
    try:
        return getattr(store, change)(args.name, **changes)
    finally:
        store.ledger.close()


def cmd_create(args: argparse.Namespace) -> int:
    from cascade.ledger.keys import check_name

    check_name(args.name)
    limits = _limits(args)
    store = _store(args, create=True)
    try:
        record, key = store.create(args.name, **limits)
    finally:
        store.ledger.close()
    if args.json:
        print(to_json({**record.as_json(), "key": key}, indent=2))
    else:
        print(key)
    print(
        f"created key {record.name!r} ({_limit_text(record)}) in {store.ledger.where}; "
        "the key is shown only now and cannot be shown again",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        records = store.list()
    finally:
        store.ledger.close()
    if args.json:
        print(to_json([r.as_json() for r in records], indent=2))
        return 0
    if not records:
        print(f"{store.ledger.where}: no keys (cascade keys create NAME makes one)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "state", "limits", "created"):
        table.add_column(column)
    for r in records:
        table.add_row(r.name, r.as_json()["state"], _limit_text(r), _when(r.created))
    Console().print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _print(_one(args, "get"), args.json)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    changes = _limits(args)
    for flag in args.clear or ():
        changes[_CLEARABLE[flag]] = None
    if not changes:
        raise KeyStoreError("nothing to change: give a limit flag or --clear LIMIT", param="update")
    _print(_one(args, "update", **changes), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    record = _one(args, "revoke")
    if args.json:
        print(to_json(record.as_json(), indent=2))
    else:
        print(
            f"revoked key {record.name!r} at {_when(record.revoked)}; every gateway refuses "
            "it within 1 s"
        )
    return 0


def _print(record: Any, as_json: bool) -> None:
    if as_json:
        print(to_json(record.as_json(), indent=2))
        return
    state = record.as_json()["state"]
    print(
        f"{record.name} ({state}): {_limit_text(record)}; created {_when(record.created)}, "
        f"updated {_when(record.updated)}"
        + (f", revoked {_when(record.revoked)}" if record.revoked is not None else "")
    )


def _limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help="comma-separated tasks the key may use (default: all)")
    parser.add_argument("--daily-usd", type=float, help="the key's daily budget in USD")
    parser.add_argument("--monthly-usd", type=float, help="the key's monthly budget in USD")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument(
        "--expires", help="when the key stops working: YYYY-MM-DD or ISO 8601 (UTC unless given)"
    )


def register(sub: Any) -> None:
    """Add ``keys`` and its commands to the ``cascade`` command's subparsers."""
    keys = sub.add_parser(
        "keys",
        help="named gateway keys: per-key tasks, budgets and rate limits",
        description="Named gateway keys live in the ledger, so every replica of cascade serve "
        "sees them (with server.ledger_keys: true). Only a salted hash of each key is stored.",
    )
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = commands.add_parser(
        "create",
        help="create a key and print it once",
        description="Create a key and print it on stdout; it cannot be shown again.",
    )
    create.add_argument("name", help="the key's name (in the ledger, metrics and reports)")
    _limit_args(create)
    listing = commands.add_parser("list", help="every key with its state and limits")
    show = commands.add_parser("show", help="one key's state and limits")
    show.add_argument("name")
    update = commands.add_parser(
        "update",
        help="change a key's limits",
        description="Change the limits given; --clear LIMIT removes one (repeatable).",
    )
    update.add_argument("name")
    _limit_args(update)
    update.add_argument(
        "--clear",
        action="append",
        choices=sorted(_CLEARABLE),
        help="remove this limit (repeatable)",
    )
    revoke = commands.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("name")
    for parser, handler in (
        (create, cmd_create),
        (listing, cmd_list),
        (show, cmd_show),
        (update, cmd_update),
        (revoke, cmd_revoke),
    ):
        where_args(parser)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(handler=handler)
