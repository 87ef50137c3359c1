"""Who wrote a pending row, and whether that process is still alive.

A pending step row belongs to the ledger instance (one per process) that wrote it; the
``owners`` table records that instance's host, boot id, pid and process start time.

How a dead owner is told from a live one:

- **Same host and same boot** (always the case for SQLite, whose file cannot be shared between
  hosts): the owner is alive exactly when a process with its pid exists *and* started at the
  recorded time (``/proc/PID/stat`` field 22). A recycled pid has another start time, so it
  does not keep a dead writer's rows pending. The answer is immediate and exact.
- **Same host, another boot**: the machine restarted since, so the owner is dead.
- **Another host** (PostgreSQL shared by replicas): a pid cannot be checked from here, so each
  PostgreSQL ledger refreshes ``owners.heartbeat`` every ``HEARTBEAT_S`` from a background
  thread; an owner whose heartbeat is older than ``LEASE_S`` is dead. A replica that stalls
  longer than the lease (a frozen VM) may find its rows settled as ``lost``; its later
  settlement then finds no pending row and leaves the lost charge (the reserved worst case)
  in place, which over- rather than under-counts.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HEARTBEAT_S", "LEASE_S", "Owner", "is_alive", "this_process"]

HEARTBEAT_S = 15.0
LEASE_S = 60.0


@dataclass(frozen=True, slots=True)
class Owner:
    owner: str
    host: str
    boot_id: str
    pid: int
    proc_start: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> Owner:
    return Owner(
        owner=uuid.uuid4().hex,
        host=socket.gethostname(),
        boot_id=_boot_id(),
        pid=os.getpid(),
        proc_start=proc_start(os.getpid()) or "",
    )


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(row: dict[str, Any] | None, me: Owner, now: float | None = None) -> bool:
    """Whether the owner described by an ``owners`` row may still settle its pending rows."""
    if row is None:
        return False  # rows whose owner was never registered (or already recovered)
    if row["host"] == me.host and row["boot_id"] == me.boot_id:
        started = proc_start(int(row["pid"]))
        if started is None:
            return False
        if started and row["proc_start"]:
            return bool(started == row["proc_start"])
        return _pid_exists(int(row["pid"]))  # no /proc here: the pid alone
    if row["host"] == me.host and me.boot_id and row["boot_id"] != me.boot_id:
        return False  # this machine rebooted since
    moment = time.time() if now is None else now
    return float(row["heartbeat"]) + LEASE_S >= moment
