"""``cascade serve CONFIG [--host H] [--port P]``: the gateway on uvicorn.

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
]

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
    serve.set_defaults(handler=cmd_serve)
