"""``cascade serve --workers N``: uvicorn's supervisor and the app of each worker process.

Each worker builds its own engine and opens the ledger itself, so budgets are reserved in the
shared database (a SQLite file on this host, or PostgreSQL) and hold across the workers. This
module imports no web stack at import time, so the CLI can read the ``server:`` section cheaply.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cascade.config import CascadeConfig, ServerConfig, format_location, load_config, parse_config
from cascade.config.messages import joined, validation_problems
from cascade.errors import ConfigError
from cascade.logs import get_logger

__all__ = [
    "CONFIG_ENV",
    "LOG_ENV",
    "ServeSettings",
    "load_serve_config",
    "serve_workers",
    "worker_app",
]

log = get_logger()

# Where a worker process of ``--workers N`` finds the config (workers are spawned, not forked,
# so they inherit the environment and nothing else).
CONFIG_ENV = "CASCADE_SERVE_CONFIG"
LOG_ENV = "CASCADE_SERVE_LOG"  # "LEVEL" or "LEVEL,json": the --log-level and --log-json given


class ServeSettings(ServerConfig):
    """The ``server:`` section (``cascade.config.ServerConfig``), as ``cascade serve`` reads it."""


def load_serve_config(path: str) -> tuple[CascadeConfig, ServeSettings]:
    """The config and its ``server:`` section.

    Raises:
        ConfigError: as ``load_config`` does, for the ``server:`` section too.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Until CascadeConfig declares ``server:``, validate that section here and the rest
        # as usual. Once it does, this branch is never taken.
        if exc.location != "server" or "server" in CascadeConfig.model_fields:
            raise
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        section = data.pop("server")
        try:
            settings = ServeSettings.model_validate(section or {})
        except ValidationError as bad:
            found = validation_problems(bad, ServeSettings, section or {})
            raise joined(
                [(format_location(("server", *where)), message) for where, message in found],
                path=path,
            ) from bad
        return parse_config(data, path=path), settings
    declared: Any = getattr(config, "server", None)
    if declared is None:
        return config, ServeSettings()
    return config, ServeSettings.model_validate(declared.model_dump())


def worker_app() -> Any:
    """The app of one ``--workers`` process: its own engine, ledger and keys, from the config.

    SIGHUP reloads the config in this worker (the supervisor passes it on to every worker); a
    reload through ``POST /admin/reload`` sends SIGHUP to the supervisor, so that every worker
    reloads, not only the one that answered.
    """
    from cascade.engine import Cascade
    from cascade.gateway.app import create_app
    from cascade.gateway.serve import freeze_heap, on_hangup
    from cascade.logs import configure_cli

    level, _, as_json = os.environ.get(LOG_ENV, "warning").partition(",")
    configure_cli(level, as_json == "json")
    path = os.environ[CONFIG_ENV]
    config, _ = load_serve_config(path)
    engine = Cascade(config, path=path)
    # Keys and settings from the config, so that a reload reads them again.
    app = create_app(engine, close_engine=True)
    app.state.gateway.parser.start()
    reloader = app.state.reloader
    if hasattr(signal, "SIGHUP"):
        reloader.fan_out = functools.partial(os.kill, os.getppid(), signal.SIGHUP)
        on_hangup(reloader.hangup)
    freeze_heap()
    return app


def __getattr__(name: str) -> Any:
    """``WorkerProtocol``: uvicorn's HTTP protocol with the limits of the worker's config."""
    if name != "WorkerProtocol":
        raise AttributeError(name)
    from cascade.gateway.limits import guarded_protocol, protocol_classes

    _, settings = load_serve_config(os.environ[CONFIG_ENV])
    return guarded_protocol(
        protocol_classes()[0], settings.client_timeout_s, settings.max_connections
    )


def serve_workers(
    path: str,
    host: str,
    port: int,
    workers: int,
    keys: tuple[str, ...],
    settings: ServeSettings,
    config: CascadeConfig,
) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from cascade.engine import Cascade
    from cascade.gateway.serve import bind, graceful_signals, url_of

    if config.ledger.path is None and not config.ledger.postgres:
        why = "budgets would not be shared" if config.budgets else "spend would go unrecorded"
        print(f"cascade serve: warning: no ledger, so {why} across workers", file=sys.stderr)
    # Open (and upgrade, and recover) the ledger once here, so a bad ledger fails the command
    # with one line instead of N workers failing one by one.
    Cascade(config, path=path).close()
    os.environ[CONFIG_ENV] = str(Path(path).resolve())
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", path=path
        ) from exc
    auth = f"{len(keys)} API key(s) from ${settings.api_keys_env}" if keys else (
        "no auth, loopback only")
    print(
        f"cascade serve: listening on {url_of(sock)} ({auth}; {workers} workers; tasks: "
        f"{', '.join(config.tasks)}; direct models: "
        f"{', '.join(settings.direct_keys(config.models)) or 'none'})",
        file=sys.stderr,
        flush=True,
    )
    uv_config = uvicorn.Config(
        "cascade.gateway.workers:worker_app",
        factory=True,
        workers=workers,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",
        # By import path: the config travels to spawned workers, and a class made at run time
        # (the header deadline and connection cap of ``server:``) does not pickle.
        http="cascade.gateway.workers:WorkerProtocol",
    )

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            # uvicorn would replace every worker; each reloads its config in place instead, so
            # runs in flight finish and a config that fails is refused (cascade.gateway.reload).
            for process in self.processes:
                if process.pid is not None and process.exitcode is None:
                    with suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)
            log.info("cascade.reload_signalled", workers=len(self.processes))

    with graceful_signals():
        Supervisor(uv_config, sockets=[sock]).run()
    sock.close()
    return 0
