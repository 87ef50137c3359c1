"""``cascade serve CONFIG [--host H] [--port P] [--workers N]``: the gateway on uvicorn.

With ``--workers N`` uvicorn's supervisor starts N worker processes on one listening socket.
Each builds its own engine and opens the ledger itself, so budgets are reserved in the shared
database (a SQLite file on this host, or PostgreSQL) and hold across the workers.

Kept apart from ``cascade.server`` so that the other commands do not import the web stack
(Starlette, uvicorn and prometheus-client add about 0.1 s to every start of the CLI).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cascade.config import (
    CascadeConfig,
    ServerConfig,
    format_location,
    load_config,
    parse_config,
)
from cascade.errors import ConfigError

__all__ = [
    "ServeSettings",
    "cmd_serve",
    "is_loopback",
    "load_serve_config",
    "register",
    "unset_key_warnings",
    "worker_app",
]

# Where a worker process of ``--workers N`` finds the config (workers are spawned, not forked,
# so they inherit the environment and nothing else).
CONFIG_ENV = "CASCADE_SERVE_CONFIG"
LOG_ENV = "CASCADE_SERVE_LOG"  # "LEVEL" or "LEVEL,json": the --log-level and --log-json given

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


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
            first = bad.errors()[0]
            raise ConfigError(
                first["msg"], path=path, location=format_location(("server", *first["loc"]))
            ) from bad
        return parse_config(data, path=path), settings
    declared: Any = getattr(config, "server", None)
    if declared is None:
        return config, ServeSettings()
    return config, ServeSettings.model_validate(declared.model_dump())


def unset_key_warnings(config: CascadeConfig) -> list[str]:
    """One warning per provider whose API key variable is unset (its calls would fail)."""
    warnings = []
    for name, provider in config.providers.items():
        env = provider.key_env()
        if env and not os.environ.get(env):
            warnings.append(f"warning: providers.{name}: environment variable {env} is not set")
    return warnings


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback one."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos
    )


@contextmanager
def _graceful_signals() -> Iterator[None]:
    """Make Ctrl-C and SIGTERM end in exit code 0 once uvicorn has shut down gracefully.

    uvicorn handles both signals while it runs, then re-raises the one it caught under the
    handlers that were there before; no-op handlers make that re-raise harmless.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; a refused bind or a bad config raises ``ConfigError`` (exit 2)."""
    from cascade.engine import Cascade

    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"cascade serve needs the [server] extra ({exc.name} is not installed): "
            "pip install 'cascade-ladder[server]'"
        ) from exc
    from cascade.server import (
        bind,
        create_app,
        freeze_heap,
        read_api_keys,
        url_of,
        uvicorn_server,
    )

    config, settings = load_serve_config(args.config)
    host = args.host or settings.host or DEFAULT_HOST
    port = args.port if args.port is not None else (settings.port or DEFAULT_PORT)
    keys = read_api_keys(settings.api_keys_env)
    if not keys and not is_loopback(host):
        why = (
            f"${settings.api_keys_env} is unset or empty"
            if settings.api_keys_env
            else "no server.api_keys_env in the config"
        )
        raise ConfigError(
            f"refusing to serve on {host} without API keys ({why}); bind to "
            "127.0.0.1, or set server.api_keys_env and export comma-separated keys",
            path=args.config,
            location="server.api_keys_env",
        )
    for warning in unset_key_warnings(config):
        print(warning, file=sys.stderr, flush=True)
    workers = args.workers or 1
    if workers > 1:
        as_json = ",json" if getattr(args, "log_json", False) else ""
        os.environ[LOG_ENV] = f"{getattr(args, 'log_level', 'warning')}{as_json}"
        return _serve_workers(args.config, host, port, workers, keys, settings, config)
    engine = Cascade(config, path=args.config)
    try:
        app = create_app(engine, api_keys=keys, settings=settings)
        app.state.gateway.parser.start()
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", path=args.config
            ) from exc
        auth = (
            f"{len(keys)} API key(s) from ${settings.api_keys_env}"
            if keys
            else "no auth, loopback only"
        )
        print(
            f"cascade serve: listening on {url_of(sock)} ({auth}; tasks: "
            f"{', '.join(config.tasks)}; models: {', '.join(config.models)})",
            file=sys.stderr,
            flush=True,
        )
        freeze_heap()
        with _graceful_signals():
            uvicorn_server(app).run(sockets=[sock])
    finally:
        engine.close()
    return 0


def worker_app() -> Any:
    """The app of one ``--workers`` process: its own engine, ledger and keys, from the config."""
    from cascade.engine import Cascade
    from cascade.logs import configure_cli
    from cascade.server import create_app, freeze_heap, read_api_keys

    level, _, as_json = os.environ.get(LOG_ENV, "warning").partition(",")
    configure_cli(level, as_json == "json")
    path = os.environ[CONFIG_ENV]
    config, settings = load_serve_config(path)
    engine = Cascade(config, path=path)
    app = create_app(
        engine, api_keys=read_api_keys(settings.api_keys_env), settings=settings,
        close_engine=True,
    )
    app.state.gateway.parser.start()
    freeze_heap()
    return app


def __getattr__(name: str) -> Any:
    """``WorkerProtocol``: uvicorn's HTTP protocol with the limits of the worker's config."""
    if name != "WorkerProtocol":
        raise AttributeError(name)
    from cascade.server_limits import guarded_protocol, protocol_classes

    _, settings = load_serve_config(os.environ[CONFIG_ENV])
    return guarded_protocol(
        protocol_classes()[0], settings.client_timeout_s, settings.max_connections
    )


def _serve_workers(
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
    from cascade.server import bind, url_of

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
        f"{', '.join(config.tasks)}; models: {', '.join(config.models)})",
        file=sys.stderr,
        flush=True,
    )
    uv_config = uvicorn.Config(
        "cascade.server_cli:worker_app",
        factory=True,
        workers=workers,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",
        # By import path: the config travels to spawned workers, and a class made at run time
        # (the header deadline and connection cap of ``server:``) does not pickle.
        http="cascade.server_cli:WorkerProtocol",
    )
    with _graceful_signals():
        Multiprocess(uv_config, sockets=[sock]).run()
    sock.close()
    return 0


def register(sub: Any) -> None:
    """Add ``serve`` to the ``cascade`` command's subparsers."""
    serve = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible gateway in front of the config's tasks",
        description="POST /v1/chat/completions with model=<task> (or cascade/<task>, or a "
        "models: key) runs the cascade. Bearer keys come from the variable named by "
        "server.api_keys_env; without keys only loopback addresses are served.",
    )
    serve.add_argument("config", help="YAML config file")
    serve.add_argument("--host", help=f"address to bind (default: server.host or {DEFAULT_HOST})")
    serve.add_argument(
        "--port",
        type=int,
        help=f"port to bind, 0 for any free one (default: server.port or {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (uvicorn workers); budgets hold across them through the "
        "shared ledger",
    )
    serve.set_defaults(handler=cmd_serve)
