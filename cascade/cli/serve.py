"""``cascade serve CONFIG [--host H] [--port P] [--workers N]``: the gateway on uvicorn.

SIGHUP reloads the config file in place (``cascade.gateway.reload``), in every worker.

With ``--workers N`` uvicorn's supervisor starts N worker processes on one listening socket.
Each builds its own engine and opens the ledger itself, so budgets are reserved in the shared
database (a SQLite file on this host, or PostgreSQL) and hold across the workers.

Kept apart from ``cascade.gateway.app`` so that the other commands do not import the web stack
(Starlette, uvicorn and prometheus-client add about 0.1 s to every start of the CLI).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from cascade.errors import ConfigError
from cascade.formatting import install_hint

if TYPE_CHECKING:
    from cascade.config import CascadeConfig

__all__ = ["cmd_serve", "is_loopback", "register", "unset_key_warnings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; a refused bind or a bad config raises ``ConfigError`` (exit 2)."""
    from cascade.engine import Cascade
    from cascade.gateway.workers import LOG_ENV, load_serve_config, serve_workers

    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"cascade serve needs the [server] extra ({exc.name} is not installed): "
            f"{install_hint('server')}"
        ) from exc
    from cascade.gateway.app import create_app
    from cascade.gateway.serve import bind, freeze_heap, graceful_signals, url_of, uvicorn_server
    from cascade.gateway.state import read_api_keys

    config, settings = load_serve_config(args.config)
    host = args.host or settings.host or DEFAULT_HOST
    port = args.port if args.port is not None else (settings.port or DEFAULT_PORT)
    keys = read_api_keys(settings.api_keys_env)
    if not keys and not settings.ledger_keys and not is_loopback(host):
        why = (
            f"${settings.api_keys_env} is unset or empty"
            if settings.api_keys_env
            else "no server.api_keys_env in the config"
        )
        raise ConfigError(
            f"refusing to serve on {host} without API keys ({why}); bind to "
            "127.0.0.1, set server.api_keys_env and export comma-separated keys, or set "
            "server.ledger_keys: true and create keys with cascade keys create",
            path=args.config,
            location="server.api_keys_env",
        )
    for warning in unset_key_warnings(config):
        print(warning, file=sys.stderr, flush=True)
    workers = args.workers or 1
    if workers > 1:
        as_json = ",json" if getattr(args, "log_json", False) else ""
        os.environ[LOG_ENV] = f"{getattr(args, 'log_level', 'warning')}{as_json}"
        return serve_workers(args.config, host, port, workers, keys, settings, config)
    engine = Cascade(config, path=args.config)
    try:
        # Keys and settings from the config (the same as above), so that a reload (SIGHUP,
        # POST /admin/reload) reads them again; the app closes each engine it replaces.
        app = create_app(engine, close_engine=True)
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
            else "no auth, loopback only" if not settings.ledger_keys else "no unnamed keys"
        )
        if settings.ledger_keys:
            auth += ", named keys from the ledger"
        print(
            f"cascade serve: listening on {url_of(sock)} ({auth}; tasks: "
            f"{', '.join(config.tasks)}; direct models: "
            f"{', '.join(settings.direct_keys(config.models)) or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        freeze_heap()
        with graceful_signals(hangup=app.state.reloader.hangup):
            uvicorn_server(app).run(sockets=[sock])
    finally:
        engine.close()  # when the app did not (it never started); closing twice is harmless
    return 0


def register(sub: Any) -> None:
    """Add ``serve`` to the ``cascade`` command's subparsers."""
    serve = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible gateway in front of the config's tasks",
        description="POST /v1/chat/completions with model=<task> (or cascade/<task>, or a "
        "models: key that server.direct_models allows) runs the cascade. Bearer keys come "
        "from the variable named by server.api_keys_env; without keys only loopback "
        "addresses are served. SIGHUP (or POST /admin/reload with an admin key) reloads the "
        "config file; a config that fails is refused and the old one kept.",
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
